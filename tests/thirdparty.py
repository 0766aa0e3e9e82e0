"""Importing torchvision and timm for the third-party model tests, on any torch build.

PyPI's torchvision wheels carry a compiled operator library built for one torch build; with
another one (the CPU torch of this project) the library does not load and ``import
torchvision`` fails registering fake kernels for ``torchvision::nms``/``qnms`` ("operator
torchvision::nms does not exist"). The model constructors use none of the detection
operators, so declaring their schemas (without kernels) before the import is enough: the
classification models build and run. Calling a detection operator then fails loudly.
"""

from __future__ import annotations

from types import ModuleType

import torch

#: Schemas of the operators torchvision registers fake kernels for at import.
_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_LIBRARY: list[torch.library.Library] = []


def _declare_missing_operators() -> None:
    missing = [op for op in _SCHEMAS if not hasattr(torch.ops.torchvision, op)]
    if not missing:
        return
    lib = torch.library.Library("torchvision", "FRAGMENT")
    for op in missing:
        lib.define(_SCHEMAS[op])
    _LIBRARY.append(lib)  # the registrations live as long as the Library object


def import_torchvision() -> ModuleType:
    """``torchvision``, importable whether or not its compiled operators load."""
    try:
        import torchvision
    except RuntimeError:
        _declare_missing_operators()
        import torchvision
    return torchvision


def import_timm() -> ModuleType:
    """``timm`` (imports torchvision first, see :func:`import_torchvision`)."""
    import_torchvision()
    import timm

    return timm


def import_transformers() -> ModuleType:
    """``transformers`` (its image utilities import torchvision, see
    :func:`import_torchvision`)."""
    import_torchvision()
    import transformers

    return transformers
