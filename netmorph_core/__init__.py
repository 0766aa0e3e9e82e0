"""netmorph: network morphism — grow a trained network while preserving its function exactly.

Public API of the numerical core (filters use PyTorch's layout, see README):

- :func:`compose` — the ⊛ operator; :func:`deconv` — least-squares deconvolution;
  :func:`residual` — relative residual of a decomposition.
- ``morph_*`` — the morphing algorithms (depth, width, kernel size, subnet).
- :func:`backends` — every compute backend and whether it runs here.
"""

from .activations import ACTIVATIONS, p_activation, zero_preserving
from .api import compose, deconv, residual
from .backends import BackendUnavailableError, backends
from .morph import (
    KernelResult,
    MorphResult,
    Net2NetWidthResult,
    Solvability,
    WidthResult,
    idmorph,
    morph_depth,
    morph_kernel,
    morph_stacked,
    morph_subnet,
    morph_width,
    net2net_widen,
    solvability,
    split_filter,
)

__version__ = "0.1.0"

__all__ = [
    "ACTIVATIONS",
    "BackendUnavailableError",
    "KernelResult",
    "MorphResult",
    "Net2NetWidthResult",
    "Solvability",
    "WidthResult",
    "backends",
    "compose",
    "deconv",
    "idmorph",
    "morph_depth",
    "morph_kernel",
    "morph_stacked",
    "morph_subnet",
    "morph_width",
    "net2net_widen",
    "p_activation",
    "residual",
    "solvability",
    "split_filter",
    "zero_preserving",
]
