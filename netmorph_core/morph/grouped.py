"""Morphing grouped and depthwise layers (PyTorch's grouped layout, see :mod:`..grouped`).

A layer G (C2, C0/g, *K) with ``groups`` g is g independent layers G_j, so it morphs into
factors with the same ``groups``: F1 (w, C0/g, *K1) and F2 (C2, w/g, *K2), (F2 ⊛ F1)_j = G~_j.

- ``method="general"`` (depth): Algorithm 1 on all groups at once — every solve is one stacked
  least-squares call over the groups (:func:`netmorph_core.grouped.deconv_stacked`), the
  residual is measured over all groups together; a depthwise layer is C single-channel
  problems in one call. In the bilinear regime per group (:func:`.bilinear.use_bilinear`) two
  solves are followed by Levenberg–Marquardt on each group not yet exact (a loop over those
  groups, each a tiny problem); where the count rules out a dense exact pair per group the
  morph refuses before any work (:func:`.solvability.check_dense_count`). The start is
  orthogonal per group and the exact pair is re-gauged per group
  (:func:`.conditioning.balanced_groups`, as the ungrouped morph's ``balanced_pair``), so a
  float32 child rounds like the parent; with one channel per group (depthwise, width = C)
  the 1×1 factor is ±2^k and the other G_j·2^−k, exact in G's dtype.
- ``"practical"`` (depth and subnet): Algorithm 2 on all groups at once, one stacked solve per
  candidate (:mod:`netmorph_core.morph.grouped_practical`).
- ``"stable"`` and the general subnet morph: the ungrouped algorithm per group (a loop over
  the g groups; these searches differ from group to group).
- :func:`separable_depth`: G into a depthwise F1 (C0·m, 1, *K) followed by a pointwise F2
  (C2, C0·m/g, 1…) with ``groups`` g: per input channel i the kernels G[:, i] (C2/g × |K|)
  are the product F2_i (C2/g × m) · F1_i (m × |K|), exact when m ≥ min(C2/g, |K|): F1_i has
  random orthonormal columns (m ≥ |K|) or is Q_i·G_i with Q_i's columns orthonormal
  (m ≥ C2/g), and F2_i = G_i·F1_i⁺, all channels in one stacked solve. Either way one factor
  has equal singular values (it does not amplify the other's rounding); m = 1 takes the
  power-of-two gauge (:func:`.conditioning.power_of_two_gauge`).
- Width: :func:`netmorph_core.morph.width.grouped_width`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from .. import _validation as v
from .._errors import typed_errors
from .._memory import check_working_set
from ..grouped import (
    check_divisible,
    check_groups,
    compose_stacked,
    deconv_stacked,
    relative_residual_grouped,
    stack,
    swap_stacked,
    unstack,
)
from ..reference import pad_centered
from .augmented import prefer_augmented
from .bilinear import WARMUP_SOLVES, solve_bilinear, use_bilinear
from .chain import chain_effective_size, check_layers
from .common import Options, check_options
from .conditioning import balanced_groups, power_of_two_balance, power_of_two_gauge
from .grouped_practical import (
    orthogonal_stacked,
    practical_chain_stacked,
    random_pair_stacked,
)
from .pair import general_order
from .result import MorphResult
from .solvability import check_dense_count, layer_kernel, solvability


def _result(
    g: np.ndarray,
    g_tilde: np.ndarray,
    filters: Sequence[np.ndarray],
    iterations: int,
    groups: int,
    method: str,
    tol: float,
    allow_approximate: bool,
) -> MorphResult:
    """Cast to G's dtype, measure the grouped residual, raise when it exceeds ``tol``."""
    out = tuple(np.ascontiguousarray(f, dtype=g.dtype) for f in filters)
    residual = relative_residual_grouped(g_tilde, list(out), groups)
    if residual > tol and not allow_approximate:
        raise ValueError(
            f"the grouped {method} morph (groups={groups}) has relative residual "
            f"{residual:.3g} > tol={tol}; use wider layers (more channels per group), "
            "method='practical', or allow_approximate=True"
        )
    return MorphResult(
        filters=out,
        residual=residual,
        iterations=iterations,
        exact=residual <= tol,
        method=method,
        kernel_sizes=tuple(tuple(f.shape[2:]) for f in out),
    )


