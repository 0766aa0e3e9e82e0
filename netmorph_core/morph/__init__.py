"""The morphing algorithms of the papers, on NumPy filters (PyTorch weight layout)."""

from .baselines import Net2NetWidthResult, idmorph, net2net_widen
from .depth import morph_depth
from .graph import (
    Edge,
    Module,
    MorphStep,
    Reduction,
    compose_module,
    conv_edge,
    identity_edge,
    reduce_module,
)
from .grouped import separable_depth
from .kernel import KernelResult, morph_kernel
from .module import ModuleMorphResult, morph_module
from .result import MorphResult
from .solvability import Solvability, solvability
from .split import morph_stacked, split_filter
from .stable import stable_depth, stable_subnet
from .subnet import morph_subnet
from .width import WidthResult, morph_width

__all__ = [
    "Edge",
    "KernelResult",
    "Module",
    "ModuleMorphResult",
    "MorphResult",
    "MorphStep",
    "Net2NetWidthResult",
    "Reduction",
    "Solvability",
    "WidthResult",
    "compose_module",
    "conv_edge",
    "identity_edge",
    "idmorph",
    "morph_depth",
    "morph_kernel",
    "morph_module",
    "morph_stacked",
    "morph_subnet",
    "morph_width",
    "net2net_widen",
    "reduce_module",
    "separable_depth",
    "solvability",
    "split_filter",
    "stable_depth",
    "stable_subnet",
]
