"""Weight-standardised convolutions (timm's ``StdConv2d``, ``ScaledStdConv2d``: BiT, NF-ResNet,
NFNet), recognised by what they compute and replaced by plain convolutions of the same
function.

Such a layer computes nn.ConvNd's function of the standardised weight

    Ŵ_o = g_o · (W_o − mean(W_o)) / √(var(W_o) + ε),

per output filter o (mean and biased variance over its C_in/groups·|K| entries; g = ``gain``
· ``scale`` where the layer has them, else 1), with its own bias, stride, padding, dilation
and groups. The operations that replace the layer (deepen, morph_subnet, morph_stacked,
morph_module) preserve Ŵ instead of W: :func:`plain_conv` is the nn.ConvNd holding Ŵ.
Operations that keep the layer (widen, grow_kernel) would change the statistics (zero columns
or taps move the mean and variance) and refuse it. The rule is verified on each layer before
it is used: its own forward on a float64 copy against F.convNd of Ŵ.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

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