def grouped_depth(
    g: np.ndarray,
    width: int,
    k1: object,
    k2: object,
    *,
    groups: int,
    method: str,
    seed: object,
    max_iter: int,
    tol: float | None,
    allow_approximate: bool,
    backend: str,
    per_group: Callable[..., MorphResult],
) -> MorphResult:
    """:func:`netmorph_core.morph.depth.morph_depth` for a grouped G (C2, C0/g, *K):
    F1 (width, C0/g, *k1), F2 (C2, width/g, *k2), both with ``groups``. ``per_group`` is the
    ungrouped depth morph, run group by group for the stable method and where each group takes
    the identity-augmented pair (no one-sided solve exact per group). The general method's
    pair is balanced per group (:func:`.conditioning.balanced_groups`) and rescaled by powers
    of two to standard deviations within a factor 2 of each other
    (:func:`.conditioning.power_of_two_balance`)."""

    g = v.as_filter(g, "G")
    groups = check_groups(groups)
    width = v.positive_int(width, "width")
    check_divisible(width, groups, "width")
    check_divisible(g.shape[0], groups, "G's output channels")
    ndim = g.ndim - 2
    kernel1 = layer_kernel(k1, ndim, "k1")
    kernel2 = layer_kernel(k2, ndim, "k2")
    kt = v.effective_size(g.shape[2:], kernel2, kernel1, "k1, k2")
    opts = check_options(g, method, seed, max_iter, tol, allow_approximate, backend)
    g_tilde = pad_centered(g.astype(np.float64), kt)
    c2g, c0g, c1g = g.shape[0] // groups, g.shape[1], width // groups
    info = solvability((c2g, c0g, *g.shape[2:]), c1g, kernel1, kernel2)
    if opts.method == "practical":
        if not info.exact_practical and not opts.allow_approximate:
            raise ValueError(
                f"no exact practical depth morph exists (groups={groups}, per group):\n"
                f"{info.explain()}"
            )
        stacked, iterations = practical_chain_stacked(
            stack(g, groups, "G"), kt, [c1g, c2g], [kernel1, kernel2], opts
        )
        filters = [unstack(f) for f in stacked]
        return _result(
            g, g_tilde, filters, iterations, groups, "practical", opts.tol, allow_approximate
        )
    if opts.method == "stable" or prefer_augmented(info):
        parts = [
            per_group(
                gj,
                width // groups,
                kernel1,
                kernel2,
                method=opts.method,
                seed=opts.rng,
                max_iter=max_iter,
                tol=tol,
                allow_approximate=allow_approximate,
                backend=backend,
            )
            for gj in np.split(g, groups)
        ]
        filters = [np.concatenate([p.filters[i] for p in parts]) for i in range(2)]
        iterations = sum(p.iterations for p in parts)
        return _result(
            g, g_tilde, filters, iterations, groups, opts.method, opts.tol, allow_approximate
        )

    if not opts.allow_approximate and tol is None:
        check_dense_count(info, f"general (groups={groups}, per group)")
    gt = stack(g_tilde, groups, "G")
    f1, f2 = random_pair_stacked((c1g, c0g, *kernel1), (c2g, c1g, *kernel2), gt, opts.rng)
    target = float(np.linalg.norm(gt))
    ratios = [
        c1g * math.prod(kernel1) / (c2g * math.prod(kt)),
        c1g * math.prod(kernel2) / (c0g * math.prod(kt)),
    ]
    order = general_order([info.f1_last_exact, info.f2_last_exact], ratios)
    bilinear = use_bilinear(info)
    solves = min(opts.max_iter, WARMUP_SOLVES) if bilinear else opts.max_iter
    iterations = 0
    while True:
        if order[iterations % 2] == 0:
            f1 = deconv_stacked(gt, f2, kernel1, f1)
        else:
            f2 = swap_stacked(
                deconv_stacked(swap_stacked(gt), swap_stacked(f1), kernel2, swap_stacked(f2))
            )
        iterations += 1
        diff = float(np.linalg.norm(compose_stacked(f2, f1) - gt))
        residual = diff / target if target > 0 else diff
        if residual <= opts.stop_tol or iterations >= solves:
            break
    if bilinear and residual > opts.stop_tol and iterations < opts.max_iter:
        f1, f2, steps = _bilinear_groups(gt, f1, f2, opts, opts.max_iter - iterations)
        iterations += steps
        diff = float(np.linalg.norm(compose_stacked(f2, f1) - gt))
        residual = diff / target if target > 0 else diff
    if residual > opts.stop_tol and not opts.allow_approximate:
        raise ValueError(
            f"the grouped general depth morph (groups={groups}) did not reach tol={opts.tol} "
            f"(relative residual {residual:.3g} after {iterations} solves); per group:\n"
            f"{info.explain()}"
        )
    f1, f2 = balanced_groups(f1, np.ascontiguousarray(f2), opts.rng)
    filters = power_of_two_balance([unstack(f1), unstack(f2)])
    return _result(g, g_tilde, filters, iterations, groups, "general", opts.tol, allow_approximate)


