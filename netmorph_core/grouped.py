"""Grouped convolutions: ⊛ and deconvolution for filters in PyTorch's grouped layout.

A layer with ``groups`` = g holds F (C_out, C_in/g, *K): output channels [j·C_out/g, (j+1)·C_out/g)
see only input channels [j·C_in/g, (j+1)·C_in/g). Group j is the ungrouped filter
F_j = F[j·C_out/g : (j+1)·C_out/g], so with F2 (C2, C1/g, *K2) and F1 (C1, C0/g, *K1) both of
``groups`` g, (F2 ⊛ F1)_j = F2_j ⊛ F1_j and the result G (C2, C0/g, *Kt) has ``groups`` g too.
Depthwise layers are the case C_in/g = 1.

Every routine works on the stacked view (g, C_out/g, C_in/g, *K) and treats the groups as one
batch axis, so all groups are solved by the same few array calls (no loop over groups):

- compose: one batched product per tap of F2 (``einsum`` over the group axis), or, for at most
  :data:`BLOCK_MAX_GROUPS` groups, the selected backend's kernel on the block-diagonal
  ungrouped layout (≤ g times the work, diagonal blocks kept);
- deconvolution: the explicit operators of all groups, (g, C2/g·|Kt|, C1/g·|k|), solved at once
  by a stacked SVD pseudo-inverse in float64 (the least-squares solution nearest ``init``,
  like ``lstsq``). The working set is checked before it is built.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from . import _validation as v
from ._arrays import namespace, to_host
from ._limits import check_compose
from ._memory import check_working_set
from ._scaling import exponent, ldexp_float, normalise, scale_back

#: Largest group count composed through a backend kernel on the block-diagonal layout.
BLOCK_MAX_GROUPS = 4


def check_groups(groups: object, name: str = "groups") -> int:
    """``groups`` must be a positive int."""
    return v.positive_int(groups, name)


def check_divisible(count: int, groups: int, name: str) -> None:
    """``count`` channels must split into ``groups`` equal groups (ValueError naming ``name``)."""
    if count % groups:
        raise ValueError(f"{name} ({count}) must be divisible by groups={groups}")


def stack(f: np.ndarray, groups: int, name: str) -> np.ndarray:
    """F (C_out, C_in/g, *K) as the view (g, C_out/g, C_in/g, *K)."""
    check_divisible(f.shape[0], groups, f"{name}'s output channels")
    return f.reshape(groups, f.shape[0] // groups, *f.shape[1:])


def unstack(fg: np.ndarray) -> np.ndarray:
    """(g, C_out/g, C_in/g, *K) back to PyTorch's grouped layout (C_out, C_in/g, *K)."""
    return fg.reshape(fg.shape[0] * fg.shape[1], *fg.shape[2:])


def chain_groups(f2: np.ndarray, f1: np.ndarray, groups: int) -> None:
    """F2 (C2, C1/g, *K2) consumes F1 (C1, C0/g, *K1) with ``groups`` g: C1 = g·(C1/g)."""
    check_divisible(f2.shape[0], groups, "F2's output channels")
    check_divisible(f1.shape[0], groups, "F1's output channels")
    if f2.shape[1] * groups != f1.shape[0]:
        raise ValueError(
            f"F2 has {f2.shape[1]} input channels per group, {f2.shape[1] * groups} in all with "
            f"groups={groups}, but F1 has {f1.shape[0]} output channels; they must match"
        )


def check_compose_grouped(f2: np.ndarray, f1: np.ndarray, groups: int, what: str) -> None:
    """Working set of :func:`compose_grouped` for F2 (C2, C1/g, *K2), F1 (C1, C0/g, *K1): the
    dense block-diagonal product for at most :data:`BLOCK_MAX_GROUPS` groups, else ``groups``
    products of the per-group sizes."""
    c2, c1, c0 = f2.shape[0] // groups, f2.shape[1], f1.shape[1]
    k2, k1 = f2.shape[2:], f1.shape[2:]
    if groups <= BLOCK_MAX_GROUPS:
        check_compose(c2 * groups, c1 * groups, c0 * groups, k2, k1, what)
    else:
        check_compose(c2, c1, c0, k2, k1, what, groups=groups)


def compose_stacked(f2g: np.ndarray, f1g: np.ndarray) -> np.ndarray:
    """F2_j ⊛ F1_j for every group j at once: (g, C2', C1', *K2), (g, C1', C0', *K1) →
    (g, C2', C0', *(K1 + K2 − 1)). One batched product per tap of F2 (NumPy or CuPy)."""
    xp = namespace(f2g)
    k2 = f2g.shape[3:]
    k1 = f1g.shape[3:]
    kt = tuple(a + b - 1 for a, b in zip(k1, k2))
    out = xp.zeros((f2g.shape[0], f2g.shape[1], f1g.shape[2], *kt), dtype=f2g.dtype)
    for tap in itertools.product(*(range(k) for k in k2)):
        window = tuple(slice(t, t + k) for t, k in zip(tap, k1))
        out[(slice(None),) * 3 + window] += xp.einsum(
            "gom,gmi...->goi...", f2g[(slice(None),) * 3 + tap], f1g
        )
    return out


