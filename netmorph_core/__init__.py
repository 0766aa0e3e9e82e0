"""netmorph: network morphism — grow a trained network while preserving its function exactly.

Public API of the numerical core (filters use PyTorch's layout):

- :func:`compose` — the ⊛ operator; :func:`deconv` — least-squares deconvolution;
  :func:`residual` — relative residual of a decomposition.
- ``morph_*`` — the morphing algorithms (depth, width, kernel size, subnet).
- :func:`backends` — every compute backend and whether it runs here.
"""

from ._memory import ResourceLimitError
from .activations import ACTIVATIONS, p_activation, zero_preserving
from .api import compose, deconv, residual
from .backends import BackendUnavailableError, backends
from .morph import (
    Edge,
    KernelResult,
    Module,
    ModuleMorphResult,
    MorphResult,
    MorphStep,
    Net2NetWidthResult,
    Reduction,
    Solvability,
    WidthResult,
    compose_module,
    conv_edge,
    identity_edge,
    idmorph,
    morph_depth,
    morph_kernel,
    morph_module,
    morph_stacked,
    morph_subnet,
    morph_width,
    net2net_widen,
    reduce_module,
    separable_depth,
    solvability,
    split_filter,
    stable_depth,
    stable_subnet,
)

__version__ = "0.1.0"

__all__ = [
    "ACTIVATIONS",
    "BackendUnavailableError",
    "Edge",
    "KernelResult",
    "Module",
    "ModuleMorphResult",
    "MorphResult",
    "MorphStep",
    "Net2NetWidthResult",
    "Reduction",
    "ResourceLimitError",
    "Solvability",
    "WidthResult",
    "backends",
    "compose",
    "compose_module",
    "conv_edge",
    "deconv",
    "identity_edge",
    "idmorph",
    "morph_depth",
    "morph_kernel",
    "morph_module",
    "morph_stacked",
    "morph_subnet",
    "morph_width",
    "net2net_widen",
    "p_activation",
    "reduce_module",
    "residual",
    "separable_depth",
    "solvability",
    "split_filter",
    "stable_depth",
    "stable_subnet",
    "zero_preserving",
]
