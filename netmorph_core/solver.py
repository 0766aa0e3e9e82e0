"""Structured least-squares deconvolution shared by every backend (DESIGN.md §4).

Solving G~ = F2 ⊛ X for X (C1, C0, *k1) is one linear system per input channel with the same
matrix A (C2·|Kt| × C1·|k1|), A[(o, t), (m, s)] = F2[o, m, t − s]. A is never built: the
backend's kernels give AᵀA (``gram_outer``), A·Aᵀ (``gram_outer_rows``), A·X (``compose``) and
Aᵀ·Y (``correlate_outer``); the dense factorisation runs on the backend's device.

- Overdetermined or square (C2·|Kt| ≥ C1·|k1|): normal equations (AᵀA)·D = Aᵀ(B − A·X0),
  X = X0 + D. Full column rank makes X the unique least-squares solution.
- Underdetermined: X = X0 + Aᵀ·(A·Aᵀ)⁻¹·(B − A·X0), the exact solution nearest to X0.

X0 is ``init`` (zero when None), so X is the least-squares solution nearest to ``init``
(minimum norm without one), as ``netmorph_core.reference.solve_nearest``.

Precision: the kernels and the factorisation run in float64 whatever the input dtype. The
normal equations square the condition number, so a float32 Gram would lose κ(A)²·2⁻²⁴, and
the float64 Gram costs far less than its factorisation; the answer is returned in the
inputs' dtype.

Factorisation: Cholesky, with the condition number κ of the Gram estimated by a few power
and inverse iterations (O(n²) each, n the Gram's order). A failed Cholesky or κ ≥ 1/(n·ε)
(ε the float64 epsilon: ``numpy.linalg.matrix_rank``'s tolerance on the Gram) means the Gram
is numerically singular; the solve then uses its eigenvalue pseudo-inverse with eigenvalues
≤ n·ε·λ_max taken as zero, which gives the minimum-norm least-squares correction as
``numpy.linalg.lstsq`` does, singular values of A below √(n·ε)·σ_max counting as zero
(``lstsq`` resolves down to max(rows, cols)·ε·σ_max; through the Gram nothing below
√ε can be resolved). Iterative refinement: whenever κ·ε exceeds the accuracy wanted for the
output dtype (2⁻²⁶ for float32, 2⁻⁴³ for float64), X ← X + D is repeated with D solved for
the residual B − A·X computed through A (corrected semi-normal equations), until D is below
that accuracy; this recovers the accuracy of an orthogonal factorisation for κ(A) up to
about 1/√ε.

The side "inner", G~ = X ⊛ F1, is solved as G~ᵀ = F1ᵀ ⊛ Xᵀ (ᵀ swaps the channel axes).

Scaling: G~ and the factor are normalised by powers of two (largest magnitude in [0.5, 1)),
``init`` by their ratio, and X is scaled back, so G~·2^k gives exactly X·2^k: no Gram
overflows or underflows at any magnitude, and an X that the output dtype cannot represent is
a ``ValueError``. Sizes are checked first (:func:`netmorph_core._limits.check_deconv`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from . import _validation as v
from ._limits import check_deconv
from ._scaling import exponent, normalise, scale_back

SIDES = ("outer", "inner")

_EPS = float(np.finfo(np.float64).eps)
#: Relative accuracy wanted per output dtype: refinement runs while κ·ε exceeds it.
_TARGET = {np.dtype(np.float32): 2.0**-26, np.dtype(np.float64): 2.0**-43}
#: The first solve plus at most this many refinement steps.
_MAX_REFINEMENTS = 4
#: Block power / inverse iterations of the condition estimate: steps and block width.
_ESTIMATE_STEPS = 3
_ESTIMATE_BLOCK = 4


@dataclass(frozen=True)
class _Linalg:
    """Dense float64 linear algebra on one device: the array module and three routines."""

    xp: ModuleType
    cholesky: Callable[[Any], Any | None]  # Gram -> factor, None when not positive definite
    cho_solve: Callable[[Any, Any], Any]  # (factor, rhs) -> Gram⁻¹ · rhs
    eigh: Callable[[Any], tuple[Any, Any]]
    symm: Callable[[Any, Any], Any]  # (symmetric matrix, block) -> matrix · block
    norm: Callable[[Any], float]  # Euclidean norm of all entries


def _cpu_linalg() -> _Linalg:
    """SciPy's LAPACK and BLAS: the library the native kernels call too, so that one pool of
    BLAS threads does all the work (NumPy ships its own, whose idle threads would compete)."""
    from scipy.linalg import blas, lapack

    def cholesky(m: np.ndarray) -> np.ndarray | None:
        # The Gram is symmetric: its transpose is the same matrix in Fortran order. The upper
        # triangle of the result is left as it was (dpotrs reads the lower one only).
        low, info = lapack.dpotrf(m.T, lower=1, clean=0)
        return low if info == 0 else None

    def cho_solve(low: np.ndarray, b: np.ndarray) -> np.ndarray:
        x, info = lapack.dpotrs(low, b, lower=1)
        if info != 0:
            raise RuntimeError(f"LAPACK dpotrs failed with info={info}")
        return x

    def symm(m: np.ndarray, b: np.ndarray) -> np.ndarray:
        # A symmetric C-ordered matrix is its own transpose in Fortran order: no copy.
        return blas.dgemm(1.0, m.T, b)

    def norm(x: np.ndarray) -> float:
        return float(blas.dnrm2(np.ascontiguousarray(x).reshape(-1)))

    return _Linalg(np, cholesky, cho_solve, np.linalg.eigh, symm, norm)


def _cuda_linalg() -> _Linalg:
    import cupy
    import cupyx
    from cupyx.scipy.linalg import solve_triangular

    def cholesky(m: Any) -> Any | None:
        with cupyx.errstate(linalg="raise"):
            try:
                return cupy.linalg.cholesky(m)
            except np.linalg.LinAlgError:
                return None

    def cho_solve(low: Any, b: Any) -> Any:
        y = solve_triangular(low, b, lower=True)
        return solve_triangular(low, y, lower=True, trans="T")

    def norm(x: Any) -> float:
        return float(cupy.linalg.norm(x))

    return _Linalg(cupy, cholesky, cho_solve, cupy.linalg.eigh, cupy.matmul, norm)


def _linalg_for(impl: ModuleType, data: Any) -> _Linalg:
    """The backend's device decides; NumPy data on a "cuda" backend (Numba's CUDA simulator)
    stays on the CPU."""
    device = getattr(impl, "DEVICE", None)
    if device == "cpu" or (device == "cuda" and isinstance(data, np.ndarray)):
        return _cpu_linalg()
    if device == "cuda":
        return _cuda_linalg()
    raise ValueError(f"backend module must have DEVICE 'cpu' or 'cuda', got {device!r}")


@dataclass(frozen=True)
class _Inverse:
    """Gram⁻¹ (or its pseudo-inverse) as a solve, with the estimated condition number."""

    solve: Callable[[Any], Any]
    cond: float


def _estimate_cond(la: _Linalg, gram: Any, solve: Callable[[Any], Any]) -> float:
    """κ(Gram) ≈ λ_max / λ_min: the largest Rayleigh quotients of block power iterations on
    Gram and on Gram⁻¹ (a lower bound; a block of a few vectors costs about one vector's pass
    over the matrix)."""
    xp = la.xp
    start = np.random.default_rng(0).standard_normal((gram.shape[0], _ESTIMATE_BLOCK))
    u = w = xp.asarray(start / np.linalg.norm(start, axis=0))
    for _ in range(_ESTIMATE_STEPS):
        gu, sw = la.symm(gram, u), solve(w)
        lam_max = float((u * gu).sum(axis=0).max())
        inv_max = float((w * sw).sum(axis=0).max())
        u = gu / xp.linalg.norm(gu, axis=0)
        w = sw / xp.linalg.norm(sw, axis=0)
    cond = lam_max * inv_max
    return cond if math.isfinite(cond) and cond > 0 else math.inf


def _pseudo_inverse(la: _Linalg, gram: Any) -> _Inverse:
    """Eigenvalue pseudo-inverse: eigenvalues ≤ n·ε·λ_max are taken as zero."""
    xp = la.xp
    lam, vec = la.eigh(gram)
    lam_max = float(lam[-1])
    keep = lam > gram.shape[0] * _EPS * lam_max
    vec_k = vec[:, keep]
    lam_k = lam[keep]
    if lam_k.size == 0:
        return _Inverse(lambda rhs: xp.zeros_like(rhs), 1.0)

    def solve(rhs: Any) -> Any:
        return vec_k @ ((vec_k.T @ rhs) / lam_k[:, None])

    return _Inverse(solve, lam_max / float(lam_k.min()))


def _invert(la: _Linalg, gram: Any) -> _Inverse:
    """Cholesky when the Gram is numerically non-singular, else the pseudo-inverse."""
    factor = la.cholesky(gram)
    if factor is not None:

        def solve(rhs: Any) -> Any:
            return la.cho_solve(factor, rhs)

        cond = _estimate_cond(la, gram, solve)
        if cond * _EPS * gram.shape[0] < 1.0:
            return _Inverse(solve, cond)
    return _pseudo_inverse(la, gram)


def _as_columns(xp: ModuleType, t: Any) -> Any:
    """(C, C0, *K) -> (C·|K|, C0): one column per input channel, rows (c, offset) in C order."""
    return xp.moveaxis(t, 1, -1).reshape(-1, t.shape[1])


def _from_columns(xp: ModuleType, cols: Any, lead: tuple[int, ...]) -> Any:
    """Inverse of :func:`_as_columns` for a tensor of shape (lead[0], C0, *lead[1:])."""
    return xp.moveaxis(cols.reshape(*lead, cols.shape[1]), -1, 1)


def _solve_outer(
    impl: ModuleType,
    la: _Linalg,
    g: Any,
    f2: Any,
    k1: tuple[int, ...],
    x0: Any | None,
    target: float,
) -> Any:
    """X (C1, C0, *k1) nearest to X0 minimising ‖F2 ⊛ X − G~‖, all in float64."""
    xp = la.xp
    c2, c1 = f2.shape[:2]
    c0 = g.shape[1]
    kt = g.shape[2:]
    overdetermined = c2 * math.prod(kt) >= c1 * math.prod(k1)
    # A correction D solves a Gram system built from the residual R: (AᵀA)·D = Aᵀ·R when
    # overdetermined (``project`` applies Aᵀ), D = Aᵀ·(AAᵀ)⁻¹·R otherwise (``finish`` does).
    if overdetermined:

        def project(r: Any) -> Any:
            return _as_columns(xp, xp.asarray(impl.correlate_outer(f2, r, k1)))

        def finish(p: Any) -> Any:
            return _from_columns(xp, inverse.solve(p), (c1, *k1))

    else:

        def project(r: Any) -> Any:
            return _as_columns(xp, r)

        def finish(p: Any) -> Any:
            y = _from_columns(xp, inverse.solve(p), (c2, *kt))
            return xp.asarray(impl.correlate_outer(f2, y, k1))

    if x0 is None:
        x = xp.zeros((c1, c0, *k1), dtype=np.float64)
        r = g
    else:
        x = x0.copy()
        r = g - xp.asarray(impl.compose(f2, x))
    # The kernels that need no factor run back to back before the factorisation.
    gram = impl.gram_outer(f2, k1) if overdetermined else impl.gram_outer_rows(f2, k1)
    p = project(r)
    inverse = _invert(la, xp.asarray(gram))
    refine = inverse.cond * _EPS > target
    previous = math.inf
    for _ in range(1 + _MAX_REFINEMENTS):
        d = finish(p)
        size = la.norm(d)
        if size > 0.5 * previous:  # no longer contracting: the last iterate is the answer
            break
        x += d
        if not refine or size <= target * la.norm(x):
            break
        previous = size
        p = project(g - xp.asarray(impl.compose(f2, x)))
    return x


def _check_array(a: Any, name: str) -> None:
    if not hasattr(a, "shape") or not hasattr(a, "dtype"):
        raise TypeError(f"{name} must be an array of the backend's type, got {type(a).__name__}")
    if np.dtype(a.dtype) not in v.SUPPORTED_DTYPES:
        raise TypeError(f"{name} must have dtype float32 or float64, got {a.dtype}")
    if not 2 <= a.ndim <= 2 + v.MAX_SPATIAL_DIMS:
        raise ValueError(f"{name} must have shape (C_out, C_in, *kernel), got {a.shape}")


def solve_deconv(
    impl: ModuleType,
    g_tilde: Any,
    factor: Any,
    side: str,
    kernel_size: int | tuple[int, ...],
    init: Any | None = None,
) -> Any:
    """Least-squares X with G~ = factor ⊛ X (side "outer") or G~ = X ⊛ factor (side "inner").

    ``impl`` is a backend module (its kernels and device do the work). G~ (C2, C0, *Kt) has the
    effective size Kt = kernel_size + K_factor − 1. Outer: factor F2 (C2, C1, *K2) gives
    X (C1, C0, *kernel_size); inner: factor F1 (C1, C0, *K1) gives X (C2, C1, *kernel_size).
    Returns the solution nearest to ``init`` (minimum norm when None) in the dtype of G~ and
    the factor, as an array of the backend's type.
    """
    if side not in SIDES:
        raise ValueError(f"side must be one of {SIDES}, got {side!r}")
    _check_array(g_tilde, "g_tilde")
    _check_array(factor, "factor")
    if g_tilde.ndim != factor.ndim:
        raise ValueError(
            f"g_tilde and factor must have the same number of dimensions, "
            f"got {g_tilde.shape} and {factor.shape}"
        )
    k = v.kernel_tuple(kernel_size, g_tilde.ndim - 2, "kernel_size")
    kt = tuple(a + b - 1 for a, b in zip(k, factor.shape[2:]))
    if tuple(g_tilde.shape[2:]) != kt:
        raise ValueError(
            f"g_tilde must have the effective spatial size {kt} (kernel_size + factor's kernel "
            f"- 1), got {tuple(g_tilde.shape[2:])}"
        )
    if side == "outer":
        if factor.shape[0] != g_tilde.shape[0]:
            raise ValueError(
                f"factor has {factor.shape[0]} output channels but g_tilde has "
                f"{g_tilde.shape[0]}; they must match"
            )
        x_shape = (factor.shape[1], g_tilde.shape[1], *k)
    else:
        if factor.shape[1] != g_tilde.shape[1]:
            raise ValueError(
                f"factor has {factor.shape[1]} input channels but g_tilde has "
                f"{g_tilde.shape[1]}; they must match"
            )
        x_shape = (g_tilde.shape[0], factor.shape[0], *k)
    if init is not None:
        _check_array(init, "init")
        if tuple(init.shape) != x_shape:
            raise ValueError(f"init must have shape {x_shape}, got {tuple(init.shape)}")
    if np.dtype(np.float64) not in impl.DTYPES:
        raise TypeError(f"backend {impl.__name__} must support float64 for the solver's kernels")
    c_out, c_mid = (factor.shape[0], factor.shape[1])
    if side == "inner":
        c_out, c_mid = factor.shape[1], factor.shape[0]
    c_in = g_tilde.shape[1] if side == "outer" else g_tilde.shape[0]
    check_deconv(c_out, c_mid, c_in, factor.shape[2:], k, "deconvolution")
    la = _linalg_for(impl, g_tilde)
    xp = la.xp
    out_dtype = np.result_type(g_tilde.dtype, factor.dtype)
    g64, e_g = normalise(xp.asarray(g_tilde, dtype=np.float64))
    f64, e_f = normalise(xp.asarray(factor, dtype=np.float64))
    e_x = e_g - e_f  # X = 2^e_x·Xn
    x0 = None
    if init is not None:
        x0 = xp.asarray(init, dtype=np.float64)
        if exponent(x0) - e_x > np.finfo(np.float64).maxexp:
            raise ValueError(
                "init is too large for the scale of G and the factor: init·|factor|/|G| "
                "overflows float64"
            )
        x0 = xp.ldexp(x0, -e_x)
    if side == "inner":
        g64, f64 = xp.swapaxes(g64, 0, 1), xp.swapaxes(f64, 0, 1)
        x0 = None if x0 is None else xp.swapaxes(x0, 0, 1)
    x = _solve_outer(impl, la, g64, f64, k, x0, _TARGET[np.dtype(out_dtype)])
    if side == "inner":
        x = xp.swapaxes(x, 0, 1)
    x = scale_back(x, e_x, out_dtype, f"deconvolution of G by the {side} factor")
    return xp.ascontiguousarray(x)


#: ``deconv_with(impl, g_tilde, factor, side, kernel_size, init)``: the call the morphing
#: algorithms make on a backend module.
deconv_with = solve_deconv
