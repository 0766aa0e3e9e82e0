"""JSON descriptions of the modules a morph puts into a Hugging Face model, and the modules
rebuilt from them (:func:`~netmorph_core.torch.hf_load.load_grown`).

A description holds what the weights do not: the module's kind and constructor arguments.

- ``["linear", in, out, bias]`` — ``nn.Linear`` (a GPT-2 ``Conv1D`` turned into one);
- ``["conv", ndim, in, out, kernel, stride, padding, dilation, groups, bias, padding_mode]`` —
  ``nn.Conv1d/2d/3d`` (a deepened patch embedding or pointwise conv; ``padding`` a list or
  "same"/"valid");
- ``["pactivation", base, learnable]`` — :class:`~netmorph_core.torch.PActivation` on a named
  base (its ``a`` is a weight);
- ``["sequential", [description, …]]`` — ``nn.Sequential`` (``deepen``, ``morph_subnet``,
  ``deepen_projection``: a layer split into layers); ``["chain", …]`` — the same as a
  :class:`~netmorph_core.torch.layer_reads.Chain` (its parent reads the layer's weight dtype);
- ``["identity"]`` — ``nn.Identity`` (ModernBERT's first attention norm, moved by
  ``add_block`` to a depth where the stock model builds a LayerNorm).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .activation import BASES, PActivation
from .errors import MorphError
from .layer_reads import Chain

CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
SEQUENCES: dict[type, str] = {nn.Sequential: "sequential", Chain: "chain"}
KINDS = {kind: cls for cls, kind in SEQUENCES.items()}


def describe_module(module: nn.Module) -> list[Any] | None:
    """The description of ``module``, or None where it is none of the kinds above."""
    if type(module) is nn.Linear:
        return ["linear", module.in_features, module.out_features, module.bias is not None]
    if type(module) in CONVS:
        return [
            "conv",
            CONVS.index(type(module)) + 1,
            module.in_channels,
            module.out_channels,
            list(module.kernel_size),
            list(module.stride),
            module.padding if isinstance(module.padding, str) else list(module.padding),
            list(module.dilation),
            module.groups,
            module.bias is not None,
            module.padding_mode,
        ]
    if type(module) is PActivation and BASES.get(module.base_name) is module.phi:
        return ["pactivation", module.base_name, isinstance(module.a, nn.Parameter)]
    if type(module) in SEQUENCES:
        parts = [describe_module(m) for m in module]
        return None if any(p is None for p in parts) else [SEQUENCES[type(module)], parts]
    if type(module) is nn.Identity:
        return ["identity"]
    return None


def build_module(description: list[Any]) -> nn.Module:
    """The module ``description`` names, with fresh weights (loaded afterwards)."""
    kind, *args = description
    if kind == "linear":
        return nn.Linear(args[0], args[1], bias=args[2])
    if kind == "conv":
        ndim, c_in, c_out, kernel, stride, padding, dilation, groups, bias, mode = args
        return CONVS[ndim - 1](
            c_in,
            c_out,
            tuple(kernel),
            stride=tuple(stride),
            padding=padding if isinstance(padding, str) else tuple(padding),
            dilation=tuple(dilation),
            groups=groups,
            bias=bias,
            padding_mode=mode,
        )
    if kind == "pactivation":
        return PActivation(args[0], learnable=args[1])
    if kind in KINDS:
        return KINDS[kind](*(build_module(part) for part in args[0]))
    if kind == "identity":
        return nn.Identity()
    raise MorphError(f"a saved module description names an unknown kind {kind!r}")
