"""Stacked subnet morphing: split G = Σ_i G_i (equation (20)) and morph every branch.

The branches run in parallel on the same input and their outputs are summed, so the stacked
subnet reproduces G when branch i reproduces G_i (each zero-padded centred to its own
effective size).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .. import _validation as v
from .._errors import typed_errors
from .._memory import check_working_set
from .._scaling import normalise, scale_back
from ._scaling import check_common
from .depth import Seed, as_rng, check_options
from .result import MorphResult
from .subnet import chain_effective_size, check_layers, morph_subnet

SPLIT_MODES = ("equal", "random")


@typed_errors("split_filter")
def split_filter(
    g: np.ndarray, n: int, *, seed: Seed = None, mode: str = "random"
) -> list[np.ndarray]:
    """Split G into ``n`` filters of G's shape and dtype with Σ_i G_i = G.

    ``mode="equal"``: G_i = G / n. ``mode="random"`` (breaks the symmetry between branches):
    G_i = G / n + ε_i with Gaussian ε_i of std rms(G) / n, made zero-sum over i; the last term
    is G − Σ_{i<n} G_i so the sum is G up to rounding. G is not modified. The split is done
    on G normalised by a power of two and scaled back: G·2^k splits into exactly 2^k·G_i.
    """
    g = v.as_filter(g, "G")
    n = v.positive_int(n, "n")
    if not isinstance(mode, str):
        raise TypeError(f"mode must be one of {SPLIT_MODES}, got {mode!r}")
    if mode not in SPLIT_MODES:
        raise ValueError(f"mode must be one of {SPLIT_MODES}, got {mode!r}")
    rng = as_rng(seed)
    check_working_set(8 * (n + 2) * g.size, f"split_filter into n={n} parts")
    gn, e = normalise(g)
    return [scale_back(part, e, g.dtype, "split_filter of G") for part in _split(gn, n, mode, rng)]


def _split(g: np.ndarray, n: int, mode: str, rng: np.random.Generator) -> list[np.ndarray]:
    """:func:`split_filter` on a G whose largest magnitude is in [0.5, 1)."""
    share = g / g.dtype.type(n)
    if mode == "equal":
        return [share.copy() for _ in range(n)]
    rms = float(np.sqrt(np.mean(np.square(g, dtype=np.float64))))
    noise = rng.standard_normal((n, *g.shape)) * (rms / n)
    noise -= noise.mean(axis=0)
    parts = [(share + noise[i]).astype(g.dtype) for i in range(n - 1)]
    rest = g.copy()
    for part in parts:
        rest -= part
    return [*parts, rest]


@typed_errors("morph_stacked")
def morph_stacked(
    g: np.ndarray,
    branches: Sequence[Sequence[tuple[int | None, int | Sequence[int] | None]]],
    *,
    split: str = "random",
    seed: Seed = None,
    method: str = "general",
    max_iter: int = 200,
    tol: float | None = None,
    allow_approximate: bool = False,
    backend: str = "auto",
) -> list[MorphResult]:
    """Split G into len(``branches``) terms (:func:`split_filter`, mode ``split``) and morph
    term i into the sequential layers ``branches[i]`` with :func:`morph_subnet` (the other
    keywords are passed on). A branch [(C2, k)] is just G_i zero-padded to k.

    Every branch and option is validated before any work. One generator from ``seed`` drives
    the split and then every branch in order.
    """
    g = v.as_filter(g, "G")
    if not isinstance(branches, Sequence) or isinstance(branches, str) or len(branches) == 0:
        raise TypeError(f"branches must be a non-empty list of layer lists, got {branches!r}")
    for layers in branches:
        _, kernels = check_layers(g, layers)
        chain_effective_size(g.shape[2:], kernels)
    check_common({"tol": tol, "max_iter": max_iter})
    check_options(g, method, None, max_iter, tol, allow_approximate, backend)
    if not isinstance(split, str):
        raise TypeError(f"split must be one of {SPLIT_MODES}, got {split!r}")
    if split not in SPLIT_MODES:
        raise ValueError(f"split must be one of {SPLIT_MODES}, got {split!r}")
    rng = as_rng(seed)
    parts = split_filter(g, len(branches), seed=rng, mode=split)
    options = {
        "method": method,
        "max_iter": max_iter,
        "tol": tol,
        "allow_approximate": allow_approximate,
        "backend": backend,
    }
    return [
        morph_subnet(part, layers, seed=rng, **options) for part, layers in zip(parts, branches)
    ]
