"""The gauge freedom of a chain, used to keep every entry above a floor.

For an invertible T (w × w) acting on the w channels of the blob between F_p and F_{p+1},
(F_p, F_{p+1}) → (T⁻¹·F_p, F_{p+1}·T) leaves F_{p+1} ⊛ F_p unchanged: T is 1×1, so it commutes
with the spatial convolution. With F_p seen as its "left" matrix L (w, C_{p−1}·|K_p|) and
F_{p+1} as its "right" matrix R (C_{p+1}·|K_{p+1}|, w), the pair becomes (T⁻¹L, RT).

Floor repair (:func:`repair_floor`): the entries of L below m·std of their filter are moved
to ±PUSH·m·std (sign kept) by T⁻¹ = I + D, row a of D chosen so that row a of L changes as
little as possible (its change lies in L's row space, which the gauge never changes, so one
projector onto it serves every round); then R's small entries likewise by T = I + D'. Each
move changes the other entries a little, so rounds repeat, each touching only the rows that
still hold small entries. A row of L with s small entries needs s ≤ w; a few percent of the
entries are small, so any blob that is not much narrower than its neighbours' fan-in has room.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import lapack

from .._memory import check_working_set

#: Small entries are moved to PUSH · floor, a margin over the floor for the linearisation error.
PUSH = 1.5
#: Rows with at most this many entries below PUSH · floor move them all to PUSH · floor (the
#: margin saves rounds); rows with more, only those below the floor (smaller systems).
BAND_LIMIT = 96
#: Rounds of :func:`repair_floor` before giving up.
MAX_ROUNDS = 30


def as_left(f: np.ndarray) -> np.ndarray:
    """F (w, C_in, *K) as the matrix (w, C_in·|K|) the gauge multiplies from the left."""
    return f.reshape(f.shape[0], -1)


def as_right(f: np.ndarray) -> np.ndarray:
    """F (C_out, w, *K) as the matrix (C_out·|K|, w) the gauge multiplies from the right."""
    return np.moveaxis(f, 1, -1).reshape(-1, f.shape[1])


def from_right(mat: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of :func:`as_right` for a filter of ``shape``."""
    return np.ascontiguousarray(np.moveaxis(mat.reshape(shape[0], *shape[2:], shape[1]), -1, 1))


def below_floor(f: np.ndarray, m: float) -> np.ndarray:
    """Mask of the entries with |w| < m·std(f)."""
    return np.abs(f) < m * float(np.std(f))


def as_rows(f: np.ndarray) -> np.ndarray:
    """F (C_out, w, *K) as the matrix (w, C_out·|K|) = :func:`as_right`ᵀ, row-contiguous."""
    return np.ascontiguousarray(np.moveaxis(f, 1, 0).reshape(f.shape[1], -1))


