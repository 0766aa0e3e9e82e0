"""An exact dense pair in closed form: the identity-augmented decomposition.

For G~ = F2 ⊛ F1 with F1 (w, C0, *K1), F2 (C2, w, *K2), K1 ≤ K2 per dimension and w > C0,
split the w channels into C0 identity channels and m = w − C0 random ones:

    F1 = [δ_a·I_C0 ; B],   F2 = [X, Q·δ_a],   X = (G~ − δ_a ⊛ Q ⊛ B) shifted by −a,

with B (m, C0, *K1) and Q (C2, m, *(K2 − K1 + 1)) random and δ_a the unit impulse at tap a of
K1. Then F2 ⊛ F1 = X ⊛ δ_a + δ_a ⊛ Q ⊛ B = G~ exactly: Q ⊛ B has kernel K2, and a is chosen so
that G's support in G~ lies in a + K2 as well, where X ⊛ δ_a reaches. A random orthogonal Ω on
the w channels, (F1, F2) → (Ω·F1, F2·Ωᵀ), leaves the composition unchanged and makes every
entry non-zero: each channel of Ω·F1 mixes an identity channel (tap a) with the B channels
(every tap), each channel of F2·Ωᵀ mixes X (every tap) with Q.

No iteration: for 3×3 → (3×3, 3×3) at width 2C this costs O(w·C²·|K|) where a bilinear
solver needs many Gram solves, and it exists for every w > C0 — also below the equation count
C1·(C0|K1| + C2|K2|) − C1² ≥ C2·C0·|Kt|, which is for a generic G~ (G~ = G zero-padded is
not generic). The branch weight ‖Q ⊛ B‖ = γ·‖G~‖ trades the low-precision noise ratio
(γ → 0 approaches IdMorph: the factors hold G itself) against how far the entries spread from
the identity tap; :data:`BRANCH_WEIGHT` keeps the float32/bfloat16 noise ratio near 1.3 at
width 2C (``morph.conditioning``).

K2 ≤ K1 and w > C2 is the mirror image, solved on the transposed problem
G~ᵀ = F1ᵀ ⊛ F2ᵀ (channels swapped; the convolution commutes).
"""

from __future__ import annotations

import math
from copy import copy
from dataclasses import dataclass

import numpy as np

from .._memory import check_working_set
from ..reference import compose_ref, swap_channels
from .common import orthogonal_filter
from .conditioning import balancing_transform
from .gauge import as_left, as_right, from_right
from .solvability import Solvability, identity_tap, taps

#: ‖Q ⊛ B‖ / ‖G~‖ of the random branch.
BRANCH_WEIGHT = 0.3
#: Entries below the floor are moved to ±PUSH·floor (a margin for the floor's own drift).
PUSH = 1.5
#: Rounds of floor lifting per factor before giving up.
LIFT_ROUNDS = 20
#: Growth of ‖T‖·‖T⁻¹‖ at which the floor lifting gives up.
_CONDITIONING_GROWTH = 10.0
#: A one-sided solve with fewer unknowns per equation than this is nearly square; where both
#: kernels have several taps its operator's small singular values amplify rounding (noise ratio
#: ≈ 2.9 for 3×3 → (3×3, 3×3) at width 3C: 27·C unknowns for 25·C equations per row) and
#: :func:`prefer_augmented` takes the identity-augmented pair (≈ 1.2) instead.
NEAR_SQUARE = 1.5
#: Bound on the entries of one batch of per-row Gram solves in the floor lifting.
_BATCH_ENTRIES = 1 << 22


