"""Depth morphing of a Conv/Linear layer inside a model (NetMorph §3.1–3.3, DESIGN.md §3).

The layer G (padding p, stride s, dilation d, kernel K) becomes

    F1 (K1, padding p + d·(K1 + K2 − 1 − K)/2, the parent's padding mode)
    → [BatchNorm, identity in eval mode] → PActivation(a = 1) → F2 (K2, padding 0)

with F2 ⊛ F1 = G~ solved by :func:`netmorph_core.morph.depth.morph_depth`. The stride goes to
F2, or to F1 when F2 is 1×1 (cheaper, still exact); the dilation to both. All padding is applied
before F1, so the zero ring of G~ only meets the outermost padded values: exact for every
padding mode. Reflect and circular padding bound the input size, so for them F1 keeps the
parent's padding p in its mode and the growth d·(K1 + K2 − 1 − K)/2 is zeros (a padding module
of the mode before F1): the child accepts exactly the inputs the parent accepts. b1 = 0 and
b2 = b (b2 = b − Σ F2·b1 in general). With ``batch_norm`` the new BatchNorm acts on the
channel axis: axis 1 after a conv, the last axis after a Linear layer (any input rank). A
dynamic "same" padding conv keeps its rule as a DynamicSamePad in front of F1
(:mod:`.samepad`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from .. import _validation as v
from ..morph.depth import METHODS, morph_depth
from ..morph.grouped import separable_depth
from .activation import make_activation
from .budget import hidden_budget
from .pipeline import Request, run
from .report import MorphReport, Outcome, ParamSource
from .samepad import split_same_padding
from .streamed import Region
from .support import check_new_entries, layer_entries
from .surgery import (
    CONV_TYPES,
    ConvGeometry,
    find_layer,
    identity_batch_norm,
    linear_equivalent,
    make_layer,
    replace_module,
    to_numpy64,
    to_tensor,
)


def check_method(method: object) -> str:
    """``method`` must be "general", "practical" or "stable"."""
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return method


def build_chain(
    geo: ConvGeometry,
    filters: Sequence[np.ndarray],
    bias: torch.Tensor | None,
    like: torch.Tensor,
    *,
    activation: object,
    batch_norm: bool,
    groups: Sequence[int] | None = None,
) -> nn.Sequential:
    """The layers F_0 … F_P of ``filters`` (data-flow order) in place of a layer of geometry
    ``geo``: all padding on F_0, the stride on the last layer with a kernel > 1 (every layer
    after it is pointwise, so subsampling commutes), dilation wherever a kernel is > 1; between
    layers [identity BN] → PActivation(a = 1). The last layer gets ``bias``, the others a zero
    bias when the parent has one. Weights take ``like``'s dtype and device. ``groups``: each
    layer's groups (default: the parent's, ``geo.groups``, for every layer).
    """
    groups = [geo.groups] * len(filters) if groups is None else list(groups)
    n = len(filters)
    kernels = [tuple(f.shape[2:]) for f in filters]
    kt = tuple(sum(ks) - (n - 1) for ks in zip(*kernels))
    j_stride = max((j for j, ks in enumerate(kernels) if any(k > 1 for k in ks)), default=0)
    inner, outer = geo.split_pads(kt) if geo.ndim else ((), ())
    modules: list[nn.Module] = []
    for j, f in enumerate(filters):
        weight = to_tensor(f, like)
        b = bias if j == n - 1 else None
        if geo.has_bias and j < n - 1:
            b = torch.zeros(f.shape[0], dtype=like.dtype, device=like.device)
        if geo.ndim == 0:
            modules.append(make_layer(weight, b))
        else:
            modules.append(
                make_layer(
                    weight,
                    b,
                    stride=geo.stride if j == j_stride else (1,) * geo.ndim,
                    dilation=tuple(d if k > 1 else 1 for d, k in zip(geo.dilation, kernels[j])),
                    pads=inner if j == 0 else ((0, 0),) * geo.ndim,
                    padding_mode=geo.padding_mode if j == 0 else "zeros",
                    zero_pads=outer if j == 0 else (),
                    groups=groups[j],
                )
            )
        if j < n - 1:
            if batch_norm:
                modules.append(identity_batch_norm(f.shape[0], geo.ndim, like))
            modules.append(make_activation(activation).to(device=like.device, dtype=like.dtype))
    return nn.Sequential(*modules)


def new_layer_sources(child: nn.Module, at: str, parent_has_bias: bool) -> dict[str, ParamSource]:
    """Every parameter of the new module ``at`` is new; biases join the parent bias's optimizer
    group (when it had one), everything else the parent weight's."""
    sources = {}
    for name, _ in child.get_submodule(at).named_parameters():
        role = "bias" if name.endswith("bias") and parent_has_bias else "weight"
        sources[f"{at}.{name}"] = ParamSource(None, f"{at}.{role}")
    return sources


