"""Stable morphing: an exact decomposition of G~ whose parameters are all non-zero, on one scale.

Zero-padded parameters (the practical algorithm's shrunk kernels, IdMorph's identities) make
continued training unstable. This solver looks for F_P ⊛ … ⊛ F_0 = G~ with every entry
|w| ≥ m·std(F_p) (m = ``min_magnitude``), every filter rescaled to the same standard deviation.
With x all the entries and r(x) = F_P ⊛ … ⊛ F_0 − G~ it is a projected ("modified") descent:

1. Start: for a pair where no one-sided solve is exact but the identity-augmented pair exists
   (:mod:`netmorph_core.morph.augmented`), that pair (exact, dense, closed form) with its
   entries lifted above the floor by linear moves of its branch and mixing; done if that
   succeeds. Otherwise
   the general algorithm (random orthogonal factors, one-sided deconvolutions nearest
   the iterate; exact in one solve when a per-side condition holds) for 2·(P + 1) solves,
   then Gauss–Newton on all factors at once with minimum-norm steps (:func:`gauss_newton`;
   for a pair in the bilinear regime :func:`netmorph_core.morph.bilinear.solve_bilinear`)
   if it is not yet exact: δ = −J⁺r is the smallest change that zeroes the linearised
   residual, so the iterate lands on the solution set near its dense start and stays dense.
2. Fast path, exact start: a two-factor start is balanced (:func:`balanced_pair`), then the
   channel gauge lifts the small entries above the floor by linear corrections
   (:func:`netmorph_core.morph.gauge.repair_floor`), which leave the composition exactly
   unchanged. Done when no entry is small.
3. Otherwise keep away from zero by search: the entries with |w| < m·σ_p are pushed to
   ±1.2·m·σ_p (sign kept) and frozen there (infinite weight in the step norm: those columns
   of J are dropped), then Gauss–Newton projects the other entries back onto the exact set
   (least squares when it can no longer be reached). Rounds repeat until no entry is small
   and the residual is within tolerance, at most ``max_iter`` rounds, stopping early after 3
   rounds without improving the best residual of a floor-respecting iterate; each round
   rebalances the scales.
4. If that finds no exact solution, steps 1–3 run again from the practical solution (exact,
   with zero-padded taps that the rounds push off zero), and the better result is kept.
5. The floor is enforced on what is returned (entries still below it are pushed; this only
   changes an inexact result), the filters are rescaled by s_p with Π s_p = 1 to one standard
   deviation (ratios |w|/σ_p and the composition unchanged) and cast to G's dtype.

When no exact all-non-zero solution is found the residual is reported, and ``ValueError``
raised unless ``allow_approximate``; the floor holds either way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from .. import _validation as v
from ..reference import pad_centered
from ._scaling import chain_morph, depth_layout, subnet_layout
from .augmented import augmented_pair, prefer_augmented
from .bilinear import solve_bilinear, use_bilinear
from .chain import chain_effective_size, check_layers, general_chain, practical_chain
from .common import Options, Seed, balance, check_options, relative_residual
from .conditioning import balanced_pair
from .counting import check_chain_count
from .gauge import repair_floor
from .graph import Module, ModuleShape, bind_to_layer, conv_edge
from .newton import gauss_newton
from .result import MorphResult
from .solvability import check_dense_count, layer_kernel, solvability

#: Default floor on |w| / std(F_p).
DEFAULT_MIN_MAGNITUDE = 0.05
#: Pushed entries land at PUSH · min_magnitude · std, a margin over the floor.
_PUSH = 1.2
#: Gauss–Newton steps per projection onto the exact set (twice that for the first one).
_PROJECTION_STEPS = 30
#: The projections aim this far below the stopping tolerance (rounding, rescaling, casting).
_MARGIN = 1e-2
#: Rounds without a relative improvement of _PROGRESS in the best floor-respecting residual
#: before a search stops.
_PATIENCE = 3
_PROGRESS = 1e-3


def _check_min_magnitude(m: object) -> float:
    return v.real_number(m, "min_magnitude", low=0.0, high=0.5, low_open=True)


def _small(f: np.ndarray, m: float) -> np.ndarray:
    return np.abs(f) < m * np.std(f)


def _push(f: np.ndarray, small: np.ndarray, m: float) -> np.ndarray:
    """``f`` with its ``small`` entries set to ±PUSH·m·std(f) (sign kept, + for exact zeros)."""
    out = f.copy()
    sign = np.where(f[small] < 0, -1.0, 1.0)
    out[small] = sign * (_PUSH * m * float(np.std(f)))
    return out


def _enforce_floor(f: np.ndarray, m: float) -> np.ndarray:
    """Push until no entry is below m·std (one pass in practice; pushing shifts the std)."""
    for _ in range(20):
        small = _small(f, m)
        if not small.any():
            break
        f = _push(f, small, m)
    return f


def _exact_start(
    g: np.ndarray,
    shape: ModuleShape,
    g_tilde: np.ndarray,
    widths: list[int],
    kernels: list[tuple[int, ...]],
    start: str,
    opts: Options,
    m: float,
) -> tuple[dict[str, np.ndarray], float, int]:
    """The ``start`` method's solution (2·(P + 1) solves at most), then Gauss–Newton towards
    the exact set; for a general start where the identity-augmented pair exists and no
    one-sided solve is exact, that pair with its entries lifted above the floor m (when the
    lifting succeeds).
    Returns (filters by edge name, residual, solves and steps)."""
    target = opts.stop_tol * _MARGIN
    names = [e.name for e in shape.module.edges]
    info = solvability(g.shape, widths[0], *kernels) if len(widths) == 2 else None
    if start == "general" and info and prefer_augmented(info):
        pair = augmented_pair(
            g_tilde, g.shape[2:], widths[0], *kernels, info.augmented_side, opts.rng, m
        )
        if not any(_small(f, m).any() for f in pair):
            return dict(zip(names, pair)), relative_residual(g_tilde, pair), 0
        if not opts.allow_approximate:
            check_dense_count(info, "stable", generic=True)
    quick = replace(opts, max_iter=2 * len(widths), stop_tol=target, allow_approximate=True)
    if start == "general":
        found, iterations, _, _ = general_chain(g_tilde, g.shape[1], widths, kernels, quick)
    else:
        found, iterations = practical_chain(g, g_tilde.shape[2:], widths, kernels, quick)
    if info and use_bilinear(info, augmented_failed=True):
        f1, f2, steps, residual = solve_bilinear(
            opts.backend, g_tilde, *found, target, 2 * _PROJECTION_STEPS
        )
        return dict(zip(names, (f1, f2))), residual, iterations + steps
    filters = dict(zip(names, (np.asarray(f, dtype=np.float64) for f in found)))
    filters, steps, residual = gauss_newton(
        shape, g_tilde, filters, names, opts.backend, target, 2 * _PROJECTION_STEPS
    )
    return filters, residual, iterations + steps


def _search(
    shape: ModuleShape,
    g_tilde: np.ndarray,
    filters: dict[str, np.ndarray],
    residual: float,
    m: float,
    opts: Options,
) -> tuple[list[np.ndarray], float, int]:
    """Step 3 of the module docstring from the exact (or nearly exact) ``filters``.

    Returns the floor-respecting filters with the smallest residual found, that residual and
    the number of Gauss–Newton steps and rounds used.
    """
    target = opts.stop_tol * _MARGIN
    names = [e.name for e in shape.module.edges]
    iterations = 0
    weights = {n: np.ones(f.shape) for n, f in filters.items()}
    best: list[np.ndarray] = []
    best_residual, stalled = math.inf, 0
    for _ in range(opts.max_iter):
        filters = dict(zip(names, balance([filters[n] for n in names])))
        small = {n: _small(f, m) for n, f in filters.items()}
        if not any(s.any() for s in small.values()):
            if residual <= target:
                return [filters[n] for n in names], residual, iterations
            candidate = [filters[n] for n in names]
        else:
            candidate = [_enforce_floor(filters[n], m) for n in names]
        candidate_residual = relative_residual(g_tilde, candidate)
        if candidate_residual < (1.0 - _PROGRESS) * best_residual:
            best, best_residual, stalled = candidate, candidate_residual, 0
        else:
            stalled += 1
            if stalled >= _PATIENCE:
                break
        for n in names:
            filters[n] = _push(filters[n], small[n], m)
            weights[n][small[n]] = np.inf
        filters, steps, residual = gauss_newton(
            shape, g_tilde, filters, names, opts.backend, target, _PROJECTION_STEPS, weights
        )
        iterations += steps + 1
    return best, best_residual, iterations


@chain_morph("stable_subnet", subnet_layout)
def stable_subnet(
    g: np.ndarray,
    layers: Sequence[tuple[int | None, int | Sequence[int] | None]],
    *,
    seed: Seed = None,
    tol: float | None = None,
    max_iter: int = 50,
    min_magnitude: float = DEFAULT_MIN_MAGNITUDE,
    allow_approximate: bool = False,
    backend: str = "auto",
) -> MorphResult:
    """Morph G (C2, C0, *K) into ``layers`` = [(w_0, K_0), …, (C2 or None, K_P)] (at least two)
    with every entry of every F_p at least ``min_magnitude``·std(F_p) in magnitude.

    F_P ⊛ … ⊛ F_0 = G~, G zero-padded centred to Σ K_p − P (see the module docstring for the
    algorithm). ``max_iter`` bounds the push-and-project rounds of each search; ``tol``
    (1e-10 float64 / 1e-5 float32) the relative residual; ``min_magnitude`` in (0, 0.5].
    Raises ``ValueError`` when the residual exceeds ``tol`` unless ``allow_approximate``; the
    floor holds either way. Filters in data-flow order with equal standard deviations and G's
    dtype; ``method`` is "stable"; ``iterations`` counts deconvolutions, Gauss–Newton steps and
    rounds. G is not modified. With the default ``tol`` and no ``allow_approximate``, a chain
    that counting rules out (:func:`netmorph_core.morph.counting.check_chain_count`) raises
    ``ValueError`` before any work.
    """
    g = v.as_filter(g, "G")
    widths, kernels = check_layers(g, layers)
    if len(widths) < 2:
        raise ValueError("stable morphing needs at least two layers (one layer is G zero-padded)")
    kt = chain_effective_size(g.shape[2:], kernels)
    opts = check_options(g, "general", seed, max_iter, tol, allow_approximate, backend)
    m = _check_min_magnitude(min_magnitude)
    if allow_approximate is False and tol is None:
        check_chain_count(g.shape, widths, kernels, "stable subnet morph")
    g64 = g.astype(np.float64)
    g_tilde = pad_centered(g64, kt)
    path = Module(
        [conv_edge(f"F{p}", f"v{p}", f"v{p + 1}", k) for p, k in enumerate(kernels)],
        channels={f"v{p + 1}": w for p, w in enumerate(widths[:-1])},
    )
    shape = bind_to_layer(path, g)
    target = opts.stop_tol * _MARGIN

    best: list[np.ndarray] = []
    best_residual, iterations, repaired_exactly = math.inf, 0, False
    for start in ("general", "practical"):
        exact, residual, used = _exact_start(g64, shape, g_tilde, widths, kernels, start, opts, m)
        iterations += used
        if residual <= target:
            start_filters = list(exact.values())
            if any(_small(f, m).any() for f in start_filters):
                if len(start_filters) == 2:
                    start_filters = list(balanced_pair(*start_filters, opts.rng))
                repaired, sweeps = repair_floor(balance(start_filters), m)
            else:  # already above the floor (the identity-augmented pair)
                repaired, sweeps = start_filters, 0
            repaired = balance(repaired)
            iterations += sweeps
            residual = relative_residual(g_tilde, repaired)
            if residual <= target and not any(_small(f, m).any() for f in repaired):
                best, best_residual, repaired_exactly = repaired, residual, True
                break
        filters, residual, used = _search(shape, g_tilde, exact, residual, m, opts)
        iterations += used
        if residual < best_residual:
            best, best_residual = filters, residual
        if best_residual <= target:
            break
    # A repaired start is balanced and above the floor, and its float64 residual is known.
    final = best if repaired_exactly else balance([_enforce_floor(f, m) for f in best])
    out = tuple(np.ascontiguousarray(f, dtype=g.dtype) for f in final)
    if repaired_exactly and g.dtype == np.float64:
        residual = best_residual
    else:
        residual = relative_residual(g_tilde, out)
    if residual > opts.tol and not opts.allow_approximate:
        raise ValueError(
            f"stable morph residual {residual:.3g} > tol={opts.tol} with every entry at least "
            f"{m}·std of its filter; widen the layers, lower min_magnitude, raise max_iter, or "
            "use allow_approximate=True"
        )
    return MorphResult(
        filters=out,
        residual=residual,
        iterations=iterations,
        exact=residual <= opts.tol,
        method="stable",
        kernel_sizes=tuple(tuple(f.shape[2:]) for f in out),
    )


@chain_morph("stable_depth", depth_layout)
def stable_depth(
    g: np.ndarray,
    width: int,
    k1: int | Sequence[int] | None = None,
    k2: int | Sequence[int] | None = None,
    *,
    seed: Seed = None,
    tol: float | None = None,
    max_iter: int = 50,
    min_magnitude: float = DEFAULT_MIN_MAGNITUDE,
    allow_approximate: bool = False,
    backend: str = "auto",
) -> MorphResult:
    """Morph G (C2, C0, *K) into F1 (width, C0, *k1) then F2 (C2, width, *k2), F2 ⊛ F1 = G~,
    with every entry |w| ≥ ``min_magnitude``·std of its filter: :func:`stable_subnet` with
    layers [(width, k1), (C2, k2)]. A linear G takes k1 = k2 = None, () or 1. With the default
    ``tol`` and no ``allow_approximate``, a configuration where counting rules out a dense
    exact solution (:attr:`Solvability.dense_count_ok`) raises ``ValueError`` before any work;
    an explicit ``tol`` runs the search for the best floor-respecting result within it."""
    g = v.as_filter(g, "G")
    ndim = g.ndim - 2
    kernel1 = layer_kernel(k1, ndim, "k1")
    kernel2 = layer_kernel(k2, ndim, "k2")
    v.effective_size(g.shape[2:], kernel2, kernel1, "k1, k2")
    if allow_approximate is False and tol is None:
        check_dense_count(solvability(g.shape, width, kernel1, kernel2), "stable")
    return stable_subnet(
        g,
        [(width, kernel1), (g.shape[0], kernel2)],
        seed=seed,
        tol=tol,
        max_iter=max_iter,
        min_magnitude=min_magnitude,
        allow_approximate=allow_approximate,
        backend=backend,
    )
