"""Weight-standardised convolutions (timm's ``StdConv2d``, ``ScaledStdConv2d``: BiT, NF-ResNet,
NFNet), recognised by what they compute: replaced by plain convolutions of the same function,
or kept and grown with their statistics in hand.

Such a layer computes nn.ConvNd's function of the standardised weight

    Ŵ_o = g_o · (W_o − mean(W_o)) / √(var(W_o) + ε),

per output filter o (mean and biased variance over its n = C_in/groups·|K| entries; g =
``gain`` · ``scale`` where the layer has them, else 1), with its own bias, stride, padding,
dilation and groups. The operations that replace the layer (deepen, morph_subnet,
morph_stacked, morph_module) preserve Ŵ instead of W: :func:`plain_conv` is the nn.ConvNd
holding Ŵ. The rule is verified on each layer before it is used: its own forward on a float64
copy against F.convNd of Ŵ.

The operations that keep the layer (widen, grow_kernel) grow W so that Ŵ grows as a plain
conv's weight would (:func:`regrow`):

- a new filter (widen's producer, a grouped consumer's new group) is standardised on its own:
  its entries as given (a zero filter has Ŵ = 0), its gain the mean of the old gains;
- an old filter with new entries (widen's consumer columns, grow_kernel's taps): filter o's
  new entries become mean(W_o) plus the given ones centred over them (all equal to the mean
  where they are zero: Ŵ = 0 there), so its mean is unchanged; its biased variance becomes
  var'_o, and the gain is rescaled g'_o = g_o·√(var'_o + ε)/√(var_o + ε), so Ŵ_o's old entries
  are unchanged up to rounding (computed in float64, written in the layer's dtype; ``scale``
  is the stored float the forward reads, kept). Without a gain (StdConv2d, Hugging Face BiT)
  the variance change cannot be absorbed: :func:`check_gain` refuses it.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import MorphError

CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_FUNCTIONS = {nn.Conv1d: F.conv1d, nn.Conv2d: F.conv2d, nn.Conv3d: F.conv3d}
_VERIFY_RTOL = 1e-12


def _base(layer: nn.Module) -> type[nn.Module] | None:
    return next((b for b in CONV_TYPES if isinstance(layer, b)), None)


def standardised_weight(layer: nn.Module) -> torch.Tensor:
    """Ŵ of the module docstring for ``layer``'s own weight, gain, scale and eps (in the
    weight's dtype, without gradient)."""
    w = layer.weight.detach()
    flat = w.reshape(w.shape[0], -1)
    mean = flat.mean(dim=1, keepdim=True)
    var = flat.var(dim=1, unbiased=False, keepdim=True)
    out = (flat - mean) / torch.sqrt(var + layer.eps)
    gain = getattr(layer, "gain", None)
    if isinstance(gain, torch.Tensor):
        out = out * (gain.detach() * getattr(layer, "scale", 1.0)).reshape(-1, 1)
    return out.reshape_as(w)


def may_be_standardised(layer: nn.Module) -> bool:
    """Whether ``layer`` is a ConvNd subclass with a float ``eps`` (a candidate of
    :func:`is_weight_standardised`; nothing is run)."""
    base = _base(layer)
    return (
        base is not None
        and type(layer) is not base
        and isinstance(getattr(layer, "eps", None), float)
    )


def is_weight_standardised(layer: nn.Module) -> bool:
    """Whether ``layer`` (:func:`may_be_standardised`) computes F.convNd of
    :func:`standardised_weight`: checked on a float64 copy of the layer and a random input,
    to 1e-12 relative."""
    if not may_be_standardised(layer):
        return False
    if layer.weight.is_meta or not layer.weight.is_floating_point():
        return False
    base = _base(layer)
    probe = copy.deepcopy(layer).to(torch.float64).eval()
    gen = torch.Generator().manual_seed(0)
    k = probe.weight.shape[2:]
    spatial = [2 * (d * (s - 1) + 1) + st for s, d, st in zip(k, probe.dilation, probe.stride)]
    x = torch.randn(2, probe.in_channels, *spatial, generator=gen, dtype=torch.float64)
    try:
        with torch.no_grad():
            got = probe(x)
            want = _CONV_FUNCTIONS[base](
                x,
                standardised_weight(probe),
                probe.bias,
                probe.stride,
                probe.padding,
                probe.dilation,
                probe.groups,
            )
    except Exception:  # the layer's own forward fails on this input: not the rule
        return False
    if got.shape != want.shape:
        return False
    scale = float(want.abs().max()) or 1.0
    return float((got - want).abs().max()) <= _VERIFY_RTOL * scale


def plain_conv(layer: nn.Module) -> nn.Module:
    """The nn.ConvNd computing ``layer``'s function: weight Ŵ, a copy of its bias, the same
    geometry, dtype, device, mode and requires_grad."""
    base = _base(layer)
    w = layer.weight
    conv = base(
        layer.in_channels,
        layer.out_channels,
        layer.kernel_size,
        stride=layer.stride,
        padding=layer.padding,
        dilation=layer.dilation,
        groups=layer.groups,
        bias=layer.bias is not None,
        padding_mode=layer.padding_mode,
        device=w.device,
        dtype=w.dtype,
    )
    with torch.no_grad():
        conv.weight.copy_(standardised_weight(layer))
        if layer.bias is not None:
            conv.bias.copy_(layer.bias)
    conv.weight.requires_grad_(w.requires_grad)
    if layer.bias is not None:
        conv.bias.requires_grad_(layer.bias.requires_grad)
    return conv.train(layer.training)


