"""Validation of the arguments every adapter operation shares: ``probe`` and ``input_shape``.

Both are checked before any work: a probe is a dense torch tensor (or a tuple or list of
them) with values; ``input_shape`` a sequence of positive ints (NumPy integers and
``torch.Size`` count). The random input built from ``input_shape`` and the float64 copy the
measurement makes of every probe are bounded by the memory limit
(:func:`netmorph_core._memory.check_working_set`) before they are allocated.
"""

from __future__ import annotations

import math

import torch

from .. import _validation as v
from .._arrays import torch_layout_problem
from .._memory import check_working_set

#: Bytes per entry of the float64 copy the measurement makes of every floating input.
_F64 = 8


def check_probe(probe: object) -> tuple[torch.Tensor, ...]:
    """``probe`` (a tensor, or a tuple or list of tensors) as a tuple; ``TypeError`` naming
    ``probe`` (``probe[i]``) for anything else, and for tensors without values to run on:
    nested, sparse or quantised tensors and tensors on the ``meta`` device."""
    single = isinstance(probe, torch.Tensor)
    items = (probe,) if single else probe
    if not isinstance(items, (tuple, list)) or not items:
        hint = " (convert arrays with torch.from_numpy)" if hasattr(probe, "__array__") else ""
        raise TypeError(
            f"probe must be a tensor or a tuple of tensors (torch.Tensor), got "
            f"{v.type_name(probe)}{hint}"
        )
    for i, t in enumerate(items):
        name = "probe" if single else f"probe[{i}]"
        if not isinstance(t, torch.Tensor):
            hint = " (convert arrays with torch.from_numpy)" if hasattr(t, "__array__") else ""
            if isinstance(t, (list, tuple)) and t and isinstance(t[0], torch.Tensor):
                hint = (
                    " (a model that takes a list of tensors, such as torchvision's detection "
                    "models: leave probe out to check the layer alone, or morph the part that "
                    "takes a tensor, e.g. model.backbone, with a tensor probe)"
                )
            raise TypeError(f"{name} must be a tensor (torch.Tensor), got {v.type_name(t)}{hint}")
        problem = torch_layout_problem(t)
        if problem is not None:
            raise TypeError(f"{name} {problem}: the model must run on it to measure the child")
    return tuple(items)


def check_input_shape(input_shape: object) -> tuple[int, ...]:
    """``input_shape`` as a tuple of positive Python ints (``TypeError``/``ValueError``)."""
    items = v.int_sequence(input_shape)
    if items is None:
        raise TypeError(
            f"input_shape must be a tuple of positive ints, got {v.type_name(input_shape)} "
            f"{input_shape!r}"
        )
    shape = tuple(v.as_int(n, f"input_shape[{i}]", "a positive int") for i, n in enumerate(items))
    if any(n < 1 for n in shape):
        raise ValueError(f"input_shape must be a tuple of positive ints, got {shape}")
    return shape


def check_input_memory(
    shapes: list[tuple[int, ...]], itemsize: int, given: str, *, generated: bool = False
) -> None:
    """Bound floating model inputs of ``shapes``: each held in the model's dtype (``itemsize``
    bytes) and as the measurement's float64 copy, plus the float32 draw it is generated from
    when ``generated`` (``input_shape``). ``ResourceLimitError`` naming ``given``."""
    numel = sum(math.prod(s) for s in shapes)
    per_entry = itemsize + _F64 + (4 if generated else 0)
    check_working_set(
        numel * per_entry,
        f"{given} of shape {shapes[0] if len(shapes) == 1 else shapes} ({numel} entries)",
    )


def check_probe_memory(probe: tuple[torch.Tensor, ...], itemsize: int) -> None:
    """:func:`check_input_memory` of the floating tensors of ``probe`` (integer inputs such as
    token ids are used as given)."""
    floating = [tuple(t.shape) for t in probe if t.is_floating_point()]
    if floating:
        check_input_memory(floating, itemsize, "probe")
