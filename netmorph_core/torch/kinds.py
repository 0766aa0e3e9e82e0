"""The name of a module's class for error messages.

A quantised ``torch.ao.nn.quantized.Linear`` and a LoRA wrapper class called ``Linear`` must
not be reported as "Linear": :func:`type_label` gives the class's public qualified name
(torch.nn's own classes keep their short name). What to do with the kinds the adapter does not
morph is said by :mod:`.wrappers`.
"""

from __future__ import annotations

import sys


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
