"""Layer types and wrappers the adapter does not understand, named with what to do about them.

A morph edits a layer on the premise that it computes nn.Linear's or nn.ConvNd's function of
floating-point ``weight`` and ``bias``. These do not, and are refused by name (never as a
vague "is Linear; expected Linear"):

- quantised layers (``torch.ao.nn.quantized``, quantisation-aware training, bitsandbytes-style
  8/4-bit layers): morph the floating-point model, then quantise the child;
- LoRA-style adapter wrappers (a ``base_layer`` with ``lora_A``/``lora_B``): merge the adapter
  into the base weights first;
- pruned layers (``torch.nn.utils.prune``: ``weight_orig`` and ``weight_mask`` recomputed by
  a forward pre-hook): ``prune.remove(module, "weight")`` makes the pruning permanent;
- parametrized layers (``torch.nn.utils.parametrize``): ``remove_parametrizations`` first
  (a weight norm alone is handled by the operations that opt in: :mod:`.weight_normed`);
- TorchScript modules (``torch.jit.script``/``trace``): morph the Python module, then script
  the child.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize, prune

from .kinds import type_label
from .weight_normed import is_weight_normed

_QUANTISED_MODULES = ("quantized", "quantization", ".qat", "bitsandbytes", "auto_gptq", "awq")
_QUANTISED_NAMES = ("Linear8bitLt", "Linear4bit", "QuantLinear", "QLinear", "Int8Linear")
_LORA_ATTRS = ("lora_A", "lora_B", "lora_down", "lora_up")


def pruning_methods(module: nn.Module) -> list[str]:
    """Names of the ``torch.nn.utils.prune`` methods active on ``module`` itself."""
    return [
        type(h).__name__
        for h in module._forward_pre_hooks.values()
        if isinstance(h, prune.BasePruningMethod)
    ]


def unsupported_kind(module: nn.Module) -> str | None:
    """What ``module`` is and what to do, when it is a type the adapter does not understand
    (module docstring); None otherwise."""
    path = type_label(module)
    if isinstance(module, (torch.jit.ScriptModule, torch.jit.RecursiveScriptModule)):
        return (
            f"a TorchScript module ({path}): its code cannot be edited; morph the Python "
            "module, then script the child"
        )
    module_name = type(module).__module__
    if (
        any(s in module_name for s in _QUANTISED_MODULES)
        or type(module).__name__ in _QUANTISED_NAMES
    ):
        return (
            f"a quantised layer ({path}): its weights are not the floating-point values a "
            "morph preserves; morph the floating-point model, then quantise the child"
        )
    if any(hasattr(module, a) for a in _LORA_ATTRS) or (
        hasattr(module, "base_layer") and isinstance(module.base_layer, nn.Module)
    ):
        return (
            f"a LoRA-style adapter wrapper ({path}): it adds a low-rank update to its base "
            "layer; merge the adapter into the base weights first (peft: merge_and_unload()) "
            "and morph the merged model"
        )
    methods = pruning_methods(module)
    if methods:
        names = sorted(
            n.removesuffix("_orig")
            for n, _ in module.named_parameters(recurse=False)
            if n.endswith("_orig")
        )
        return (
            f"pruned with torch.nn.utils.prune ({', '.join(methods)} on {names}): the pruned "
            "tensors are recomputed from *_orig and *_mask on every call; make the pruning "
            f"permanent first: prune.remove(module, name) for each of {names}"
        )
    if is_weight_normed(module):
        return (
            f"a weight-normed layer ({path}, W = g·v/‖v‖): deepen, morph_subnet, morph_stacked "
            "and morph_module replace it by the plain layer of W, widen and grow_kernel keep "
            "its weight norm; this operation would set W itself, which the reparametrization "
            "recomputes from g and v; remove it first "
            "(parametrize.remove_parametrizations(module, 'weight'))"
        )
    if parametrize.is_parametrized(module):
        found = {k: [type(p).__name__ for p in v] for k, v in module.parametrizations.items()}
        return (
            f"{type(module).__qualname__} with parametrizations {found} "
            "(torch.nn.utils.parametrize, e.g. weight_norm or spectral_norm): the morph cannot "
            "carry them over exactly; remove them first (parametrize.remove_parametrizations)"
        )
    return None
