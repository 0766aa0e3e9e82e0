"""Make a torchvision whose compiled operators do not load with this torch importable.

PyPI's torchvision wheels link their operator library against one torch build (CUDA). With
another build installed (the CPU torch) the library does not load, and ``import torchvision``
— and with it timm, and transformers' model classes — fails registering fake kernels for
``torchvision::nms``/``qnms`` ("operator torchvision::nms does not exist"). The classification
models use none of those operators, so declaring their schemas (without kernels) is enough: the
models build and run, and calling a detection operator fails loudly (no kernel).

:mod:`netmorph_core.torch` calls :func:`declare_missing_operators` once at import. It does
nothing when torch is a CUDA or ROCm build, torchvision is absent or already imported, or its
library loads.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

#: Schemas of the operators torchvision registers fake kernels for at import.
_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_LIBRARIES: list[torch.library.Library] = []  # registrations live as long as their Library


def _library_loads() -> bool:
    """Whether torchvision is absent, imported, or its compiled library loads with this torch."""
    if "torchvision" in sys.modules:
        return True
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return True
    library = next(Path(spec.origin).parent.glob("_C.*"), None)
    if library is None:
        return True
    try:
        torch.ops.load_library(str(library))
    except OSError:
        return False
    return True


def declare_missing_operators() -> list[str]:
    """Declare the schemas of torchvision's ``nms``/``qnms`` where its library cannot load
    with this CPU torch; the names declared ([] when nothing was needed)."""
    if torch.version.cuda is not None or torch.version.hip is not None or _library_loads():
        return []
    missing = [op for op in _SCHEMAS if not hasattr(torch.ops.torchvision, op)]
    if missing:
        library = torch.library.Library("torchvision", "FRAGMENT")
        for op in missing:
            library.define(_SCHEMAS[op])
        _LIBRARIES.append(library)
    return missing
