"""The ``numpy`` backend: the reference routines themselves (always available)."""

from __future__ import annotations

import numpy as np

from ..reference import compose_ref, deconv_inner_ref, deconv_outer_ref

DEVICE = "cpu"
DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def load() -> None:
    """Nothing to load: NumPy is a hard dependency."""


def compose(f2: np.ndarray, f1: np.ndarray) -> np.ndarray:
    """F2 ⊛ F1 (see :func:`netmorph_core.compose`)."""
    return compose_ref(f2, f1)


def deconv(
    g_tilde: np.ndarray,
    factor: np.ndarray,
    side: str,
    kernel_size: tuple[int, ...],
    init: np.ndarray | None,
) -> np.ndarray:
    """Least-squares X with G~ = factor ⊛ X (side "outer") or X ⊛ factor (side "inner")."""
    solve = deconv_outer_ref if side == "outer" else deconv_inner_ref
    return solve(g_tilde, factor, kernel_size, init)
