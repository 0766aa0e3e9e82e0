"""Layers weight-normed with torch's parametrization (``torch.nn.utils.parametrizations.
weight_norm``: W = g · v / ‖v‖, one norm per slice of v along ``dim``, over every other axis;
dim=None, stored as −1, is one norm over all of v; Wav2Vec2's and HuBERT's positional
convolution, dim=2: one norm per kernel tap).

W is a deterministic function of (g, v) with no state, so the operations that replace the
layer (deepen, morph_subnet, morph_stacked, morph_module) preserve W itself:
:func:`plain_layer` is the plain nn.ConvNd / nn.Linear holding W, trained without the
reparametrization.

The operations that keep the layer (widen, grow_kernel) keep its weight norm too (same dim;
``parametrizations.weight.original0`` = g, ``original1`` = v, shaped for the new layer).
:func:`regrow` gives the child's (g̃, ṽ) for a grown W̃ whose old entries are the parent's,
slice by slice along ``dim``:

- a new slice (every entry new): all zero → g̃ = 0, ṽ = 1, so W̃ = 0·1/‖1‖ = 0 exactly (ṽ = 0
  would give 0/0); else ṽ = its entries, g̃ = their norm;
- an old slice whose new entries are zero (new taps; zero rows or columns inside it): ṽ = v
  with zeros there, g̃ = g. Its norm is unchanged in exact arithmetic; torch sums the longer
  slice in another order, so W̃'s old entries may differ from W's in the last bits (CPU:
  ≤ 4·eps relative, float64 and float32; new taps as new slices, dim=2, leave the old
  taps bitwise);
- an old slice with non-zero new entries (random rows or columns of widen inside it):
  ṽ = [v; new·‖v‖/g], g̃ = g·‖ṽ‖/‖v‖ (float64, then rounded), so W̃ = g̃·ṽ/‖ṽ‖ keeps the old
  entries up to that rounding; where g = 0 (W is 0 there) the new entries are left zero.

Any other parametrization (spectral norm, orthogonal, one of the user's) is refused. The
parametrization is never removed from a copy: that would edit the class the copy shares with
the parent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrizations, parametrize

ORIGINALS = ("parametrizations.weight.original0", "parametrizations.weight.original1")


def is_weight_normed(layer: nn.Module) -> bool:
    """Whether ``layer``'s only parametrization is one weight norm of its ``weight``."""
    if not parametrize.is_parametrized(layer):
        return False
    found = {k: [type(p).__name__ for p in v] for k, v in layer.parametrizations.items()}
    return found == {"weight": ["_WeightNorm"]}


def norm_axis(layer: nn.Module) -> int | None:
    """The axis of v whose slices are normed one by one (None: one norm over all of v)."""
    chain = layer.parametrizations.weight
    dim = chain[0].dim
    return None if dim is None or dim == -1 else dim % chain.original1.dim()


def plain_layer(layer: nn.Module) -> nn.Module:
    """A new nn.ConvNd / nn.Linear holding ``layer``'s W = g·v/‖v‖ and a copy of its bias (same
    geometry, dtype, device, mode and requires_grad). Built afresh: removing the
    parametrization from a copy would edit the class the copy shares with ``layer``."""
    w = layer.weight.detach()
    kw = {"bias": layer.bias is not None, "device": w.device, "dtype": w.dtype}
    if isinstance(layer, nn.Linear):
        plain: nn.Module = nn.Linear(layer.in_features, layer.out_features, **kw)
    else:
        base = next(b for b in (nn.Conv1d, nn.Conv2d, nn.Conv3d) if isinstance(layer, b))
        plain = base(
            layer.in_channels,
            layer.out_channels,
            layer.kernel_size,
            stride=layer.stride,
            padding=layer.padding,
            dilation=layer.dilation,
            groups=layer.groups,
            padding_mode=layer.padding_mode,
            **kw,
        )
    with torch.no_grad():
        plain.weight.copy_(w)
        if layer.bias is not None:
            plain.bias.copy_(layer.bias)
    plain.weight.requires_grad_(layer.parametrizations.weight.original0.requires_grad)
    if layer.bias is not None:
        plain.bias.requires_grad_(layer.bias.requires_grad)
    return plain.train(layer.training)


@dataclass(frozen=True)
class Regrown:
    """The child's weight norm: g̃ (W̃'s shape with size 1 on every axis but the norm axis), ṽ
    (W̃'s shape); ``zeroed``: old slices with g = 0 whose new entries were left zero;
    ``regauged``: old slices whose g was recomputed around non-zero new entries."""

    g: torch.Tensor
    v: torch.Tensor
    zeroed: int
    regauged: int


def _gather64(t: torch.Tensor, index: np.ndarray, axis: int) -> torch.Tensor:
    """``t`` re-indexed along ``axis`` (entry j: t[index[j]], 0 where index[j] = −1)."""
    picked = t.index_select(axis, torch.as_tensor(np.maximum(index, 0)))
    picked[(slice(None),) * axis + (torch.as_tensor(index < 0),)] = 0.0
    return picked