def weight_counts(module: nn.Module, kinds: tuple[type[nn.Module], ...]) -> tuple[int, int]:
    """(non-zero, total) entries of the weights of the ``kinds`` layers inside ``module``."""
    weights = [m.weight for m in module.modules() if isinstance(m, kinds)]
    return sum(int(torch.count_nonzero(w)) for w in weights), sum(w.numel() for w in weights)


def check_flag(value: object, name: str) -> bool:
    """``value`` must be a bool."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return value


def parse_kernel_sizes(
    layer: nn.Module, kernel_size: object
) -> tuple[tuple[int, ...] | None, tuple[int, ...] | None]:
    """(K1, K2) for ``layer``: default (K, 1); None for a Linear layer."""
    if isinstance(layer, nn.Linear):
        if kernel_size is not None:
            raise ValueError(f"kernel_size must be None for a Linear layer, got {kernel_size!r}")
        return None, None
    ndim = len(layer.kernel_size)
    if kernel_size is None:
        return tuple(layer.kernel_size), (1,) * ndim
    pair = v.int_sequence(kernel_size)
    if pair is None or len(pair) != 2:
        raise TypeError(f"kernel_size must be a pair (k1, k2), got {kernel_size!r}")
    k1 = v.kernel_tuple(pair[0], ndim, "kernel_size[0]")
    k2 = v.kernel_tuple(pair[1], ndim, "kernel_size[1]")
    v.effective_size(tuple(layer.kernel_size), k1, k2, "kernel_size")
    return k1, k2


def replace_with_chain(
    child: nn.Module,
    at: str,
    solve: Callable[[np.ndarray], tuple[Sequence[np.ndarray], float, bool, int]],
    *,
    activation: object,
    batch_norm: bool,
    groups: Sequence[int] | None = None,
) -> Outcome:
    """Solve the filters of layer ``at`` of ``child`` with ``solve`` (G float64 → filters,
    residual, exact, iterations) and put the chain in its place."""
    layer = linear_equivalent(child.get_submodule(at))
    same, geo = split_same_padding(layer, ConvGeometry.of(layer))
    filters, residual, exact, iterations = solve(to_numpy64(layer.weight))
    chain = build_chain(
        geo,
        filters,
        None if layer.bias is None else layer.bias.detach().clone(),
        layer.weight,
        activation=activation,
        batch_norm=batch_norm,
        groups=groups,
    )
    if same is not None:
        chain = nn.Sequential(same, *chain)
    replace_module(child, at, chain)
    nonzero, total = weight_counts(chain, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))
    notes = []
    if batch_norm:
        notes.append(
            "the new BatchNorm is the identity in eval mode only; in train mode it normalises "
            "with batch statistics"
        )
    return Outcome(
        new_nonzero=nonzero,
        new_total=total,
        residual=residual,
        exact=exact,
        iterations=iterations,
        sources=new_layer_sources(child, at, geo.has_bias),
        notes=notes,
        train_exact=not batch_norm,
    )


def deepen(
    model: nn.Module,
    at: str,
    *,
    width: int | None = None,
    kernel_size: tuple[object, object] | None = None,
    activation: object = "prelu",
    method: str = "general",
    batch_norm: bool = False,
    probe: object = None,
    input_shape: Sequence[int] | None = None,
    tol: float | str | None = "auto",
    seed: int | np.random.Generator | None = None,
    separable: bool = False,
) -> tuple[nn.Module, MorphReport]:
    """Replace the Conv1d/2d/3d or Linear layer ``at`` by F1 → [BN] → PActivation → F2.

    ``width``: F1's output channels (default: a convolution's output channels; a Linear
    layer's min(in, out), which holds its weight exactly at any rank); ``kernel_size``:
    (K1, K2), each an int or a tuple per spatial dimension (default (K, 1); None for Linear),
    K1 + K2 − 1 − K even and ≥ 0. ``activation``: "prelu" (PActivation over relu) or any base
    :class:`PActivation` accepts. ``method``: "general" or "practical" (paper Algorithms 1, 2).
    ``batch_norm``: insert a BatchNorm that is the identity in eval mode. ``seed``: the
    solver's random start. ``probe`` (a tensor or tuple of model inputs) or ``input_shape``
    gives the inputs the report measures on (else inferred, see :mod:`.report`). ``tol``:
    "auto" raises MorphError unless the deviation is what the dtype explains (float64: ≤ 1e-8
    relative, or within 8× the parent's own float64 rounding where larger; lower precision:
    rounding within 8× the parent's own, see :mod:`.report`); a
    number bounds the float64 relative deviation; None never raises. Returns (child, report);
    ``model`` is not modified (also on error).

    A grouped conv (``groups`` g) deepens into F1, F2 with the same ``groups`` (``width``
    divisible by g). ``separable=True`` makes it (grouped or not) a depthwise F1
    (C_in·m, 1, *K, groups C_in) → pointwise F2 (1×1, groups g) instead, with ``width`` =
    C_in·m (default m = min(C_out/g, |K|), the least that is exact; ``kernel_size`` and
    ``method`` do not apply).
    """
    layer = find_layer(model, at, same_padding=True, grouped=True, replaced=True, chain=True)
    groups = layer.groups if isinstance(layer, CONV_TYPES) else 1
    out_channels = layer.weight.shape[0]
    check_flag(separable, "separable")
    make_activation(activation)
    check_method(method)
    check_flag(batch_norm, "batch_norm")
    if separable:
        return _deepen_separable(
            model, at, layer, width, activation, batch_norm, probe, input_shape, tol, seed
        )
    if width is None:  # a Linear layer's rank is at most min(in, out): no wider layer needed
        width = out_channels if isinstance(layer, CONV_TYPES) else min(layer.weight.shape)
    width = v.positive_int(width, "width")
    if width % groups:
        raise ValueError(f"width ({width}) must be divisible by {at!r}'s groups={groups}")
    k1, k2 = parse_kernel_sizes(layer, kernel_size)
    c_in = layer.weight.shape[1]  # per group
    kernels = [(), ()] if k1 is None else [k1, k2]
    kt = () if k1 is None else tuple(a + b - 1 for a, b in zip(k1, k2))
    entries = layer_entries(c_in * groups, [width, out_channels], kernels, groups)
    check_new_entries(
        entries + out_channels * c_in * math.prod(kt),
        layer.weight,
        f"deepen at={at!r} with width={width}, kernel_size={kernel_size!r}",
    )

    budget = hidden_budget("deepen", model, at, layer, [width], entries)

    def solve(g: np.ndarray) -> tuple[Sequence[np.ndarray], float, bool, int]:
        res = morph_depth(g, width, k1, k2, method=method, seed=seed, groups=groups)
        return res.filters, res.residual, res.exact, res.iterations

    def build(child: nn.Module) -> Outcome:
        return replace_with_chain(child, at, solve, activation=activation, batch_norm=batch_norm)

    return run(
        Request(
            "deepen",
            model,
            (at,),
            build,
            edits=(at,),
            aliases=True,
            regions=(Region(at, at),),
            same_padding=True,
            probe=probe,
            input_shape=input_shape,
            tol=tol,
            untie=True,
            budget=budget,
        )
    )


def _deepen_separable(
    model: nn.Module,
    at: str,
    layer: nn.Module,
    width: int | None,
    activation: object,
    batch_norm: bool,
    probe: object,
    input_shape: Sequence[int] | None,
    tol: float | str | None,
    seed: int | np.random.Generator | None,
) -> tuple[nn.Module, MorphReport]:
    """:func:`deepen` with ``separable=True``: depthwise F1 → pointwise F2 (same groups)."""
    if not isinstance(layer, CONV_TYPES):
        raise TypeError(f"at={at!r} is {type(layer).__name__}; separable=True needs a conv")
    c_in = layer.in_channels
    multiplier = None
    if width is not None:
        width = v.positive_int(width, "width")
        if width % c_in:
            raise ValueError(
                f"width ({width}) must be a multiple of {at!r}'s {c_in} input channels for a "
                "depthwise first layer"
            )
        multiplier = width // c_in
    groups = layer.groups
    need = min(layer.out_channels // groups, math.prod(layer.kernel_size))
    if multiplier is not None and multiplier < need:
        raise ValueError(
            f"width ({width}) gives {multiplier} depthwise channels per input channel; an exact "
            f"depthwise + pointwise morph of {at!r} needs at least {need} (width >= {need * c_in})"
        )
    width = (multiplier or need) * c_in
    if width % groups:
        raise ValueError(f"width ({width}) must be divisible by {at!r}'s groups={groups}")
    kernel = tuple(layer.kernel_size)
    entries = (width + layer.out_channels * c_in // groups) * math.prod(kernel)
    entries += layer.out_channels * width // groups
    check_new_entries(  # depthwise F1, pointwise F2 and the grouped G
        entries, layer.weight, f"deepen at={at!r} with separable=True, width={width}"
    )
    budget = hidden_budget("deepen", model, at, layer, [width], entries)

    def solve(g: np.ndarray) -> tuple[Sequence[np.ndarray], float, bool, int]:
        res = separable_depth(g, groups=groups, multiplier=multiplier, seed=seed)
        return res.filters, res.residual, res.exact, res.iterations

    def build(child: nn.Module) -> Outcome:
        return replace_with_chain(
            child, at, solve, activation=activation, batch_norm=batch_norm, groups=(c_in, groups)
        )

    return run(
        Request(
            "deepen",
            model,
            (at,),
            build,
            edits=(at,),
            aliases=True,
            regions=(Region(at, at),),
            same_padding=True,
            probe=probe,
            input_shape=input_shape,
            tol=tol,
            untie=True,
            budget=budget,
        )
    )
