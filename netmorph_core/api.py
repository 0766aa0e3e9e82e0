"""The thin public API of the numerical core: ⊛, deconvolution and the residual.

Inputs are validated here (typed errors before any kernel runs); the work is done by the
backend chosen with ``backend=`` (see :mod:`netmorph_core.backends`). NumPy arrays run on the
CPU backends, CuPy arrays on the CUDA backends; torch tensors are viewed without copies (CPU
tensors as NumPy, CUDA tensors as CuPy through DLPack) and results come back as tensors.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from . import _validation as v
from ._arrays import namespace, to_host, unify
from ._errors import typed_errors
from ._limits import check_compose, check_deconv
from ._scaling import SAFE_EXPONENT, prescale, scale_back
from .backends import select_backend, try_backend
from .grouped import (
    chain_groups,
    check_compose_grouped,
    check_divisible,
    check_groups,
    compose_grouped,
    deconv_grouped,
    relative_residual_grouped,
)
from .reference import pad_centered, relative_residual_ref
from .solver import solve_deconv


@typed_errors("compose")
def compose(
    f2: np.ndarray, f1: np.ndarray, *, groups: int = 1, backend: str = "auto"
) -> np.ndarray:
    """The morphism operator F2 ⊛ F1: the single kernel of "apply F1, then F2".

    F2 (C2, C1, *K2), F1 (C1, C0, *K1) -> G (C2, C0, *(K1 + K2 - 1)), with
    G[o, i] = Σ_m full_convolution(F2[o, m], F1[m, i]). 2-D inputs are linear layers.
    ``groups`` = g: both filters grouped (F2 (C2, C1/g, *K2), F1 (C1, C0/g, *K1)); group j of
    G (C2, C0/g, *Kt) is F2_j ⊛ F1_j (see :mod:`netmorph_core.grouped`).
    """
    fast = _compose_native(f2, f1, groups, backend)
    if fast is not None:
        return fast
    groups = check_groups(groups)
    arrays, restore = unify({"F2": f2, "F1": f1})
    # finiteness is checked by prescale, in the two reductions that also give max|F|
    f2 = v.as_filter(arrays["F2"], "F2", finite=False)
    f1 = v.as_filter(arrays["F1"], "F1", finite=False)
    v.same_spatial_rank(f2, "F2", f1, "F1")
    if groups == 1:
        v.chain_channels(f2, "F2", f1, "F1")
    else:
        chain_groups(f2, f1, groups)
    f2, e2 = prescale(f2, "F2")
    f1, e1 = prescale(f1, "F1")
    if groups == 1:
        check_compose(*f2.shape[:2], f1.shape[1], f2.shape[2:], f1.shape[2:], "compose(F2, F1)")
    else:
        check_compose_grouped(f2, f1, groups, "compose(F2, F1)")
    dtype = v.result_dtype(f2, f1)
    impl = select_backend(backend, dtype, f2, f1)
    f2, f1 = f2.astype(dtype, copy=False), f1.astype(dtype, copy=False)
    xp = namespace(f2)
    if groups == 1:
        out = xp.asarray(impl.compose(f2, f1))
    else:
        out = xp.asarray(compose_grouped(f2, f1, groups, impl))
    # the result is scaled in place unless the backend handed back memory it shares with F
    owned = not (xp.may_share_memory(out, f2) or xp.may_share_memory(out, f1))
    return restore(scale_back(out, e2 + e1, dtype, "compose(F2, F1)", owned=owned))


#: dtypes of the native fast path of :func:`compose` (native byte order).
_NATIVE_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _compose_native(f2: object, f1: object, groups: object, backend: object) -> np.ndarray | None:
    """:func:`compose`'s common case in one native call: plain NumPy arrays of one dtype
    (float32 or float64, any strides), ``groups=1``, ``backend`` "auto" or "native" with the
    native backend available, both inputs finite with max|F| in [2^−(SAFE_EXPONENT+1),
    2^SAFE_EXPONENT) (or zero). Finiteness and the largest exponents are read in one pass over
    each input inside the kernel's call, which then runs unscaled (exact: ``_scaling``).
    None when the general path must run: any other input (it is checked and refused there by
    name) or an input outside that range (scaled there)."""
    if type(f2) is not np.ndarray or type(f1) is not np.ndarray:
        return None
    if type(groups) is not int or groups != 1 or type(backend) is not str:
        return None
    dtype = f2.dtype
    if f1.dtype != dtype or dtype not in _NATIVE_DTYPES or backend not in ("auto", "native"):
        return None
    shape2, shape1 = f2.shape, f1.shape
    if len(shape1) != len(shape2) or not 2 <= len(shape2) <= 2 + v.MAX_SPATIAL_DIMS:
        return None
    if 0 in shape2 or 0 in shape1 or shape2[1] != shape1[0]:
        return None
    impl = try_backend("native")
    if impl is None:
        return None
    check_compose(shape2[0], shape2[1], shape1[1], shape2[2:], shape1[2:], "compose(F2, F1)")
    return impl.compose_in_range(f2, f1, SAFE_EXPONENT)


@typed_errors("deconv")
def deconv(
    g: np.ndarray,
    *,
    outer: np.ndarray | None = None,
    inner: np.ndarray | None = None,
    kernel_size: int | Sequence[int],
    init: np.ndarray | None = None,
    groups: int = 1,
    backend: str = "auto",
) -> np.ndarray:
    """Solve G~ = outer ⊛ X (given ``outer=F2``) or G~ = X ⊛ inner (given ``inner=F1``).

    G (C2, C0, *K) is zero-padded centred to the effective size Kt = K_X + K_factor - 1.
    Returns X with spatial size ``kernel_size``: (C1, C0, *k) for ``outer`` (C2, C1, *K2),
    (C2, C1, *k) for ``inner`` (C1, C0, *K1). Least squares when overdetermined; otherwise
    the exact solution nearest to ``init`` (minimum norm when ``init`` is None).
    ``groups`` = g: G, the factor and X are grouped filters (C_out, C_in/g, *K); every group is
    solved at once (:func:`netmorph_core.grouped.deconv_grouped`, float64 on the host).
    """
    groups = check_groups(groups)
    if (outer is None) == (inner is None):
        raise ValueError("deconv takes exactly one of outer= or inner=")
    side = "outer" if outer is not None else "inner"
    arrays, restore = unify({"G": g, side: outer if outer is not None else inner, "init": init})
    g = v.as_filter(arrays["G"], "G")
    factor = v.as_filter(arrays[side], side)
    init = arrays["init"]
    v.same_spatial_rank(g, "G", factor, side)
    ndim = g.ndim - 2
    k = v.kernel_tuple(kernel_size, ndim, "kernel_size")
    check_divisible(g.shape[0], groups, "G's output channels")
    check_divisible(factor.shape[0], groups, f"{side}'s output channels")
    if side == "outer":
        if factor.shape[0] != g.shape[0]:
            raise ValueError(
                f"outer has {factor.shape[0]} output channels but G has {g.shape[0]}; "
                "they must match"
            )
        x_shape = (factor.shape[1] * groups, g.shape[1], *k)
    else:
        if factor.shape[1] != g.shape[1]:
            raise ValueError(
                f"inner has {factor.shape[1]} input channels but G has {g.shape[1]}; "
                "they must match"
            )
        x_shape = (g.shape[0], factor.shape[0] // groups, *k)
    kt = v.effective_size(g.shape[2:], factor.shape[2:], k, "kernel_size")
    what = f"deconv with kernel_size={k} and {side} of shape {tuple(factor.shape)}"
    # per group: G_j (C2/g, C0/g), outer F2_j (C2/g, C1/g), inner F1_j (C1/g, C0/g)
    if side == "outer":
        c_out, c_mid, c_in = g.shape[0] // groups, factor.shape[1], g.shape[1]
    else:
        c_out, c_mid, c_in = g.shape[1], factor.shape[0] // groups, g.shape[0] // groups
    check_deconv(c_out, c_mid, c_in, factor.shape[2:], k, what)
    if init is not None:
        init = v.as_filter(init, "init")
        if init.shape != x_shape:
            raise ValueError(f"init must have shape {x_shape}, got {init.shape}")
    dtype = v.result_dtype(g, factor)
    impl = select_backend(backend, dtype, g, factor)
    xp = namespace(g)
    pads = [(0, 0), (0, 0), *(((t - s) // 2,) * 2 for s, t in zip(g.shape[2:], kt))]
    g_tilde = xp.pad(g, pads)
    if groups == 1:
        x = solve_deconv(impl, g_tilde, factor, side, k, init)
    else:
        x = deconv_grouped(g_tilde, factor, side, k, init, groups)
    return restore(xp.asarray(x).astype(dtype, copy=False))


@typed_errors("residual")
def residual(g: np.ndarray, f2: np.ndarray, f1: np.ndarray, *, groups: int = 1) -> float:
    """Relative residual ‖F2 ⊛ F1 − G~‖ / ‖G~‖ (float64), G~ = G padded to K1 + K2 - 1;
    ``groups`` as in :func:`compose`.

    Computed on power-of-two-normalised inputs: no overflow or underflow at any magnitude
    (the absolute ‖F2 ⊛ F1‖ when G is zero)."""
    groups = check_groups(groups)
    arrays, _ = unify({"G": g, "F2": f2, "F1": f1})
    g, f2, f1 = (to_host(v.as_filter(arrays[k], k)) for k in ("G", "F2", "F1"))
    v.same_spatial_rank(f2, "F2", f1, "F1")
    v.same_spatial_rank(g, "G", f1, "F1")
    if groups == 1:
        v.chain_channels(f2, "F2", f1, "F1")
    else:
        chain_groups(f2, f1, groups)
    if g.shape[:2] != (f2.shape[0], f1.shape[1]):
        raise ValueError(
            f"G must have channels {(f2.shape[0], f1.shape[1])} (C2, C0) to match F2 ⊛ F1, "
            f"got {g.shape[:2]}"
        )
    kt = v.effective_size(g.shape[2:], f2.shape[2:], f1.shape[2:], "F2, F1")
    if groups == 1:
        check_compose(*f2.shape[:2], f1.shape[1], f2.shape[2:], f1.shape[2:], "residual")
        return relative_residual_ref(pad_centered(g.astype(np.float64), kt), f2, f1)
    check_compose_grouped(f2, f1, groups, "residual")
    return relative_residual_grouped(pad_centered(g.astype(np.float64), kt), [f1, f2], groups)
