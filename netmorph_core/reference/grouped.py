"""NumPy reference of grouped ⊛ and deconvolution: one ungrouped reference call per group.

Filters are in PyTorch's grouped layout (C_out, C_in/g, *K); group j is the slice
[j·C_out/g, (j+1)·C_out/g) of the output axis (see :mod:`netmorph_core.grouped`).
"""

from __future__ import annotations

import numpy as np

from .compose import compose_ref
from .deconv import deconv_inner_ref, deconv_outer_ref


def _groups_of(f: np.ndarray, groups: int) -> list[np.ndarray]:
    return np.split(f, groups, axis=0)


def compose_grouped_ref(f2: np.ndarray, f1: np.ndarray, groups: int) -> np.ndarray:
    """F2 ⊛ F1 with ``groups``: group j of the result is F2_j ⊛ F1_j."""
    return np.concatenate(
        [compose_ref(a, b) for a, b in zip(_groups_of(f2, groups), _groups_of(f1, groups))]
    )


def deconv_grouped_ref(
    g_tilde: np.ndarray,
    factor: np.ndarray,
    side: str,
    k: tuple[int, ...],
    groups: int,
    init: np.ndarray | None = None,
) -> np.ndarray:
    """Solve G~_j = F2_j ⊛ X_j (``side`` "outer") or G~_j = X_j ⊛ F1_j ("inner") group by group
    with the explicit-operator reference. Returns float64 in the grouped layout."""
    solve = deconv_outer_ref if side == "outer" else deconv_inner_ref
    inits = [None] * groups if init is None else _groups_of(init, groups)
    return np.concatenate(
        [
            solve(gj, fj, k, ij)
            for gj, fj, ij in zip(_groups_of(g_tilde, groups), _groups_of(factor, groups), inits)
        ]
    )