def regrow(layer: nn.Module, weight: torch.Tensor, index: Sequence[np.ndarray | None]) -> Regrown:
    """(g̃, ṽ) of the weight-normed ``layer`` grown to W̃ = ``weight`` (module docstring).

    ``index``: per axis of W̃, None (unchanged) or child position → parent position (−1: new);
    W̃'s entries that every axis maps to the parent are the parent's W (not read here), the
    others are new. Computed in float64 on the CPU, returned in v's dtype and device."""
    chain = layer.parametrizations.weight
    like = chain.original1
    g = chain.original0.detach().to("cpu", torch.float64)
    v = like.detach().to("cpu", torch.float64)
    target = weight.detach().to("cpu", torch.float64)
    fresh = torch.zeros(target.shape, dtype=torch.bool)
    for axis, idx in enumerate(index):
        if idx is not None:
            v = _gather64(v, idx, axis)
            shape = [1] * target.dim()
            shape[axis] = idx.size
            fresh = fresh | torch.as_tensor(idx < 0).reshape(shape)
    axis = norm_axis(layer)
    slices = 1 if axis is None else target.shape[axis]
    g = g.reshape(-1)
    new_slice = torch.zeros(slices, dtype=torch.bool)
    if axis is not None and index[axis] is not None:
        g = _gather64(g, index[axis], 0)
        new_slice = torch.as_tensor(index[axis] < 0)

    def rows(t: torch.Tensor) -> torch.Tensor:  # (slices, entries of a slice)
        return (t.unsqueeze(0) if axis is None else t.movedim(axis, 0)).reshape(slices, -1)

    vs, new, ws = rows(v).clone(), rows(fresh), rows(target)
    live = ((ws != 0) & new).any(1)  # slices with non-zero new entries
    vs[new_slice & ~live] = 1.0
    g[new_slice & ~live] = 0.0
    grown = new_slice & live
    vs[grown] = ws[grown]
    g[grown] = torch.linalg.vector_norm(ws[grown], dim=1)
    mixed = ~new_slice & live
    regauge = mixed & (g != 0)
    norm = torch.linalg.vector_norm(vs[regauge], dim=1)  # their new entries are still 0
    scaled = ws[regauge] * (norm / g[regauge])[:, None]
    picked = torch.where(new[regauge], scaled, vs[regauge]).to(like.dtype).double()
    g[regauge] = g[regauge] * torch.linalg.vector_norm(picked, dim=1) / norm
    vs[regauge] = picked
    shape = list(target.shape)
    if axis is None:
        v_new, g_new = vs.reshape(shape), g.reshape(())
    else:
        moved = [shape[axis], *shape[:axis], *shape[axis + 1 :]]
        v_new = vs.reshape(moved).movedim(0, axis)
        g_new = g.reshape([n if i == axis else 1 for i, n in enumerate(shape)])
    return Regrown(
        g=g_new.to(like.device, like.dtype),
        v=v_new.contiguous().to(like.device, like.dtype),
        zeroed=int((mixed & (g == 0)).sum()),
        regauged=int(regauge.sum()),
    )


def install(target: nn.Module, grown: Regrown, like: nn.Module) -> None:
    """Give ``target`` (``like`` itself, or a plain layer of the child's shape) ``like``'s
    weight norm (same dim) with g̃, ṽ = ``grown`` (same requires_grad as ``like``'s)."""
    old = like.parametrizations.weight
    if not parametrize.is_parametrized(target):
        parametrizations.weight_norm(target, dim=old[0].dim)
    chain = target.parametrizations.weight
    for attr, value in (("original0", grown.g), ("original1", grown.v)):
        setattr(chain, attr, nn.Parameter(value, requires_grad=getattr(old, attr).requires_grad))


def sources(
    name: str, parent: str, layer: nn.Module, index: Sequence[np.ndarray | None]
) -> dict[str, tuple[str, tuple[np.ndarray | None, ...]]]:
    """Child parameter → (parent parameter, index) of g̃ and ṽ at module ``name`` (the
    parent's layer ``parent``, weight-normed like ``layer``; ``index`` as in :func:`regrow`;
    the report's ParamSource): ṽ's old entries are v's, g̃'s slices follow the norm axis."""
    axis = norm_axis(layer)
    g_index: tuple[np.ndarray | None, ...] = ()
    if axis is not None:
        g_index = tuple(index[axis] if i == axis else None for i in range(len(index)))
    g_name, v_name = ORIGINALS
    return {
        f"{name}.{g_name}": (f"{parent}.{g_name}", g_index),
        f"{name}.{v_name}": (f"{parent}.{v_name}", tuple(index)),
    }


def note(name: str, layer: nn.Module, grown: Regrown) -> str:
    """The report's note on the weight norm ``grown`` kept at ``name``."""
    axis = norm_axis(layer)
    text = f"{name}: weight norm kept (dim={'None' if axis is None else axis})"
    if grown.regauged:
        text += (
            f"; {grown.regauged} slices of its norm take non-zero new entries, their gain g is "
            "recomputed (old entries exact up to its rounding)"
        )
    if grown.zeroed:
        text += f"; {grown.zeroed} slices with gain 0 keep their new entries at 0"
    return text