def block_diagonal(fg: np.ndarray) -> np.ndarray:
    """(g, C_out', C_in', *K) as the ungrouped (g·C_out', g·C_in', *K) with zero off-blocks."""
    xp = namespace(fg)
    g, co, ci = fg.shape[:3]
    out = xp.zeros((g, co, g, ci, *fg.shape[3:]), dtype=fg.dtype)
    idx = xp.arange(g)
    out[idx, :, idx] = fg
    return out.reshape(g * co, g * ci, *fg.shape[3:])


def diagonal_blocks(f: np.ndarray, groups: int) -> np.ndarray:
    """The ``groups`` diagonal blocks of an ungrouped (g·C_out', g·C_in', *K) filter."""
    xp = namespace(f)
    co, ci = f.shape[0] // groups, f.shape[1] // groups
    blocks = f.reshape(groups, co, groups, ci, *f.shape[2:])
    idx = xp.arange(groups)
    return blocks[idx, :, idx]


def compose_grouped(f2: np.ndarray, f1: np.ndarray, groups: int, impl: object) -> np.ndarray:
    """F2 ⊛ F1 of grouped filters (validated, same dtype): (C2, C0/g, *(K1 + K2 − 1)).

    ``impl`` (a backend module) is used on the block-diagonal layout when ``groups`` ≤
    :data:`BLOCK_MAX_GROUPS`; otherwise the batched per-tap product runs on the array's own
    namespace."""
    f2g, f1g = stack(f2, groups, "F2"), stack(f1, groups, "F1")
    if groups <= BLOCK_MAX_GROUPS:
        dense = impl.compose(block_diagonal(f2g), block_diagonal(f1g))
        return unstack(diagonal_blocks(dense, groups))
    return unstack(compose_stacked(f2g, f1g))


def outer_operators(f2g: np.ndarray, k1: tuple[int, ...]) -> np.ndarray:
    """The operators A_j (C2'·|Kt|, C1'·|K1|) of X_j ↦ F2_j ⊛ X_j for every group, stacked:
    (g, C2'·|Kt|, C1'·|K1|), A_j[(o, t), (m, s)] = F2_j[o, m, t − s] (float64, host)."""
    g, c2, c1 = f2g.shape[:3]
    k2 = f2g.shape[3:]
    kt = tuple(a + b - 1 for a, b in zip(k1, k2))
    a = np.zeros((g, c2, *kt, c1, *k1), dtype=np.float64)
    f2_t = np.moveaxis(f2g.astype(np.float64), 2, -1)  # (g, C2', *K2, C1')
    for s in itertools.product(*(range(k) for k in k1)):
        window = tuple(slice(u, u + k) for u, k in zip(s, k2))
        a[(slice(None), slice(None), *window, slice(None), *s)] = f2_t
    return a.reshape(g, c2 * math.prod(kt), c1 * math.prod(k1))


def _pinv_solve(a: np.ndarray, b: np.ndarray, size: int | None = None) -> np.ndarray:
    """Minimum-norm least-squares solutions of the stacked systems A_j·X_j = B_j (lstsq's
    cut-off: singular values below size·ε·σ_max are dropped, size = max(m, n) unless given)."""
    u, s, vt = np.linalg.svd(a, full_matrices=False)
    size = max(a.shape[1:]) if size is None else size
    cut = size * np.finfo(np.float64).eps * s[..., :1]
    inv = np.where(s > cut, 1.0 / np.where(s > cut, s, 1.0), 0.0)
    return vt.swapaxes(-1, -2) @ (inv[..., None] * (u.swapaxes(-1, -2) @ b))


def swap_stacked(a: np.ndarray | None) -> np.ndarray | None:
    """Exchange the two channel axes of every group: (g, A, B, *K) -> (g, B, A, *K)."""
    return None if a is None else np.swapaxes(a, 1, 2)


def deconv_stacked(
    g_tilde_g: np.ndarray,
    f2g: np.ndarray,
    k1: tuple[int, ...],
    init_g: np.ndarray | None = None,
) -> np.ndarray:
    """Solve G~_j = F2_j ⊛ X_j for every group at once (float64, host arrays).

    G~ (g, C2', C0', *Kt) at the effective size, F2 (g, C2', C1', *K2); returns X
    (g, C1', C0', *k1), the least-squares solution nearest ``init_g`` (minimum norm if None).
    """
    g, c2, c1 = f2g.shape[:3]
    c0 = g_tilde_g.shape[2]
    rows = c2 * math.prod(g_tilde_g.shape[3:])
    cols = c1 * math.prod(k1)
    if all(k == 1 for k in f2g.shape[3:]):
        return _deconv_pointwise(g_tilde_g, f2g, init_g, max(rows, cols))
    check_working_set(
        8.0 * g * (3 * rows * cols + 2 * min(rows, cols) ** 2 + (rows + cols) * c0),
        f"the grouped deconvolution ({g} groups of {rows} x {cols} operators)",
    )
    a = outer_operators(f2g, k1)
    b = np.moveaxis(g_tilde_g.astype(np.float64).reshape(g, c2, c0, -1), 2, -1).reshape(g, -1, c0)
    if init_g is None:
        x = _pinv_solve(a, b)
    else:
        x0 = np.moveaxis(init_g.astype(np.float64), 2, -1).reshape(g, -1, c0)
        x = x0 + _pinv_solve(a, b - a @ x0)
    return np.moveaxis(x.reshape(g, c1, *k1, c0), -1, 2)


