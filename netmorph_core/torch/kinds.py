"""Names and advice for layer types the adapter does not morph, for error messages.

A quantised ``torch.ao.nn.quantized.Linear`` and a LoRA wrapper class called ``Linear`` must
not be reported as "Linear": :func:`type_label` gives the class's public qualified name
(torch.nn's own classes keep their short name), and :func:`advice` says what to do with the
kinds that have a known way out (quantised, LoRA-style adapters, TorchScript).
"""

from __future__ import annotations

import sys

from torch import nn

_QUANTISED = (
    "torch.ao.nn.quantized",
    "torch.ao.nn.qat",
    "torch.ao.nn.intrinsic",
    "torch.nn.quantized",
)


def type_label(module: object) -> str:
    """``module``'s class: "ReLU" for torch.nn's own, else the shortest importable dotted path
    ("torch.ao.nn.quantized.Linear", "peft.tuners.lora.layer.Linear")."""
    cls = type(module)
    path = cls.__module__
    if path.startswith("torch.nn.modules."):
        return cls.__qualname__
    parts = path.split(".")
    for end in range(1, len(parts) + 1):
        prefix = ".".join(parts[:end])
        if getattr(sys.modules.get(prefix), cls.__qualname__, None) is cls:
            return f"{prefix}.{cls.__qualname__}"
    return f"{path}.{cls.__qualname__}"


def _is_adapter_wrapper(module: nn.Module) -> bool:
    names = {name for name, _ in module.named_children()}
    return "base_layer" in names or any(n.startswith("lora_") for n in names)


def advice(module: object) -> str:
    """What to do with ``module`` ("" when there is no known way out)."""
    path = type(module).__module__
    if path.startswith(_QUANTISED):
        return (
            "a quantised layer: morph the float model before quantising it (or convert the "
            "model back to float), then quantise the child"
        )
    if isinstance(module, nn.Module) and _is_adapter_wrapper(module):
        base = getattr(module, "base_layer", None)
        inner = f" around {type_label(base)}" if base is not None else ""
        return (
            f"an adapter wrapper (LoRA-style){inner}: merge the adapter into its base layer "
            "first (peft: model.merge_and_unload()) and morph the merged model"
        )
    if path.startswith("torch.jit"):
        return "a TorchScript module: morph the Python model before scripting it"
    return ""


def describe(module: object) -> str:
    """``module``'s class label, followed by the advice when there is one."""
    label = type_label(module)
    hint = advice(module)
    return f"{label} ({hint})" if hint else label
