"""JSON descriptions of the modules a morph puts into a Hugging Face model, and the modules
rebuilt from them (:func:`~netmorph_core.torch.hf_load.load_grown`).

A description holds what the weights do not: the module's kind and constructor arguments.

- ``["linear", in, out, bias]`` — ``nn.Linear`` (a GPT-2 ``Conv1D`` turned into one);
- ``["pactivation", base, learnable]`` — :class:`~netmorph_core.torch.PActivation` on a named
  base (its ``a`` is a weight);
- ``["identity"]`` — ``nn.Identity`` (a block inserted where the config's schedule builds a
  stochastic-depth module, or moved there);
- ``["sequential", [description, …]]`` — ``nn.Sequential`` (``deepen``, ``morph_subnet``,
  ``deepen_projection``: a layer split into layers).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .activation import BASES, PActivation
from .errors import MorphError


def describe_module(module: nn.Module) -> list[Any] | None:
    """The description of ``module``, or None where it is none of the kinds above."""
    if type(module) is nn.Linear:
        return ["linear", module.in_features, module.out_features, module.bias is not None]
    if type(module) is PActivation and BASES.get(module.base_name) is module.phi:
        return ["pactivation", module.base_name, isinstance(module.a, nn.Parameter)]
    if type(module) is nn.Identity:
        return ["identity"]
    if type(module) is nn.Sequential:
        parts = [describe_module(m) for m in module]
        return None if any(p is None for p in parts) else ["sequential", parts]
    return None


def build_module(description: list[Any]) -> nn.Module:
    """The module ``description`` names, with fresh weights (loaded afterwards)."""
    kind, *args = description
    if kind == "linear":
        return nn.Linear(args[0], args[1], bias=args[2])
    if kind == "pactivation":
        return PActivation(args[0], learnable=args[1])
    if kind == "identity":
        return nn.Identity()
    if kind == "sequential":
        return nn.Sequential(*(build_module(part) for part in args[0]))
    raise MorphError(f"a saved module description names an unknown kind {kind!r}")