def _deconv_pointwise(
    g_tilde_g: np.ndarray, f2g: np.ndarray, init_g: np.ndarray | None, size: int
) -> np.ndarray:
    """:func:`deconv_stacked` for a 1×…×1 F2 (g, C2', C1'): its operator is F2_j ⊗ I over the
    taps, whose pseudo-inverse is pinv(F2_j) ⊗ I, so every tap is solved with one SVD of F2_j
    (C2' × C1') instead of one of the (C2'·|K|) × (C1'·|K|) operator; ``size``: the full
    operator's larger side, which sets the same singular-value cut-off."""
    g, c2, c1 = f2g.shape[:3]
    c0, taps = g_tilde_g.shape[2], math.prod(g_tilde_g.shape[3:])
    check_working_set(
        8.0 * g * (3 * c2 * c1 + 2 * min(c2, c1) ** 2 + 3 * (c2 + c1) * c0 * taps),
        f"the grouped deconvolution ({g} groups of {c2} x {c1} pointwise operators)",
    )
    a = f2g.astype(np.float64).reshape(g, c2, c1)
    b = g_tilde_g.astype(np.float64).reshape(g, c2, c0 * taps)
    if init_g is None:
        x = _pinv_solve(a, b, size)
    else:
        x0 = init_g.astype(np.float64).reshape(g, c1, c0 * taps)
        x = x0 + _pinv_solve(a, b - a @ x0, size)
    return x.reshape(g, c1, c0, *g_tilde_g.shape[3:])


def deconv_grouped(
    g_tilde: np.ndarray,
    factor: np.ndarray,
    side: str,
    k: tuple[int, ...],
    init: np.ndarray | None,
    groups: int,
) -> np.ndarray:
    """Grouped deconvolution in PyTorch's grouped layout (solved in float64 on the host,
    returned in the inputs' dtype).

    ``side`` "outer": G~ = F2 ⊛ X, X (C1, C0/g, *k); "inner": G~ = X ⊛ F1, X (C2, C1/g, *k),
    through (X_j ⊛ F1_j)ᵀ = F1_jᵀ ⊛ X_jᵀ with ᵀ the swap of a group's two channel axes.
    Solved on power-of-two-normalised G~ and factor (``init`` scaled by their ratio) and
    scaled back, as :func:`netmorph_core.solver.solve_deconv`.
    """
    out_dtype = np.result_type(g_tilde.dtype, factor.dtype)
    gn, e_g = normalise(to_host(g_tilde).astype(np.float64))
    fn, e_f = normalise(to_host(factor).astype(np.float64))
    e_x = e_g - e_f  # X = 2^e_x·Xn
    gt, fg = stack(gn, groups, "G"), stack(fn, groups, side)
    init_g = None
    if init is not None:
        x0 = to_host(init).astype(np.float64)
        if exponent(x0) - e_x > np.finfo(np.float64).maxexp:
            raise ValueError(
                "init is too large for the scale of G and the factor: init·|factor|/|G| "
                "overflows float64"
            )
        init_g = stack(np.ldexp(x0, -e_x), groups, "init")
    if side == "outer":
        x = unstack(deconv_stacked(gt, fg, k, init_g))
    else:
        x = deconv_stacked(swap_stacked(gt), swap_stacked(fg), k, swap_stacked(init_g))
        x = unstack(np.ascontiguousarray(swap_stacked(x)))
    return scale_back(x, e_x, out_dtype, f"grouped deconvolution of G by the {side} factor")


def relative_residual_grouped(g_tilde: np.ndarray, filters: list[np.ndarray], groups: int) -> float:
    """‖F_last ⊛ … ⊛ F_first − G~‖ / ‖G~‖ of grouped filters in float64 (absolute if G~ = 0),
    on power-of-two-normalised inputs as :func:`netmorph_core.reference.relative_residual_ref`
    (no overflow or underflow at any magnitude)."""
    gn, eg = normalise(g_tilde.astype(np.float64))
    first, d = normalise(filters[0].astype(np.float64))
    out = stack(first, groups, "F")
    for f in filters[1:]:
        fn, e = normalise(f.astype(np.float64))
        out = compose_stacked(stack(fn, groups, "F"), out)
        d += e
    d -= eg  # product − G~ = 2^eg·(2^d·out − gn)
    shift = max(d, 0)  # scale the difference so that its larger term is O(1)
    diff = np.ldexp(unstack(out), d - shift) - np.ldexp(gn, -shift)
    err = ldexp_float(float(np.linalg.norm(diff)), shift)
    scale = float(np.linalg.norm(gn))
    return err / scale if scale > 0 else ldexp_float(err, eg)
