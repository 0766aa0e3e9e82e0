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


def power_of_two_balance(filters: Sequence[np.ndarray]) -> list[np.ndarray]:
    """F_p·2^e_p with Σ e_p = 0: e_p (p < P) is the power of two nearest the factor that gives
    F_p the common standard deviation (``balance``'s target), the last takes what is left, so
    two filters end with standard deviations within a factor 2 of each other. The rescaling
    is exact in every binary floating-point format: an entry that was exactly representable
    (G·2^−k, a power of two) stays so. All-zero filters: no change."""
    scales = [float(np.std(f)) or float(np.sqrt(np.mean(np.square(f)))) for f in filters]
    if len(filters) == 1 or min(scales) == 0.0:
        return list(filters)
    logs = [math.log2(s) for s in scales]
    common = sum(logs) / len(logs)
    shifts = [round(common - e) for e in logs[:-1]]
    shifts.append(-sum(shifts))
    return [np.ldexp(f, e) for f, e in zip(filters, shifts)]


def _orthogonal_stack(n: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """n random orthogonal (w × w) matrices (Haar: the sign of R's diagonal), one batched QR."""
    q, r = np.linalg.qr(rng.standard_normal((n, w, w)))
    return q * np.where(np.diagonal(r, axis1=-2, axis2=-1) < 0, -1.0, 1.0)[:, None, :]


def power_of_two_gauge(left: np.ndarray, right: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One channel between the factors (w = 1) and one of them a single entry: that entry
    becomes the signed power of two nearest the balanced magnitude √(|entry|·‖other‖), the
    other factor is multiplied by entry/2^k (float64; G·2^−k exactly once rounded back to G's
    dtype). Stacked (n, 1, a), (n, b, 1) with a = 1 or b = 1; zero groups are left as they are."""
    scalar_left = left.shape[2] == 1
    entry = (left if scalar_left else right).reshape(-1)
    other = right if scalar_left else left
    norm = np.sqrt(np.sum(np.square(other.reshape(other.shape[0], -1)), axis=1))
    ok = (entry != 0.0) & (norm > 0.0)
    k = np.rint(0.5 * np.log2(np.where(ok, np.abs(entry) * norm, 1.0)))
    power = np.where(ok, np.copysign(np.ldexp(1.0, k.astype(int)), entry), entry)
    factor = np.where(ok, np.ldexp(entry, -k.astype(int)) * np.sign(entry), 1.0)
    other = other * factor.reshape(-1, 1, 1)
    power = power.reshape(-1, 1, 1)
    return (power, other) if scalar_left else (other, power)


def balanced_stacked(
    left: np.ndarray, right: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`balanced_pair` on n independent pairs at once (the groups of a grouped layer):
    L (n, w, a), R (n, b, w) → (T_j⁻¹·L_j, R_j·T_j), T_j the balancing transform of pair j
    (times a random orthogonal Ω_j), from two batched symmetric eigendecompositions:
    P_j = L_j·L_jᵀ = C_j·C_jᵀ (C_j = V·D^½), C_jᵀ·R_jᵀR_j·C_j = U·S²·Uᵀ,
    T_j = C_j·U·S^(−1/2)·Ω_j, T_j⁻¹ = Ω_jᵀ·S^(1/2)·Uᵀ·D^(−1/2)·Vᵀ. Pairs that cannot be balanced
    (w > min(a, b), a singular Gramian) are returned as they are. With one channel (w = 1) and
    a single-entry factor, the gauge is a power of two instead (:func:`power_of_two_gauge`): that
    factor is ±2^k and the other G_j·2^−k, both exact in G's own dtype, so the child rounds
    like the parent."""
    n, w, a = left.shape
    b = right.shape[1]
    if w == 1 and min(a, b) == 1:
        return power_of_two_gauge(left, right)
    if w > min(a, b):
        return left, right
    eps = w * np.finfo(np.float64).eps
    d, v = np.linalg.eigh(left @ np.swapaxes(left, 1, 2))
    ok = d[:, 0] > d[:, -1] * eps
    root = np.sqrt(np.where(ok[:, None], d, 1.0))
    c = v * root[:, None, :]
    gram = np.swapaxes(right, 1, 2) @ right
    s2, u = np.linalg.eigh(np.swapaxes(c, 1, 2) @ gram @ c)
    ok &= s2[:, 0] > s2[:, -1] * eps
    quarter = np.where(ok[:, None], s2, 1.0) ** 0.25
    omega = _orthogonal_stack(n, w, rng)
    t = (c @ u) / quarter[:, None, :] @ omega
    t_inv = np.swapaxes(omega, 1, 2) @ (
        (quarter[:, :, None] * np.swapaxes(u, 1, 2)) @ (np.swapaxes(v, 1, 2) / root[:, :, None])
    )
    eye = np.eye(w)
    t = np.where(ok[:, None, None], t, eye)
    t_inv = np.where(ok[:, None, None], t_inv, eye)
    return t_inv @ left, right @ t


def balanced_groups(
    f1: np.ndarray, f2: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`balanced_stacked` on stacked filters F1 (n, w, C0', *K1), F2 (n, C2', w, *K2)
    (each group's channel gauge between the two); returns them in the same layout."""
    n, w = f1.shape[:2]
    left = f1.reshape(n, w, -1)
    right = np.moveaxis(f2, 2, -1).reshape(n, -1, w)
    left, right = balanced_stacked(left, right, rng)
    moved = right.reshape(n, f2.shape[1], *f2.shape[3:], w)
    return left.reshape(f1.shape), np.ascontiguousarray(np.moveaxis(moved, -1, 2))