def _branch_product(q: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Q ⊛ B (C2, C0, *K2): one matrix product when Q is 1×1 (K1 = K2)."""
    if math.prod(q.shape[2:]) == 1:
        return (q.reshape(q.shape[0], -1) @ b.reshape(b.shape[0], -1)).reshape(
            q.shape[0], *b.shape[1:]
        )
    return compose_ref(q, b)


def _mixed(
    f1r: np.ndarray, f2r: np.ndarray, t: np.ndarray, t_inv: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(T⁻¹·F1, F2·T): the channel gauge as two matrix products."""
    f1 = (t_inv @ as_left(f1r)).reshape(f1r.shape)
    return f1, from_right(as_right(f2r) @ t, f2r.shape)


@dataclass
class _Branch:
    """The construction with the identity in F1 at tap ``tap``: G~ restricted to tap + K2
    (``window``, (C2, C0, *K2)), B (m, C0, *K1) and Q (C2, m, *Kq), Kq = K2 − K1 + 1."""

    window: np.ndarray
    tap: tuple[int, ...]
    b: np.ndarray
    q: np.ndarray

    def factors(self) -> tuple[np.ndarray, np.ndarray]:
        """F1 = [δ_a·I; B] (w, C0, *K1) and F2 = [window − Q ⊛ B, Q at taps a + Kq]."""
        c2, c0 = self.window.shape[:2]
        m = self.b.shape[0]
        f1 = np.zeros((c0 + m, c0, *self.b.shape[2:]))
        f1[(np.arange(c0), np.arange(c0), *self.tap)] = 1.0
        f1[c0:] = self.b
        f2 = np.zeros((c2, c0 + m, *self.window.shape[2:]))
        f2[:, :c0] = self.window - _branch_product(self.q, self.b)
        taps_q = (slice(t, t + n) for t, n in zip(self.tap, self.q.shape[2:]))
        f2[(slice(None), slice(c0, None), *taps_q)] = self.q
        return f1, f2


def _draw(
    g_tilde: np.ndarray,
    g_kernel: tuple[int, ...],
    width: int,
    k1: tuple[int, ...],
    k2: tuple[int, ...],
    rng: np.random.Generator,
) -> _Branch:
    """Random orthogonal B and Q scaled so that ‖Q ⊛ B‖ = :data:`BRANCH_WEIGHT`·‖G~‖."""
    c2, c0 = g_tilde.shape[:2]
    tap = identity_tap(g_kernel, k1, k2)
    assert tap is not None, "Solvability.augmented_side checks the tap"
    m = width - c0
    branch_b = orthogonal_filter((m, c0, *k1), rng)
    branch_q = orthogonal_filter((c2, m, *(n2 - n1 + 1 for n1, n2 in zip(k1, k2))), rng)
    norm_product = float(np.linalg.norm(_branch_product(branch_q, branch_b)))
    norm_g = float(np.linalg.norm(g_tilde))
    if norm_product > 0.0 and norm_g > 0.0:
        root = math.sqrt(BRANCH_WEIGHT * norm_g / norm_product)
        branch_b, branch_q = branch_b * root, branch_q * root
    window = (slice(None), slice(None), *(slice(t, t + n) for t, n in zip(tap, k2)))
    return _Branch(np.asarray(g_tilde, dtype=np.float64)[window], tap, branch_b, branch_q)


def _row_moves(values: np.ndarray, basis: np.ndarray, floor: float) -> np.ndarray:
    """Δ (rows, k): for each row r of ``values`` (rows, n), the minimum-norm Δ[r] with
    (values[r] + Δ[r]·basis)[S_r] = ±PUSH·floor (sign kept), S_r the row's entries below
    the floor; ``basis`` (k, n). Rows without small entries get 0. Per row the Gram of
    basis[:, S_r] (|S_r|², a tiny ridge for rows with more small entries than k), batched."""
    target = PUSH * floor
    small = np.abs(values) < target
    moves = np.zeros((values.shape[0], basis.shape[0]))
    rows = np.flatnonzero(small.any(axis=1))
    if rows.size == 0:
        return moves
    counts = small[rows].sum(axis=1)
    width = int(counts.max())
    order = np.argsort(~small[rows], axis=1, kind="stable")[:, :width]
    valid = np.arange(width)[None, :] < counts[:, None]
    current = np.take_along_axis(values[rows], order, axis=1)
    rhs = np.where(valid, np.where(current < 0, -target, target) - current, 0.0)
    ridge = 1e-12 * float(np.max(np.sum(basis * basis, axis=0))) + float(np.finfo(float).tiny)
    step = max(1, _BATCH_ENTRIES // (basis.shape[0] * width))
    for start in range(0, rows.size, step):
        part = slice(start, start + step)
        cols = basis[:, order[part]] * valid[part][None]  # (k, r, width), padding zeroed
        cols = np.moveaxis(cols, 0, 1)  # (r, k, width)
        gram = np.swapaxes(cols, 1, 2) @ cols  # batched BLAS
        gram += np.eye(width) * ridge + np.eye(width) * (~valid[part])[:, :, None]
        y = np.linalg.solve(gram, rhs[part][..., None])
        moves[rows[part]] = (cols @ y)[..., 0]
    return moves


def _small_any(f: np.ndarray, m: float) -> bool:
    return bool((np.abs(f) < m * float(np.std(f))).any())


def prefer_augmented(info: Solvability) -> bool:
    """Whether the general and stable depth morphs take the identity-augmented pair: it exists
    and no one-sided solve is exact, or (both kernels with several taps) every exact one-sided
    solve is nearly square (fewer than :data:`NEAR_SQUARE` unknowns per equation)."""
    if info.augmented_side is None:
        return False
    if not info.exact_general:
        return True
    if taps(info.k1) == 1 or taps(info.k2) == 1:
        return False
    ratios = []
    if info.f1_last_exact:
        ratios.append(info.c1 * taps(info.k1) / (info.c2 * taps(info.kt)))
    if info.f2_last_exact:
        ratios.append(info.c1 * taps(info.k2) / (info.c0 * taps(info.kt)))
    return max(ratios) < NEAR_SQUARE


def _conditioning(t: np.ndarray, t_inv: np.ndarray) -> float:
    return float(np.linalg.norm(t) * np.linalg.norm(t_inv))


def _lift_floor(
    branch: _Branch, t: np.ndarray, m: float
) -> tuple[_Branch, np.ndarray, np.ndarray] | None:
    """Move B and the mixing T so that F1 = T⁻¹·[δ_a·I; B] and F2 = [window − Q ⊛ B, Q]·T have
    no entry below m·std of their filter; the composition stays G~ (up to rounding). F1 is
    linear in B: column (i, p) of F1 moves by T⁻¹_B·ΔB[:, i, p] (w − C0 unknowns for its w
    entries). F2's column j moves under T → T·(I + Δᵀ) by Σ_v F2[:, v]·Δ[j, v] (w unknowns for
    its C2·|K2| entries), which changes F1 a little (T⁻¹), so rounds alternate.
    Returns (branch, T, T⁻¹), or None after :data:`LIFT_ROUNDS` rounds or once T's
    conditioning has grown :data:`_CONDITIONING_GROWTH`-fold (too narrow a branch: the moves
    no longer fit, and rounding in T⁻¹ would grow the residual)."""
    c0 = branch.window.shape[1]
    t_inv = np.linalg.inv(t)
    start = _conditioning(t, t_inv)
    for _ in range(LIFT_ROUNDS):
        f1r, f2r = branch.factors()
        f1, f2 = _mixed(f1r, f2r, t, t_inv)
        low1, low2 = _small_any(f1, m), _small_any(f2, m)
        if not (low1 or low2):
            return branch, t, t_inv
        if _conditioning(t, t_inv) > _CONDITIONING_GROWTH * start:
            return None
        if low1:
            values = f1.reshape(f1.shape[0], -1).T  # rows (i, p), entries over the w channels
            moves = _row_moves(values, t_inv[:, c0:].T, m * float(np.std(f1)))
            branch.b = branch.b + moves.T.reshape(branch.b.shape)
        if low2:
            columns = np.ascontiguousarray(as_right(f2).T)  # (w, C2·|K2|)
            moves = _row_moves(columns, columns, m * float(np.std(f2)))
            t = t + t @ moves.T
            t_inv = np.linalg.inv(t)
    return None


def augmented_pair(
    g_tilde: np.ndarray,
    g_kernel: tuple[int, ...],
    width: int,
    k1: tuple[int, ...],
    k2: tuple[int, ...],
    side: str,
    rng: np.random.Generator,
    min_magnitude: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """F1 (width, C0, *k1) and F2 (C2, width, *k2), float64, with F2 ⊛ F1 = G~ up to rounding,
    balanced (:func:`balancing_transform`, which includes the random orthogonal mixing) and
    every entry non-zero (for generic random draws). ``g_kernel`` is G's kernel inside G~
    (C2, C0, *Kt); ``side`` is :attr:`Solvability.augmented_side`. With ``min_magnitude`` m,
    B and Q are then moved so that no entry is below m·std of its filter
    (:func:`_lift_floor`); where that fails (a branch too narrow for the moves) the pair is
    returned as drawn, so check the floor on the result."""
    pair_entries = width * g_tilde.shape[1] * math.prod(k1) + g_tilde.shape[0] * width * math.prod(
        k2
    )
    check_working_set(8 * (6 * width * width + 8 * pair_entries), "the identity-augmented pair")
    if side == "F1":
        branch = _draw(g_tilde, g_kernel, width, k1, k2, rng)
    else:
        g_t = np.ascontiguousarray(swap_channels(g_tilde))
        branch = _draw(g_t, g_kernel, width, k2, k1, rng)
    t = balancing_transform(*branch.factors(), rng)
    if t is None:  # mixing only: T = Ω orthogonal
        t = orthogonal_filter((width, width), rng) / math.sqrt(2.0)
    lifted = None if min_magnitude is None else _lift_floor(copy(branch), t, min_magnitude)
    if lifted is None:
        t_inv = np.linalg.inv(t)
    else:
        branch, t, t_inv = lifted
    f1r, f2r = branch.factors()
    f1, f2 = _mixed(f1r, f2r, t, t_inv)
    if side == "F2":
        f1, f2 = swap_channels(f2), swap_channels(f1)
    return np.ascontiguousarray(f1), np.ascontiguousarray(f2)
