"""Depth morphing G~ = F2 ⊛ F1: the paper's Algorithm 1 ("general") and 2 ("practical").

G (C2, C0, *K) becomes F1 (C1, C0, *K1) followed by F2 (C2, C1, *K2), with G~ = G zero-padded
centred to Kt = K1 + K2 − 1. Both algorithms solve one factor with the other fixed by
deconvolution (``netmorph_core.solver.solve_deconv`` on the selected backend) in float64,
taking the exact solution nearest to the current iterate when the system is underdetermined,
so the solved entries are non-zero and on the scale of the random start (a square system has a
unique solution, which keeps G~'s zero border). The random start is He-like
(std √(2 / fan-in)) rescaled so that the start's composition has the norm of G. The returned
filters are rescaled to equal standard deviation (F_p·s_p with Π s_p = 1, which leaves the
composition unchanged).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .. import _validation as v
from ..reference import pad_centered
from ._scaling import chain_morph, depth_layout
from .augmented import augmented_pair, prefer_augmented
from .bilinear import WARMUP_SOLVES, solve_bilinear, use_bilinear
from .common import (
    DEFAULT_TOL,
    METHODS,
    Options,
    Seed,
    as_rng,
    balance,
    check_options,
    compose_chain,
    finish,
    random_start,
    relative_residual,
    scale_of,
)
from .conditioning import balanced_pair
from .grouped import grouped_depth
from .pair import alternate, general_order, practical_search, solve_end_layer, splits
from .result import MorphResult
from .solvability import check_dense_count, layer_kernel, solvability
from .stable import stable_depth

__all__ = [
    "DEFAULT_TOL",
    "METHODS",
    "Options",
    "Seed",
    "as_rng",
    "balance",
    "check_options",
    "compose_chain",
    "morph_depth",
    "relative_residual",
    "scale_of",
]


@chain_morph("morph_depth", depth_layout)
def morph_depth(
    g: np.ndarray,
    width: int,
    k1: int | Sequence[int] | None = None,
    k2: int | Sequence[int] | None = None,
    *,
    method: str = "general",
    seed: Seed = None,
    max_iter: int = 100,
    tol: float | None = None,
    allow_approximate: bool = False,
    backend: str = "auto",
    groups: int = 1,
) -> MorphResult:
    """Morph G (C2, C0, *K) into F1 (width, C0, *k1) then F2 (C2, width, *k2): F2 ⊛ F1 = G~.

    G~ is G zero-padded centred to K1 + K2 − 1 (K1 + K2 − 1 − K even and ≥ 0 per dimension).
    A linear G (C2, C0) takes k1 = k2 = None, () or 1.

    ``method="general"`` (Algorithm 1): F1, F2 start as random noise and are solved
    alternately, starting with the side whose one-solve exactness condition holds
    (see :func:`solvability`), until the residual is ≤ ``tol`` or ``max_iter`` solves; the
    entries are non-zero (save the structural zeros of a square system's unique solution).
    Where neither side is exact, the identity-augmented pair is built in closed form when it
    exists (:mod:`netmorph_core.morph.augmented`: width > C0 with K1 ≤ K2 or width > C2
    with K2 ≤ K1, G fitting the larger kernel — e.g. 3×3 → (3×3, 3×3) at any width > C),
    exact, dense and balanced, 0 iterations. Elsewhere, where counting admits a dense exact
    pair and G~ has at most 4096 entries, two alternating solves are followed by
    Levenberg–Marquardt on both factors at once (:mod:`netmorph_core.morph.bilinear`), each
    step counting as one iteration.
    ``method="practical"`` (Algorithm 2): one factor's kernel is shrunk until a single solve
    is exact, the shrunk factor is zero-padded back (any parity), choosing the exact
    candidate with the most non-zeros. ``tol`` defaults to 1e-10 (float64 G) or 1e-5
    (float32). Raises ``ValueError`` when no exact decomposition is found, unless
    ``allow_approximate`` (then ``exact=False`` with the residual). Filters have G's dtype.
    ``method="stable"``: every entry non-zero and on a consistent scale, see
    :func:`netmorph_core.morph.stable.stable_depth` (``max_iter`` counts its rounds).
    With the default ``tol`` and no ``allow_approximate``, the general and stable methods
    raise ``ValueError`` before any work where counting rules out a dense exact solution
    (:attr:`Solvability.dense_count_ok`: parameters less the channel gauge's C1² against the
    equations of G~, and no identity-augmented pair), e.g. 3×3 → (3×3, 3×3) at width ≤ C.
    ``groups`` = g: G (C2, C0/g, *K) is grouped and so are F1 (width, C0/g, *k1) and
    F2 (C2, width/g, *k2); see :mod:`netmorph_core.morph.grouped`.
    """
    if groups != 1:
        return grouped_depth(
            g,
            width,
            k1,
            k2,
            groups=groups,
            method=method,
            seed=seed,
            max_iter=max_iter,
            tol=tol,
            allow_approximate=allow_approximate,
            backend=backend,
            per_group=morph_depth,
        )
    if method == "stable":
        return stable_depth(
            g,
            width,
            k1,
            k2,
            seed=seed,
            tol=tol,
            max_iter=max_iter,
            allow_approximate=allow_approximate,
            backend=backend,
        )
    g = v.as_filter(g, "G")
    ndim = g.ndim - 2
    width = v.positive_int(width, "width")
    kernel1 = layer_kernel(k1, ndim, "k1")
    kernel2 = layer_kernel(k2, ndim, "k2")
    kt = v.effective_size(g.shape[2:], kernel2, kernel1, "k1, k2")
    opts = check_options(g, method, seed, max_iter, tol, allow_approximate, backend)
    info = solvability(g.shape, width, kernel1, kernel2)
    c2, c0 = g.shape[:2]
    g_tilde = pad_centered(g.astype(np.float64), kt)

    if opts.method == "practical":
        if not info.exact_practical and not opts.allow_approximate:
            raise ValueError(f"no exact practical depth morph exists:\n{info.explain()}")
        offset = tuple((t - k) // 2 for t, k in zip(kt, g.shape[2:]))
        cands = splits(g.shape, width, kernel1, kernel2)
        sol = practical_search(
            g.astype(np.float64),
            offset,
            [c for c in cands if c.red.count_ok],
            [c for c in cands if not c.red.count_ok],
            opts,
        )
        if sol is None:
            raise ValueError(
                f"no reduced kernel gave an exact practical depth morph:\n{info.explain()}"
            )
        return finish(g, g_tilde, [sol.f1, sol.f2], sol.iterations, opts)

    if not opts.allow_approximate and tol is None:
        check_dense_count(info, "general")
    shapes = [(width, c0, *kernel1), (c2, width, *kernel2)]
    if prefer_augmented(info):
        pair = augmented_pair(
            g_tilde, g.shape[2:], width, kernel1, kernel2, info.augmented_side, opts.rng
        )
        return finish(g, g_tilde, list(pair), 0, opts)
    start = random_start(shapes, g_tilde, opts.rng)
    ratios = [
        width * math.prod(kernel1) / (c2 * math.prod(kt)),
        width * math.prod(kernel2) / (c0 * math.prod(kt)),
    ]
    order = general_order([info.f1_last_exact, info.f2_last_exact], ratios)
    bilinear = use_bilinear(info)
    filters, iterations, residual = alternate(
        g_tilde,
        start,
        order,
        lambda p, fs: solve_end_layer(opts.backend, g_tilde, fs, p),
        opts.stop_tol,
        min(opts.max_iter, WARMUP_SOLVES) if bilinear else opts.max_iter,
    )
    if bilinear and residual > opts.stop_tol and iterations < opts.max_iter:
        f1, f2, steps, residual = solve_bilinear(
            opts.backend, g_tilde, *filters, opts.stop_tol, opts.max_iter - iterations
        )
        filters, iterations = [f1, f2], iterations + steps
    if residual > opts.stop_tol and not opts.allow_approximate:
        raise ValueError(
            f"the general depth morph did not reach tol={opts.tol} (relative residual "
            f"{residual:.3g} after {iterations} solves):\n{info.explain()}"
        )
    filters = list(balanced_pair(filters[0], filters[1], opts.rng))
    return finish(g, g_tilde, filters, iterations, opts)
