"""The morphing algorithms of the papers, on NumPy filters (PyTorch weight layout)."""

from .baselines import Net2NetWidthResult, idmorph, net2net_widen
from .depth import morph_depth
from .kernel import KernelResult, morph_kernel
from .result import MorphResult
from .solvability import Solvability, solvability
from .split import morph_stacked, split_filter
from .subnet import morph_subnet
from .width import WidthResult, morph_width

__all__ = [
    "KernelResult",
    "MorphResult",
    "Net2NetWidthResult",
    "Solvability",
    "WidthResult",
    "idmorph",
    "morph_depth",
    "morph_kernel",
    "morph_stacked",
    "morph_subnet",
    "morph_width",
    "net2net_widen",
    "solvability",
    "split_filter",
]
