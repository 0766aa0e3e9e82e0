"""Layers weight-normed with torch's parametrization (``torch.nn.utils.parametrizations.
weight_norm``: W = g · v / ‖v‖, the norm over every axis but ``dim``; Wav2Vec2's and HuBERT's
positional convolution), replaced by plain layers of the same function.

W is a deterministic function of (g, v) with no state, so the operations that replace the
layer (deepen, morph_subnet, morph_stacked, morph_module) preserve W itself:
:func:`plain_layer` is the plain nn.ConvNd / nn.Linear holding W. The child's layers are then
trained without the reparametrization. Operations that keep the layer (widen, grow_kernel)
refuse it by name; any other parametrization (spectral norm, orthogonal, one of the user's) is
refused too.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize


def is_weight_normed(layer: nn.Module) -> bool:
    """Whether ``layer``'s only parametrization is one weight norm of its ``weight``."""
    if not parametrize.is_parametrized(layer):
        return False
    found = {k: [type(p).__name__ for p in v] for k, v in layer.parametrizations.items()}
    return found == {"weight": ["_WeightNorm"]}


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
