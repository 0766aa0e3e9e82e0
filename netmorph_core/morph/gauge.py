"""The gauge freedom of a chain, used to keep every entry above a floor.

For an invertible T (w × w) acting on the w channels of the blob between F_p and F_{p+1},
(F_p, F_{p+1}) → (T⁻¹·F_p, F_{p+1}·T) leaves F_{p+1} ⊛ F_p unchanged: T is 1×1, so it commutes
with the spatial convolution. With F_p seen as its "left" matrix L (w, C_{p−1}·|K_p|) and
F_{p+1} as its "right" matrix R (C_{p+1}·|K_{p+1}|, w), the pair becomes (T⁻¹L, RT).

Floor repair (:func:`repair_floor`): the entries of L below m·std of their filter are moved
to ±PUSH·m·std (sign kept) by T⁻¹ = I + D, row a of D the minimum-norm solution of the
linear constraints on row a's small entries (T⁻¹L is linear in D: the move is exact); then
R's small entries likewise by T = I + D' (RT linear in D'). Each move changes the other
matrix a little (its inverse), so sweeps repeat until no entry is below the floor. A row of
L with s small entries needs s ≤ w; a few percent of the entries are small, so any blob
that is not much narrower than its neighbours' fan-in has room.
"""

from __future__ import annotations

import numpy as np

from .._memory import check_working_set

#: Small entries are moved to PUSH · floor, a margin over the floor for the linearisation error.
PUSH = 1.5
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


def _row_correction(left: np.ndarray, m: float) -> tuple[np.ndarray, np.ndarray] | None:
    """(rows, D_rows): the rows a of L holding entries below PUSH·m·std, and D restricted to
    them, such that (I + D)·L moves each of those entries to ±PUSH·m·std exactly. Row a of D is
    the minimum-norm solution of D[a, :]·L[:, S_a] = target − L[a, S_a] over row a's small
    entries S_a (one small Gram per row, solved as a batch; a tiny ridge keeps a row with more
    small entries than channels solvable in least squares). None when no entry is small."""
    floor = PUSH * m * float(np.std(left))
    small_all = np.abs(left) < floor
    rows = np.flatnonzero(small_all.any(axis=1))
    if rows.size == 0:
        return None
    small = small_all[rows]
    counts = small.sum(axis=1)
    width = int(counts.max())
    # The Grams come from one GEMM over the columns small in some row (U), padded with an
    # appended zero column: row a's Gram is the (S_a, S_a) block of L_Uᵀ·L_U.
    used = np.flatnonzero(small.any(axis=0))
    check_working_set(8 * (used.size + 1) ** 2, "the floor repair's Gram of small columns")
    position = np.full(left.shape[1], used.size)
    position[used] = np.arange(used.size)
    valid = np.arange(width)[None, :] < counts[:, None]
    order = np.argsort(~small, axis=1, kind="stable")[:, :width]
    values = np.take_along_axis(left[rows], order, axis=1)
    rhs = np.where(valid, np.where(values < 0, -floor, floor) - values, 0.0)
    index = np.where(valid, position[order], used.size)  # into U, padding -> zero column
    sub = np.zeros((left.shape[0], used.size + 1))
    sub[:, :-1] = left[:, used]
    full = sub.T @ sub
    gram = full[index[:, :, None], index[:, None, :]]
    ridge = 1e-12 * np.trace(gram, axis1=1, axis2=2).max() + float(np.finfo(float).tiny)
    gram += np.eye(width) * ridge + np.eye(width) * (~valid)[:, :, None]
    y = np.linalg.solve(gram, rhs[..., None])[..., 0]
    # D[a, :] = Σ_s y[a, s]·L[:, S_a[s]]ᵀ: y scattered onto U, then one GEMM.
    weights = np.zeros((rows.size, used.size + 1))
    np.put_along_axis(weights, index, np.where(valid, y, 0.0), axis=1)
    return rows, weights @ sub.T


def _apply(
    left: np.ndarray, right: np.ndarray, rows: np.ndarray, d_rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(S·L, R·S⁻¹) for S = I + D, D zero outside ``rows``: S⁻¹ by Woodbury,
    (I + U·V)⁻¹ = I − U·(I + V·U)⁻¹·V with U the selector of ``rows`` and V = D_rows."""
    left = left.copy()
    left[rows] += d_rows @ left
    small = np.eye(rows.size) + d_rows[:, rows]
    right = right - right[:, rows] @ np.linalg.solve(small, d_rows)
    return left, right


def repair_floor(filters: list[np.ndarray], m: float) -> tuple[list[np.ndarray], int]:
    """Gauge every blob of the chain ``filters`` (data-flow order, float64) until no entry is
    below m·std of its filter, or :data:`MAX_ROUNDS` sweeps. The composition is unchanged up
    to rounding. Returns (filters, sweeps); check the floor on the result (it may still fail
    when a blob is too narrow for its small entries)."""
    filters = list(filters)
    sweeps = 0
    while sweeps < MAX_ROUNDS:
        if not any(below_floor(f, m).any() for f in filters):
            break
        sweeps += 1
        for p in range(len(filters) - 1):
            left, right = as_left(filters[p]), as_right(filters[p + 1])
            found = _row_correction(left, m)
            if found is not None:  # T⁻¹ = I + D on the rows of L
                left, right = _apply(left, right, *found)
            found = _row_correction(np.ascontiguousarray(right.T), m)
            if found is not None:  # T = I + D'ᵀ on the columns of R
                right_t, left_t = _apply(np.ascontiguousarray(right.T), left.T, *found)
                left, right = np.ascontiguousarray(left_t.T), np.ascontiguousarray(right_t.T)
            filters[p] = left.reshape(filters[p].shape)
            filters[p + 1] = from_right(right, filters[p + 1].shape)
    return filters, sweeps