def _bilinear_groups(
    gt: np.ndarray, f1: np.ndarray, f2: np.ndarray, opts: Options, max_steps: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """Levenberg–Marquardt (:func:`netmorph_core.morph.bilinear.solve_bilinear`) on each group
    of the stacked G~ (g, C2', C0', *Kt) whose residual still exceeds ``opts.stop_tol``, from
    its alternation iterate (F1 (g, …), F2 (g, …)); a per-group problem has at most
    :data:`netmorph_core.morph.bilinear.EXPLICIT_ROWS` equations. Returns F1, F2 and the
    largest number of steps any group took."""
    f1, f2 = f1.copy(), f2.copy()
    scale = np.sqrt(np.sum(np.square(gt.reshape(gt.shape[0], -1)), axis=1))
    err = np.sqrt(np.sum(np.square((compose_stacked(f2, f1) - gt).reshape(gt.shape[0], -1)), 1))
    open_groups = np.flatnonzero(err > opts.stop_tol * np.where(scale > 0, scale, 1.0))
    most = 0
    for j in open_groups:
        f1[j], f2[j], steps, _ = solve_bilinear(
            opts.backend, np.ascontiguousarray(gt[j]), f1[j], f2[j], opts.stop_tol, max_steps
        )
        most = max(most, steps)
    return f1, f2, most


def grouped_subnet(
    g: np.ndarray,
    layers: Sequence[tuple[int | None, object]],
    *,
    groups: int,
    method: str,
    seed: object,
    max_iter: int,
    tol: float | None,
    allow_approximate: bool,
    backend: str,
    per_group: Callable[..., MorphResult],
) -> MorphResult:
    """:func:`netmorph_core.morph.subnet.morph_subnet` for a grouped G: every layer keeps
    ``groups`` (each width divisible by it); the practical method on all groups at once, the
    others group by group with the ungrouped subnet morph ``per_group``."""

    g = v.as_filter(g, "G")
    groups = check_groups(groups)
    check_divisible(g.shape[0], groups, "G's output channels")
    widths, kernels = check_layers(g, layers)
    for p, w in enumerate(widths):
        check_divisible(w, groups, f"layers[{p}]'s width")
    opts = check_options(g, method, seed, max_iter, tol, allow_approximate, backend)
    g_tilde = pad_centered(g.astype(np.float64), chain_effective_size(g.shape[2:], kernels))
    if opts.method == "practical" and len(widths) > 1:
        stacked, iterations = practical_chain_stacked(
            stack(g, groups, "G"), g_tilde.shape[2:], [w // groups for w in widths], kernels, opts
        )
        filters = [unstack(f) for f in stacked]
        return _result(
            g, g_tilde, filters, iterations, groups, "practical", opts.tol, allow_approximate
        )
    layer_widths = [(w // groups, k) for w, k in zip(widths, kernels)]
    parts = [
        per_group(
            gj,
            layer_widths,
            method=method,
            seed=opts.rng,
            max_iter=max_iter,
            tol=tol,
            allow_approximate=allow_approximate,
            backend=backend,
        )
        for gj in np.split(g, groups)
    ]
    filters = [np.concatenate([p.filters[i] for p in parts]) for i in range(len(widths))]
    iterations = sum(p.iterations for p in parts)
    return _result(g, g_tilde, filters, iterations, groups, method, opts.tol, allow_approximate)


@typed_errors("separable_depth")
def separable_depth(
    g: np.ndarray,
    *,
    groups: int = 1,
    multiplier: int | None = None,
    seed: object = None,
    tol: float | None = None,
) -> MorphResult:
    """G (C2, C0/g, *K) with ``groups`` g into a depthwise F1 (C0·m, 1, *K) (groups C0) then a
    pointwise F2 (C2, C0·m/g, 1, …) (groups g): F2 ⊛ F1 = G exactly.

    ``multiplier`` m (default min(C2/g, |K|)) must be ≥ min(C2/g, |K|) (ValueError otherwise)
    and C0·m divisible by g. Returns filters (F1, F2) with G's dtype."""
    g = v.as_filter(g, "G")
    groups = check_groups(groups)
    check_divisible(g.shape[0], groups, "G's output channels")
    ndim = g.ndim - 2
    if ndim == 0:
        raise ValueError("G must be a convolution kernel for a depthwise + pointwise morph")
    c2g, c0g = g.shape[0] // groups, g.shape[1]
    taps = math.prod(g.shape[2:])
    need = min(c2g, taps)
    m = need if multiplier is None else v.positive_int(multiplier, "multiplier")
    if m < need:
        raise ValueError(
            f"multiplier must be at least min(C_out/groups, kernel taps) = {need} for an exact "
            f"depthwise + pointwise morph, got {m}"
        )
    opts = check_options(g, "general", seed, 1, tol, False, "auto")
    c0 = c0g * groups
    # float64 F1, its pseudo-inverse, F2, their balanced, output-dtype and checking copies,
    # and G's float64 copies
    check_working_set(
        8 * (6 * c0 * m * (taps + c2g) + 3 * g.size),
        f"separable_depth with multiplier={m} (F1 {c0 * m}×{taps}, F2 {g.shape[0]}×{c0g * m})",
    )
    # Per input channel i (global): G_i (C2/g, |K|) = F2_i (C2/g, m) · F1_i (m, |K|).
    gi = g.astype(np.float64).reshape(groups, c2g, c0g, taps).transpose(0, 2, 1, 3)
    flat = gi.reshape(c0, c2g, taps)
    if m >= taps:  # orthonormal columns span every kernel
        f1 = orthogonal_stacked(c0, (m, taps), opts.rng)
    else:  # m ≥ C2/g: orthonormal mixtures of G_i's own rows span them
        f1 = orthogonal_stacked(c0, (m, c2g), opts.rng) @ flat
    f2 = flat @ np.linalg.pinv(f1)  # (C0, C2/g, m)
    if m == 1:  # one channel per input channel: a power-of-two gauge, both factors exact
        f1, f2 = power_of_two_gauge(f1, f2)
    w1 = f1.reshape(c0 * m, 1, *g.shape[2:])
    f2 = f2.reshape(groups, c0g, c2g, m)
    w2 = f2.transpose(0, 2, 1, 3).reshape(g.shape[0], c0g * m, *(1,) * ndim)
    out = tuple(np.ascontiguousarray(f, dtype=g.dtype) for f in power_of_two_balance([w1, w2]))
    # 1×1 F2 after depthwise F1: G[o, i] = Σ_r F2[o, i·m + r]·F1[i·m + r], per group.
    f1_out = out[0].astype(np.float64).reshape(groups, c0g, m, taps)
    f2_out = out[1].astype(np.float64).reshape(groups, c2g, c0g, m).transpose(0, 2, 1, 3)
    diff = float(np.linalg.norm(f2_out @ f1_out - gi))
    scale = float(np.linalg.norm(gi))
    residual = diff / scale if scale > 0 else diff
    if residual > opts.tol:
        raise ValueError(
            f"the depthwise + pointwise morph has relative residual {residual:.3g} > tol={opts.tol}"
        )
    return MorphResult(out, residual, 1, True, "separable", tuple(f.shape[2:] for f in out))
