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


def _row_correction(left: np.ndarray, m: float) -> np.ndarray | None:
    """D (w × w) with (I + D)·L moving every entry of L below PUSH·m·std to ±PUSH·m·std
    exactly: row a of D is the minimum-norm solution of D[a, :]·L[:, S_a] = target − L[a, S_a]
    over the small entries S_a of row a (one small Gram per row, solved as a batch; a tiny
    ridge keeps a row with more small entries than channels solvable in least squares).
    None when no entry is small."""
    floor = PUSH * m * float(np.std(left))
    small = np.abs(left) < floor
    counts = small.sum(axis=1)
    if not counts.any():
        return None
    width = int(counts.max())
    # Row a's small columns, padded with column 0 and masked out.
    order = np.argsort(~small, axis=1, kind="stable")[:, :width]
    valid = np.arange(width)[None, :] < counts[:, None]
    values = np.take_along_axis(left, order, axis=1)
    rhs = np.where(valid, np.where(values < 0, -floor, floor) - values, 0.0)
    cols = left.T[order] * valid[..., None]  # (w, width, w): L[:, S_a]ᵀ
    full = left.T @ left  # one GEMM; row a's Gram is its (S_a, S_a) block
    gram = full[order[:, :, None], order[:, None, :]] * (valid[:, :, None] & valid[:, None, :])
    ridge = 1e-12 * np.trace(gram, axis1=1, axis2=2).max() + float(np.finfo(float).tiny)
    gram += np.eye(width) * ridge + np.eye(width) * (~valid)[:, :, None]
    y = np.linalg.solve(gram, rhs[..., None])[..., 0]
    return np.einsum("as,ask->ak", y, cols)


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
            d = _row_correction(left, m)
            if d is not None:  # T⁻¹ = I + D
                t_inv = np.eye(d.shape[0]) + d
                left = t_inv @ left
                right = np.linalg.solve(t_inv.T, right.T).T
            d = _row_correction(np.ascontiguousarray(right.T), m)
            if d is not None:  # T = I + Dᵀ
                t = np.eye(d.shape[0]) + d.T
                right = right @ t
                left = np.linalg.solve(t, left)
            filters[p] = left.reshape(filters[p].shape)
            filters[p + 1] = from_right(right, filters[p + 1].shape)
    return filters, sweeps
