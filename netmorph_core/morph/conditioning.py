"""How much a low-precision child amplifies rounding: the noise ratio of a decomposition.

A child stores the factors F_0, …, F_P of G~ = F_P ⊛ … ⊛ F_0 in a low precision (float32 or
bfloat16). Rounding each factor perturbs the composition by about Σ_p κ-weighted rounding
errors, so ill-conditioned factors (a random square factor has condition number ~ its width)
make the child deviate far more than the parent, which only rounds G itself. The noise ratio

    ‖F_P^r ⊛ … ⊛ F_0^r − G~‖ / ‖G^r − G‖     (^r: rounded to the dtype; everything else float64)

compares the two. When G is already representable in the dtype (G^r = G, e.g. a float32
parent measured in float32), the denominator is the expected rounding of a generic G,
u·‖G‖/√3 (u the unit roundoff, relative errors uniform in ±u).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .common import compose_chain
from .gauge import as_left, as_right, from_right

#: Unit roundoff (half the spacing of numbers in [1, 2)) per supported low precision.
UNIT_ROUNDOFF = {"float32": 2.0**-24, "bfloat16": 2.0**-8}


def round_to(x: np.ndarray, dtype: str) -> np.ndarray:
    """``x`` rounded to ``dtype`` ("float32" or "bfloat16", round to nearest even) and
    returned in float64. bfloat16 keeps float32's upper 16 bits."""
    if dtype not in UNIT_ROUNDOFF:
        raise ValueError(f"dtype must be one of {tuple(UNIT_ROUNDOFF)}, got {dtype!r}")
    single = np.asarray(x, dtype=np.float64).astype(np.float32)
    if dtype == "float32":
        return single.astype(np.float64)
    bits = single.view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return rounded.astype(np.uint32).view(np.float32).astype(np.float64)


def noise_ratio(g_tilde: np.ndarray, filters: Sequence[np.ndarray], dtype: str) -> float:
    """The child's deviation from G~ with ``filters`` (data-flow order) rounded to ``dtype``,
    over the parent's own rounding of G~ (see the module docstring). 0 when G~ is zero."""
    g64 = np.asarray(g_tilde, dtype=np.float64)
    scale = float(np.linalg.norm(g64))
    if scale == 0.0:
        return 0.0
    child = float(np.linalg.norm(compose_chain([round_to(f, dtype) for f in filters]) - g64))
    parent = float(np.linalg.norm(round_to(g64, dtype) - g64))
    if parent == 0.0:
        parent = UNIT_ROUNDOFF[dtype] * scale / math.sqrt(3.0)
    return child / parent


def balancing_transform(
    f1: np.ndarray, f2: np.ndarray, rng: np.random.Generator
) -> np.ndarray | None:
    """T (w × w) such that (T⁻¹F1, F2·T) has the smallest ‖F1‖_F·‖F2‖_F, times a random
    orthogonal Ω, or None when the pair cannot be balanced (see :func:`balanced_pair`).

    With L = F1 as (w, C0·|K1|), R = F2 as (C2·|K2|, w), P = L·Lᵀ = C·Cᵀ (Cholesky) and
    Cᵀ·(RᵀR)·C = U·S²·Uᵀ, T = C·U·S^(−1/2)·Ω makes both Gramians S (balanced truncation's
    balancing): the minimum of ‖RT‖² + ‖T⁻¹L‖² over T, hence ‖L'‖·‖R'‖ ≤ ‖L‖·‖R‖, and a smaller
    rounding error of the composition. Ω keeps that and spreads the channels' scales evenly
    (dense factors, consistent row norms)."""
    left, right = as_left(f1), as_right(f2)
    w = left.shape[0]
    if w > min(left.shape[1], right.shape[0]):
        return None
    try:
        chol = np.linalg.cholesky(left @ left.T)
    except np.linalg.LinAlgError:
        return None
    s2, u = np.linalg.eigh(chol.T @ (right.T @ right) @ chol)
    if s2[0] <= s2[-1] * w * np.finfo(np.float64).eps:
        return None
    omega, r = np.linalg.qr(rng.standard_normal((w, w)))
    omega = omega * np.where(np.diag(r) < 0, -1.0, 1.0)
    return (chol @ u) / s2**0.25 @ omega


def balanced_pair(
    f1: np.ndarray, f2: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """The exact pair (F1, F2) re-gauged to (T⁻¹F1, F2·T) by :func:`balancing_transform`;
    returned unchanged when P = L·Lᵀ or RᵀR is singular (w larger than a factor's fan-in)."""
    t = balancing_transform(f1, f2, rng)
    if t is None:
        return f1, f2
    return (
        np.linalg.solve(t, as_left(f1)).reshape(f1.shape),
        from_right(as_right(f2) @ t, f2.shape),
    )
