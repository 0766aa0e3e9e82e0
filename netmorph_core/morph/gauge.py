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
from scipy.linalg import lapack

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


def as_rows(f: np.ndarray) -> np.ndarray:
    """F (C_out, w, *K) as the matrix (w, C_out·|K|) = :func:`as_right`ᵀ, row-contiguous."""
    return np.ascontiguousarray(np.moveaxis(f, 1, 0).reshape(f.shape[1], -1))


def from_rows(mat: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of :func:`as_rows` for a filter of ``shape``."""
    return np.ascontiguousarray(np.moveaxis(mat.reshape(shape[1], shape[0], *shape[2:]), 0, 1))


def _small_grams(a: np.ndarray, columns: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Row r's Gram A[:, S_r]ᵀ·A[:, S_r] (rows, s, s) for ``columns`` (rows, s) of A (w, n),
    padded slots (``valid`` False) zero. From one Gram over the columns used by any row when
    that is cheaper (2·w·u² flops against 2·w·rows·s² for per-row products), else per row."""
    rows, width = columns.shape
    used = np.unique(columns[valid])
    if used.size * used.size > 2 * rows * width * width:
        check_working_set(8 * a.shape[0] * rows * width, "the floor repair's Grams")
        stacked = a.T[columns] * valid[:, :, None]  # (rows, s, w)
        return stacked @ np.swapaxes(stacked, 1, 2)
    size = used.size + 1  # and a zero column last, for the padding
    check_working_set(8 * (size * size + rows * width * width), "the floor repair's Grams")
    position = np.full(a.shape[1], used.size)
    position[used] = np.arange(used.size)
    index = np.where(valid, position[columns], used.size)
    sub = np.zeros((a.shape[0], size))
    sub[:, :-1] = a[:, used]
    full = sub.T @ sub
    return np.take(full.ravel(), index[:, :, None] * size + index[:, None, :])


def _solve_spd(gram: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """x (rows, s) with gram[r]·x[r] = rhs[r] for a stack of symmetric positive definite
    matrices (rows, s, s), by Cholesky (LAPACK posv) one matrix at a time: a batched LU would
    hand every small matrix to the BLAS threads, which costs more than the factorisations."""
    out = np.empty_like(rhs)
    for r in range(gram.shape[0]):
        _, x, info = lapack.dposv(gram[r], rhs[r], lower=1)
        out[r] = x if info == 0 else np.linalg.lstsq(gram[r], rhs[r], rcond=None)[0]
    return out


def _row_correction(a: np.ndarray, m: float) -> tuple[np.ndarray, np.ndarray] | None:
    """(rows, D_rows): the rows r of A (w, n) holding entries below the floor m·std, and D
    restricted to them, such that (I + D)·A moves each of those entries to ±PUSH·m·std
    exactly. Row r of D is the minimum-norm solution of D[r, :]·A[:, S_r] = target − A[r, S_r]
    over row r's small entries S_r (one small Gram per row, solved as a batch; a tiny ridge
    keeps a row with more small entries than channels solvable in least squares). None when
    no entry is small.

    Only the entries below the floor are constrained: the others move by a fraction of the
    floor, and the few that cross it are caught by the next sweep, which touches their rows
    only (few rows and few columns: cheap)."""
    std = float(np.std(a))
    small_all = np.abs(a) < m * std
    rows = np.flatnonzero(small_all.any(axis=1))
    if rows.size == 0:
        return None
    target = PUSH * m * std
    small = small_all[rows]
    counts = small.sum(axis=1)
    width = int(counts.max())
    valid = np.arange(width)[None, :] < counts[:, None]
    columns = np.argsort(~small, axis=1, kind="stable")[:, :width]
    values = np.take_along_axis(a[rows], columns, axis=1)
    rhs = np.where(valid, np.where(values < 0, -target, target) - values, 0.0)
    gram = _small_grams(a, columns, valid)
    ridge = 1e-12 * np.trace(gram, axis1=1, axis2=2).max() + float(np.finfo(float).tiny)
    gram += np.eye(width) * ridge + np.eye(width) * (~valid)[:, :, None]
    y = np.where(valid, _solve_spd(gram, rhs), 0.0)
    # D[r, :] = Σ_s y[r, s]·A[:, S_r[s]]ᵀ
    return rows, (y[:, None, :] @ a.T[columns])[:, 0, :]


def _gauge_rows(
    a: np.ndarray, b: np.ndarray, rows: np.ndarray, d_rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(S·A, S⁻ᵀ·B) for S = I + U·V, U the selector of ``rows`` and V = D_rows: by Woodbury
    S⁻ᵀ = I − Vᵀ·(I + V·U)⁻ᵀ·Uᵀ, so only B's ``rows`` enter a small solve."""
    a = a.copy()
    a[rows] += d_rows @ a
    small = np.eye(rows.size) + d_rows[:, rows]
    return a, b - np.linalg.solve(small, d_rows).T @ b[rows]


def repair_floor(filters: list[np.ndarray], m: float) -> tuple[list[np.ndarray], int]:
    """Gauge every blob of the chain ``filters`` (data-flow order, float64) until no entry is
    below m·std of its filter, or :data:`MAX_ROUNDS` sweeps. The composition is unchanged up
    to rounding. Returns (filters, sweeps); check the floor on the result (it may still fail
    when a blob is too narrow for its small entries).

    A blob's pair is held as two row matrices of the gauge, A = F_p (w, C_{p−1}·|K_p|) and
    B = F_{p+1} as (w, C_{p+1}·|K_{p+1}|) = Rᵀ: (T⁻¹L, RT) is (S·A, S⁻ᵀ·B) with S = T⁻¹, and a
    correction of B's rows is the same move with the roles swapped."""
    filters = list(filters)
    sweeps = 0
    while sweeps < MAX_ROUNDS:
        if not any(below_floor(f, m).any() for f in filters):
            break
        sweeps += 1
        for p in range(len(filters) - 1):
            a, b = as_left(filters[p]), as_rows(filters[p + 1])
            found = _row_correction(a, m)
            if found is not None:
                a, b = _gauge_rows(a, b, *found)
            found = _row_correction(b, m)
            if found is not None:
                b, a = _gauge_rows(b, a, *found)
            filters[p] = a.reshape(filters[p].shape)
            filters[p + 1] = from_rows(b, filters[p + 1].shape)
    return filters, sweeps
