"""The morphing algorithms of the papers, on NumPy filters (PyTorch weight layout)."""

from .baselines import Net2NetWidthResult, idmorph, net2net_widen
from .kernel import KernelResult, morph_kernel
from .result import MorphResult
from .width import WidthResult, morph_width

__all__ = [
    "KernelResult",
    "MorphResult",
    "Net2NetWidthResult",
    "WidthResult",
    "idmorph",
    "morph_kernel",
    "morph_width",
    "net2net_widen",
]