def from_rows(mat: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of :func:`as_rows` for a filter of ``shape``."""
    return np.ascontiguousarray(np.moveaxis(mat.reshape(shape[1], shape[0], *shape[2:]), 0, 1))


class _Side:
    """One side of a blob, A (w, n) = M·Qᵀ: the gauge multiplies A and the coordinates M
    (w, r) from the left and never changes Q (n, r), an orthonormal basis of A's row space,
    nor the projector P = Q·Qᵀ onto it, held as (n + 1, n + 1) with a zero row and column
    last (the index of a padding slot)."""

    def __init__(self, mat: np.ndarray) -> None:
        n = mat.shape[1]
        check_working_set(8 * ((n + 1) ** 2 + 2 * mat.size), "the floor repair's projector")
        self.mat = np.array(mat, dtype=np.float64)
        basis, r = np.linalg.qr(self.mat.T)
        self.basis = basis
        self.coords = np.ascontiguousarray(r.T)
        self.projector = np.zeros((n + 1, n + 1))
        self.projector[:n, :n] = basis @ basis.T

    def left_multiply(self, rows: np.ndarray, d_rows: np.ndarray) -> None:
        """A ← S·A and M ← S·M for S = I + U·D_rows, U the selector of ``rows``."""
        self.mat[rows] += d_rows @ self.mat
        self.coords[rows] += d_rows @ self.coords

    def inverse_transpose(self, rows: np.ndarray, x: np.ndarray) -> None:
        """A ← S⁻ᵀ·A and M ← S⁻ᵀ·M for the S of :meth:`left_multiply`, with ``x`` from
        :func:`_woodbury`."""
        self.mat -= x @ self.mat[rows]
        self.coords -= x @ self.coords[rows]


def _woodbury(rows: np.ndarray, d_rows: np.ndarray) -> np.ndarray:
    """X (w, rows) with S⁻ᵀ = I − X·Uᵀ for S = I + U·D_rows: by Woodbury
    X = Dᵀ·(I + D·U)⁻ᵀ, a solve of the size of ``rows``. Raises ``LinAlgError`` when S is
    singular."""
    x = np.linalg.solve(np.eye(rows.size) + d_rows[:, rows], d_rows).T
    if not np.isfinite(x).all():
        raise np.linalg.LinAlgError("the gauge correction is singular")
    return x


def _row_correction(side: _Side, m: float) -> tuple[np.ndarray, np.ndarray] | None:
    """(rows, D_rows): the rows r of A holding entries below the floor m·std, and D restricted
    to them, such that (I + D)·A moves each of those entries to ±PUSH·m·std exactly and changes
    the rest of row r as little as possible: the change is Δ_r = y_rᵀ·P[S_r, :] with
    P[S_r, S_r]·y_r = target − A[r, S_r] over row r's small entries S_r (one small block of the
    fixed projector per row, solved as a batch; a tiny ridge keeps a row with more small
    entries than the rank solvable in least squares), and D_r = e_rᵀ·M⁺ with
    Δ_r = e_rᵀ·Qᵀ. None when no entry is small.

    S_r is every entry below PUSH·m·std when no row has more than :data:`BAND_LIMIT` of them
    (the margin saves rounds), else only the entries below the floor (smaller systems): the
    others move by a fraction of the floor, and the few that cross it are caught by the next
    round, which touches their rows only."""
    a = side.mat
    std = float(np.std(a))
    small_all = np.abs(a) < m * std
    rows = np.flatnonzero(small_all.any(axis=1))
    if rows.size == 0:
        return None
    target = PUSH * m * std
    selected = small_all[rows]
    band = np.abs(a[rows]) < target
    if int(band.sum(axis=1).max()) <= BAND_LIMIT:
        selected = band
    hit_rows, hit_cols = np.nonzero(selected)  # row-major: columns ascending per row
    counts = np.bincount(hit_rows, minlength=rows.size)
    width = int(counts.max())
    slot = np.arange(hit_rows.size) - np.repeat(np.cumsum(counts) - counts, counts)
    n = a.shape[1]
    columns = np.full((rows.size, width), n)  # padding: P's zero row and column
    columns[hit_rows, slot] = hit_cols
    valid = columns < n
    values = a[rows[hit_rows], hit_cols]
    rhs = np.zeros((rows.size, width))
    rhs[hit_rows, slot] = np.where(values < 0, -target, target) - values
    check_working_set(16 * rows.size * width * width, "the floor repair's small systems")
    block = np.take(side.projector.ravel(), columns[:, :, None] * (n + 1) + columns[:, None, :])
    diagonal = block.reshape(rows.size, -1)[:, :: width + 1]
    diagonal += 1e-12 * diagonal.sum(axis=1).max() + float(np.finfo(float).tiny)
    diagonal += ~valid
    y = _solve_spd(block, rhs)
    weights = np.zeros((rows.size, n))
    weights[hit_rows, hit_cols] = y[hit_rows, slot]
    e = weights @ side.basis  # Δ_r = e_rᵀ·Qᵀ = y_rᵀ·Q[S_r]·Qᵀ
    # D_rows·M = E: M is square and invertible when w ≤ n; for w > n it has full column rank
    # and D = E·(MᵀM)⁻¹·Mᵀ is the minimum-norm solution.
    coords = side.coords
    if coords.shape[0] == coords.shape[1]:
        return rows, np.linalg.solve(coords.T, e.T).T
    return rows, np.linalg.solve(coords.T @ coords, e.T).T @ coords.T


def _repair_blob(a: np.ndarray, b: np.ndarray, m: float, rounds: int) -> tuple[int, bool]:
    """Gauge the pair of row matrices A, B (in place) for at most ``rounds`` rounds until
    neither has an entry below its floor. Returns (rounds used, whether both are clear); a
    correction that would be singular (a row with more small entries than the rank, pushed in
    least squares) ends the repair with the last pair, which is exact."""
    left, right = _Side(a), _Side(b)
    used, clear = rounds, False
    try:
        for step in range(rounds):
            changed = False
            for side, partner in ((left, right), (right, left)):
                found = _row_correction(side, m)
                if found is not None:
                    x = _woodbury(*found)
                    side.left_multiply(*found)
                    partner.inverse_transpose(found[0], x)
                    changed = True
            if not changed:
                used, clear = step, True
                break
    except np.linalg.LinAlgError:
        pass
    a[...], b[...] = left.mat, right.mat
    return used, clear


def _solve_spd(gram: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """x (rows, s) with gram[r]·x[r] = rhs[r] for a stack of symmetric positive definite
    matrices (rows, s, s), by Cholesky (LAPACK posv) one matrix at a time: a batched LU would
    hand every small matrix to the BLAS threads, which costs more than the factorisations."""
    out = np.empty_like(rhs)
    for r in range(gram.shape[0]):
        _, x, info = lapack.dposv(gram[r], rhs[r], lower=1)
        out[r] = x if info == 0 else np.linalg.lstsq(gram[r], rhs[r], rcond=None)[0]
    return out


def repair_floor(filters: list[np.ndarray], m: float) -> tuple[list[np.ndarray], int]:
    """Gauge every blob of the chain ``filters`` (data-flow order, float64) until no entry is
    below m·std of its filter, or :data:`MAX_ROUNDS` rounds. The composition is unchanged up
    to rounding. Returns (filters, rounds); check the floor on the result (it may still fail
    when a blob is too narrow for its small entries).

    A blob's pair is held as two row matrices of the gauge, A = F_p (w, C_{p−1}·|K_p|) and
    B = F_{p+1} as (w, C_{p+1}·|K_{p+1}|) = Rᵀ: (T⁻¹L, RT) is (S·A, S⁻ᵀ·B) with S = T⁻¹, and a
    correction of B's rows is the same move with the roles swapped. A blob is repaired to
    completion before the next (its neighbour's gauge changes the shared filter's columns,
    hence its row space); sweeps over the blobs repeat while some entry is below the floor."""
    filters = list(filters)
    rounds = 0
    while rounds < MAX_ROUNDS and any(below_floor(f, m).any() for f in filters):
        for p in range(len(filters) - 1):
            a, b = np.array(as_left(filters[p])), as_rows(filters[p + 1])
            used, _ = _repair_blob(a, b, m, MAX_ROUNDS - rounds)
            rounds += max(used, 1)
            filters[p] = a.reshape(filters[p].shape)
            filters[p + 1] = from_rows(b, filters[p + 1].shape)
            if rounds >= MAX_ROUNDS:
                break
    return filters, rounds