def has_gain(layer: nn.Module) -> bool:
    """Whether ``layer`` has a per-filter ``gain`` tensor (ScaledStdConv2d)."""
    return isinstance(getattr(layer, "gain", None), torch.Tensor)


def check_gain(layer: nn.Module, at: str, what: str) -> None:
    """A weight-standardised ``layer`` that gets new entries in its old filters (``what``: new
    input columns, new taps) must have a gain to absorb their variance (module docstring);
    MorphError naming it and the reason otherwise."""
    if not has_gain(layer):
        raise MorphError(
            f"{at!r} is {type(layer).__qualname__}, a weight-standardised conv without a gain: "
            f"{what} change each filter's variance over its entries, which only a per-filter "
            "gain could absorb; refused"
        )


@dataclass(frozen=True)
class Regrown:
    """The child's weight W̃ and gain (None without one), in the layer's dtype and device;
    ``new``: new filters; ``rescaled``: old filters whose gain absorbs their new entries'
    variance."""

    weight: torch.Tensor
    gain: torch.Tensor | None
    new: int
    rescaled: int


def regrow(layer: nn.Module, weight: torch.Tensor, index: Sequence[np.ndarray | None]) -> Regrown:
    """W̃ and gain of the weight-standardised ``layer`` grown to ``weight`` (module docstring).

    ``index``: per axis of W̃, None (unchanged) or child position → parent position (−1: new);
    W̃'s entries that every axis maps to the parent are the parent's W, the others new (their
    given values are kept in new filters, centred around the filter's mean in old ones)."""
    w = layer.weight
    parent = w.detach().to("cpu", torch.float64).reshape(w.shape[0], -1)
    target = weight.detach().to("cpu", torch.float64)
    fresh = torch.zeros(target.shape[1:], dtype=torch.bool)
    for axis, idx in enumerate(index[1:]):
        if idx is not None:
            shape = [1] * fresh.dim()
            shape[axis] = idx.size
            fresh = fresh | torch.as_tensor(idx < 0).reshape(shape)
    rows, cols = target.reshape(target.shape[0], -1).clone(), fresh.reshape(-1)
    src = index[0] if index[0] is not None else np.arange(target.shape[0])
    old = torch.as_tensor(src >= 0)
    at = torch.as_tensor(np.maximum(src, 0))[old]
    mean = parent.mean(dim=1)[at]
    var = parent.var(dim=1, unbiased=False)[at]
    rescaled = 0
    if bool(cols.any()):
        given = rows[old][:, cols]
        kept = rows[old]
        kept[:, cols] = mean[:, None] + given - given.mean(dim=1, keepdim=True)
        rows[old] = kept.to(w.dtype).double()  # the values the forward will read
        rescaled = int(old.sum())
    out = rows.reshape(target.shape).to(w.device, w.dtype)
    new = int((~old).sum())
    if not has_gain(layer):
        return Regrown(out, None, new, rescaled)
    g = layer.gain.detach()
    gain = g.to("cpu", torch.float64).reshape(-1)
    grown = torch.full((target.shape[0],), float(gain.mean()), dtype=torch.float64)
    grown[old] = gain[at]
    if rescaled:
        var_new = rows[old].var(dim=1, unbiased=False)
        grown[old] = grown[old] * torch.sqrt(var_new + layer.eps) / torch.sqrt(var + layer.eps)
    shape = (target.shape[0], *g.shape[1:])
    return Regrown(out, grown.reshape(shape).to(g.device, g.dtype), new, rescaled)


def install(layer: nn.Module, grown: Regrown) -> None:
    """Put ``grown``'s weight and gain in ``layer`` (same requires_grad as before)."""
    layer.weight = nn.Parameter(grown.weight, requires_grad=layer.weight.requires_grad)
    if grown.gain is not None:
        layer.gain = nn.Parameter(grown.gain, requires_grad=layer.gain.requires_grad)


def gain_index(index: Sequence[np.ndarray | None]) -> tuple[np.ndarray | None, ...]:
    """The gain's child → parent index (the report's ParamSource) for W̃'s ``index``."""
    return (index[0], *(None,) * (len(index) - 1))


def note(name: str, grown: Regrown) -> str:
    """The report's note on the weight-standardised layer ``name`` grown to ``grown``."""
    parts = []
    if grown.new:
        gain = ", gain the mean of the old gains" if grown.gain is not None else ""
        parts.append(f"{grown.new} new filters standardised on their own{gain}")
    if grown.rescaled:
        parts.append(
            f"the new entries of {grown.rescaled} old filters centred on each filter's mean, "
            "its gain rescaled by √(var' + ε)/√(var + ε): old entries of Ŵ exact up to rounding"
        )
    return f"{name}: weight standardisation kept ({'; '.join(parts)})"
