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

import numpy as np

from ..reference import compose_ref, swap_channels
from .common import orthogonal_filter
from .solvability import identity_tap

#: ‖Q·δ_b ⊛ B‖ / ‖G~‖ of the random branch.
BRANCH_WEIGHT = 0.3


def _identity_in_first(
    g_tilde: np.ndarray,
    g_kernel: tuple[int, ...],
    width: int,
    k1: tuple[int, ...],
    k2: tuple[int, ...],
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """The construction with the identity in F1 (float64 (F1, F2), before mixing)."""
    c2, c0 = g_tilde.shape[:2]
    a = identity_tap(g_kernel, k1, k2)
    assert a is not None, "Solvability.augmented_side checks the tap"
    m = width - c0
    branch_b = orthogonal_filter((m, c0, *k1), rng)
    branch_q = orthogonal_filter((c2, m, *(n2 - n1 + 1 for n1, n2 in zip(k1, k2))), rng)
    product = compose_ref(branch_q, branch_b)  # Q ⊛ B, kernel K2
    norm_product, norm_g = float(np.linalg.norm(product)), float(np.linalg.norm(g_tilde))
    if norm_product > 0.0 and norm_g > 0.0:
        root = math.sqrt(BRANCH_WEIGHT * norm_g / norm_product)
        branch_b, branch_q = branch_b * root, branch_q * root
        product = product * (root * root)
    window = (slice(None), slice(None), *(slice(t, t + n) for t, n in zip(a, k2)))
    f1 = np.zeros((width, c0, *k1))
    f1[(np.arange(c0), np.arange(c0), *a)] = 1.0
    f1[c0:] = branch_b
    f2 = np.zeros((c2, width, *k2))
    f2[:, :c0] = np.asarray(g_tilde, dtype=np.float64)[window] - product
    taps_q = (slice(t, t + q) for t, q in zip(a, branch_q.shape[2:]))
    f2[(slice(None), slice(c0, None), *taps_q)] = branch_q
    return f1, f2


def augmented_pair(
    g_tilde: np.ndarray,
    g_kernel: tuple[int, ...],
    width: int,
    k1: tuple[int, ...],
    k2: tuple[int, ...],
    side: str,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """F1 (width, C0, *k1) and F2 (C2, width, *k2), float64, with F2 ⊛ F1 = G~ up to rounding
    and every entry non-zero (for generic random draws). ``g_kernel`` is G's kernel inside
    G~ (C2, C0, *Kt); ``side`` is :attr:`Solvability.augmented_side`."""
    if side == "F1":
        f1, f2 = _identity_in_first(g_tilde, g_kernel, width, k1, k2, rng)
    else:
        g_t = np.ascontiguousarray(swap_channels(g_tilde))
        f2_t, f1_t = _identity_in_first(g_t, g_kernel, width, k2, k1, rng)
        f1, f2 = swap_channels(f1_t), swap_channels(f2_t)
    omega = orthogonal_filter((width, width), rng) / math.sqrt(2.0)  # orthogonal
    f1 = np.einsum("vw,wi...->vi...", omega, f1)
    f2 = np.einsum("ow...,vw->ov...", f2, omega)
    return np.ascontiguousarray(f1), np.ascontiguousarray(f2)
