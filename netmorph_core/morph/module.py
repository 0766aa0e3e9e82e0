"""Module morphing: a layer G becomes a whole module (a DAG of layers) with the same function.

The module equation Σ_{paths s→t} F_{p,last} ⊛ … ⊛ F_{p,1} = G~ (G zero-padded centred to the
module's effective size Kt, see :mod:`netmorph_core.morph.graph`) is solved for every
convolution edge; identity edges are fixed.

1. Algorithm 1 (:func:`reduce_module`) merges series and parallel edges until one edge is left
   (simple-morphable module) or an irreducible remainder.
2. A single remaining edge takes G~. An irreducible remainder is solved by Algorithm 2: every
   free edge starts as random noise, then each edge j in turn solves
   G~ = C1 ⊛ F_j ⊛ C2 + C3 with the others fixed, C1 = Σ of the path compositions from j's
   head to the sink, C2 = Σ from the source to j's tail (the sum over paths through j factors
   as C1 ⊛ F_j ⊛ C2 by bilinearity) and C3 = the paths avoiding j: one-sided deconvolution when
   j leaves the source or enters the sink, two-sided otherwise, nearest to the current F_j.
   Block coordinate descent slows down to a sublinear crawl on hard modules, so once a whole
   sweep fails to halve the residual, Gauss–Newton on all free edges at once
   (:mod:`netmorph_core.morph.newton`) takes over.
3. The reduction is undone step by step: a TYPE-I merge by a depth morph
   (:func:`morph_depth` with the chosen ``method``; an identity part just divides by its
   scale), a TYPE-II merge by a split (an identity part is subtracted; two convolutions share
   the taps they both cover through :func:`split_filter` and the larger one takes the rest).
4. When the expanded filters miss G~ (a depth morph through a vertex too narrow to be exact on
   its own), step 2 refines the whole module starting from them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import ModuleType

import numpy as np

from .. import _validation as v
from ..reference import pad_centered
from ..reference.two_sided import deconv_two_sided_ref
from ..solver import solve_deconv
from ._scaling import module_morph
from .chain import deconv_two_sided_lsqr
from .common import Options, Seed, check_options
from .counting import check_module_count
from .depth import morph_depth
from .graph import (
    Edge,
    Module,
    ModuleShape,
    Reduction,
    bind,
    bind_to_layer,
    delta,
    edge_kernel,
    module_kernel,
    path_sums,
    reduce_module,
)
from .newton import crop_centred, gauss_newton, relative_error
from .result import nonzero_ratio
from .split import split_filter

#: Largest two-sided operator (rows × columns) solved explicitly: 2**24 entries = 128 MiB.
EXPLICIT_TWO_SIDED_ENTRIES = 2**24


@dataclass(frozen=True)
class ModuleMorphResult:
    """The filters a layer G was morphed into, one per edge of ``module``, and how well the
    module reproduces G.

    ``filters`` maps every edge name (module order) to its kernel (C_head, C_tail, *K) in G's
    dtype, identity edges included (their fixed scale·I). ``residual`` is
    ‖module(filters) − G~‖ / ‖G~‖; ``iterations`` counts the single-edge solves of Algorithm 2
    and of the depth morphs; ``reduction`` is what Algorithm 1 found (``reduction.reducible``:
    simple-morphable). ``channels`` gives every vertex's channel count, ``effective_size`` Kt.
    """

    filters: dict[str, np.ndarray]
    residual: float
    iterations: int
    exact: bool
    method: str
    module: Module
    reduction: Reduction
    channels: dict[str, int]
    effective_size: tuple[int, ...]

    @property
    def conv_filters(self) -> dict[str, np.ndarray]:
        """The filters of the convolution edges only (the new parameters)."""
        return {e.name: self.filters[e.name] for e in self.module.edges if not e.identity}

    @property
    def nonzero_ratio(self) -> float:
        """Non-zero entries over all entries of the convolution edges' filters."""
        return nonzero_ratio(tuple(self.conv_filters.values()))

    @property
    def nonzero_ratios(self) -> dict[str, float]:
        """Non-zero ratio of each convolution edge's filter."""
        return {name: nonzero_ratio((f,)) for name, f in self.conv_filters.items()}


def _crop_to_support(t: np.ndarray) -> np.ndarray:
    """T cropped symmetrically to the smallest centred window holding all its non-zeros.

    A merged series edge often carries a small kernel zero-padded to the path's size (e.g. a
    1×1 0.5·I inside a 5×5 G~); the depth morph of the cropped kernel is exactly the same
    decomposition but far easier to solve (Algorithm 2 needs K1 ≥ K).
    """
    nz = np.nonzero(t)
    if len(nz[0]) == 0:
        return t
    size = []
    for axis, n in enumerate(t.shape[2:], start=2):
        centre = (n - 1) / 2
        reach = int(np.max(np.abs(nz[axis] - centre)) * 2)
        size.append(min(n, reach + 1))
    return crop_centred(t, tuple(size))


def _solve_edge(
    shape: ModuleShape,
    g_tilde: np.ndarray,
    filters: dict[str, np.ndarray],
    name: str,
    impl: ModuleType,
) -> np.ndarray:
    """F_j nearest its current value minimising ‖C1 ⊛ F_j ⊛ C2 + C3 − G~‖ (eq. 7)."""
    m = shape.module
    e = m.edge(name)
    k = shape.kernels[name]
    pre = path_sums(shape, filters, "in")[e.tail]
    post = path_sums(shape, filters, "out")[e.head]
    without = dict(filters)
    without[name] = np.zeros_like(filters[name])
    c3 = module_kernel(shape, without)
    size = tuple(a + b + c - 2 for a, b, c in zip(shape.span[e.head], k, shape.reach[e.tail]))
    target = np.ascontiguousarray(crop_centred(g_tilde - c3, size))
    current = filters[name]
    if e.tail == m.source and e.head == m.sink:
        return target
    if e.tail == m.source:
        x = solve_deconv(impl, target, post, "outer", k, current)
    elif e.head == m.sink:
        x = solve_deconv(impl, target, pre, "inner", k, current)
    elif target.size * current.size <= EXPLICIT_TWO_SIDED_ENTRIES:
        x = deconv_two_sided_ref(target, post, pre, k, current)
    else:
        x = deconv_two_sided_lsqr(impl, target, post, pre, k, current)
    return np.asarray(x, dtype=np.float64)


def algorithm2(
    shape: ModuleShape,
    g_tilde: np.ndarray,
    filters: dict[str, np.ndarray],
    impl: ModuleType,
    stop_tol: float,
    max_iter: int,
) -> tuple[dict[str, np.ndarray], int, float]:
    """Algorithm 2: solve the free (convolution) edges one at a time, in module order, with the
    others fixed, until the relative residual is ≤ ``stop_tol``, ``max_iter`` single-edge
    solves, or a whole sweep fails to halve the residual (block coordinate descent has then
    reached its slow, sublinear phase).

    ``filters`` holds a float64 kernel for every edge; returns (filters, solves, residual).
    """
    filters = dict(filters)
    free = [e.name for e in shape.module.edges if not e.identity]
    residual = relative_error(g_tilde, module_kernel(shape, filters))
    solves = 0
    sweep_start = residual
    while free and residual > stop_tol and solves < max_iter:
        name = free[solves % len(free)]
        filters[name] = _solve_edge(shape, g_tilde, filters, name, impl)
        solves += 1
        residual = relative_error(g_tilde, module_kernel(shape, filters))
        if solves % len(free) == 0:
            if residual > 0.5 * sweep_start:
                break
            sweep_start = residual
    return filters, solves, residual


def solve_module(
    shape: ModuleShape,
    g_tilde: np.ndarray,
    filters: dict[str, np.ndarray],
    impl: ModuleType,
    stop_tol: float,
    max_iter: int,
) -> tuple[dict[str, np.ndarray], int, float]:
    """:func:`algorithm2` from ``filters``, then, if it has not reached ``stop_tol``,
    Gauss–Newton on all free edges at once (:func:`gauss_newton`) with the rest of the
    ``max_iter`` budget (one step counts as one iteration)."""
    filters, solves, residual = algorithm2(shape, g_tilde, filters, impl, stop_tol, max_iter)
    if residual <= stop_tol or solves >= max_iter:
        return filters, solves, residual
    free = [e.name for e in shape.module.edges if not e.identity]
    filters, steps, residual = gauss_newton(
        shape, g_tilde, filters, free, impl, stop_tol, max_iter - solves
    )
    return filters, solves + steps, residual


def he_noise(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise of std √(2 / fan-in) for a filter of ``shape`` (C_out, C_in, *K)."""
    return rng.standard_normal(shape) * math.sqrt(2.0 / math.prod(shape[1:]))


def random_module_start(
    shape: ModuleShape, g_tilde: np.ndarray, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """He-like noise (std √(2 / fan-in)) on every convolution edge, identities fixed; the noise
    is scaled by one factor α^(1/L) (L the most convolution edges on a path) so that the
    module's kernel has about the norm of G~."""
    m = shape.module
    filters = {}
    for e in m.edges:
        if e.identity:
            filters[e.name] = shape.identity_kernel(e.name)
        else:
            filters[e.name] = he_noise(shape.filter_shape(e.name), rng)
    depth = {m.source: 0}
    for u in m.vertices[1:]:
        depth[u] = max(depth[e.tail] + (not e.identity) for e in m.in_edges(u))
    longest = depth[m.sink]
    current = float(np.linalg.norm(module_kernel(shape, filters)))
    target = float(np.linalg.norm(g_tilde))
    if longest and current > 0 and target > 0:
        alpha = (target / current) ** (1.0 / longest)
        filters = {n: f if m.edge(n).identity else f * alpha for n, f in filters.items()}
    return filters


def _split_parallel(
    t: np.ndarray, ka: tuple[int, ...], kb: tuple[int, ...], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """F_a (size ka) + F_b (size kb), both centred, reproducing T where their windows reach:
    the taps both cover are split at random (:func:`split_filter`), the others go to the one
    edge that covers them."""
    size = t.shape[2:]
    cover_a = pad_centered(np.ones((1, 1, *ka)), size)[0, 0] > 0
    cover_b = pad_centered(np.ones((1, 1, *kb)), size)[0, 0] > 0
    t1, t2 = split_filter(t, 2, seed=rng, mode="random")
    full_a = np.where(cover_a & cover_b, t1, np.where(cover_a, t, 0.0))
    full_b = np.where(cover_a & cover_b, t2, np.where(cover_b, t, 0.0))
    return np.ascontiguousarray(crop_centred(full_a, ka)), np.ascontiguousarray(
        crop_centred(full_b, kb)
    )


def _expand(
    reduction: Reduction,
    values: dict[str, np.ndarray],
    channels: Mapping[str, int],
    ndim: int,
    opts: Options,
    backend: str,
) -> int:
    """Undo the reduction in place: give every merged part its kernel from the merged edge's.

    Returns the number of single-layer solves the depth morphs used.
    """
    solves = 0

    def kernel(e: Edge) -> tuple[int, ...]:
        return edge_kernel(e, ndim)

    for step in reduction.morph_sequence:
        t = values.pop(step.merged)
        a, b = (reduction.edges[n] for n in step.parts)
        for e in (a, b):
            if e.identity:
                values[e.name] = e.scale * delta(channels[e.tail], ndim)
        if a.identity and b.identity:
            continue
        if step.kind == "I":
            if a.identity or b.identity:
                ident, other = (a, b) if a.identity else (b, a)
                values[other.name] = (
                    t / ident.scale
                    if ident.scale != 0
                    else he_noise(
                        (channels[other.head], channels[other.tail], *kernel(other)), opts.rng
                    )
                )
                continue
            res = morph_depth(
                _crop_to_support(t),
                channels[a.head],
                kernel(a),
                kernel(b),
                method=opts.method,
                seed=opts.rng,
                max_iter=opts.max_iter,
                tol=opts.tol,
                allow_approximate=True,
                backend=backend,
            )
            values[a.name], values[b.name] = (np.asarray(f, dtype=np.float64) for f in res.filters)
            solves += res.iterations
        elif a.identity or b.identity:
            ident, other = (a, b) if a.identity else (b, a)
            values[other.name] = t - pad_centered(values[ident.name], t.shape[2:])
        else:
            values[a.name], values[b.name] = _split_parallel(t, kernel(a), kernel(b), opts.rng)
    return solves


@module_morph
def morph_module(
    g: np.ndarray,
    module: Module,
    *,
    method: str = "general",
    seed: Seed = None,
    max_iter: int = 300,
    tol: float | None = None,
    allow_approximate: bool = False,
    backend: str = "auto",
) -> ModuleMorphResult:
    """Morph the layer G (C_out, C_in, *K) into ``module`` so that its kernel equals G~.

    The module's source carries C_in channels, its sink C_out; inner vertices take the counts
    given in ``Module(..., channels=...)`` (or shared through identity edges). G is zero-padded
    centred to the module's effective size Kt (Kt − K even and ≥ 0). See the module docstring
    for the algorithm; ``method`` ("general" or "practical") is the depth morph used for series
    edges, ``max_iter`` bounds each Algorithm 2 run (single-edge solves) and each depth morph.
    ``tol`` defaults to 1e-10 (float64 G) or 1e-5 (float32). Raises ``ValueError`` when the
    residual exceeds ``tol``, unless ``allow_approximate`` (then ``exact=False``). The filters
    have G's dtype; G and the module are not modified. With the default ``tol`` and no
    ``allow_approximate``, the general method raises ``ValueError`` before any work where
    counting rules out any exact solution for a generic G
    (:func:`netmorph_core.morph.counting.check_module_count`).
    """
    g = v.as_filter(g, "G")
    if not isinstance(module, Module):
        raise TypeError(f"module must be a Module, got {type(module).__name__}")
    shape = bind_to_layer(module, g)
    if all(e.identity for e in module.edges):
        raise ValueError("the module has no convolution edge to morph G into")
    opts = check_options(g, method, seed, max_iter, tol, allow_approximate, backend)
    if opts.method == "general" and not opts.allow_approximate and tol is None:
        check_module_count(shape, g.shape[2:], "general module morph")
    g_tilde = pad_centered(g.astype(np.float64), shape.effective_size)
    ndim = g.ndim - 2

    reduction = reduce_module(module)
    rest = bind(
        reduction.remainder,
        ndim,
        [(u, c, f"vertex {u!r}") for u, c in shape.channels.items()],
    )
    iterations = 0
    if reduction.reducible:
        (only,) = reduction.remainder.edges
        values = {only.name: rest.identity_kernel(only.name) if only.identity else g_tilde}
    else:
        start = random_module_start(rest, g_tilde, opts.rng)
        values, iterations, _ = solve_module(
            rest, g_tilde, start, opts.backend, opts.stop_tol, opts.max_iter
        )
    iterations += _expand(reduction, values, shape.channels, ndim, opts, backend)
    values, solves, _ = solve_module(
        shape, g_tilde, values, opts.backend, opts.stop_tol, opts.max_iter
    )
    iterations += solves

    out = {e.name: np.ascontiguousarray(values[e.name], dtype=g.dtype) for e in module.edges}
    residual = relative_error(
        g_tilde, module_kernel(shape, {n: f.astype(np.float64) for n, f in out.items()})
    )
    if residual > opts.tol and not opts.allow_approximate:
        kind = (
            "simple-morphable (Algorithm 1 reduced it to one edge)"
            if reduction.reducible
            else f"irreducible ({len(reduction.remainder.edges)} edges left by Algorithm 1)"
        )
        raise ValueError(
            f"module morph residual {residual:.3g} > tol={opts.tol} after {iterations} "
            f"single-layer solves; the module is {kind}; widen its inner vertices, raise "
            "max_iter, or use allow_approximate=True"
        )
    return ModuleMorphResult(
        filters=out,
        residual=residual,
        iterations=iterations,
        exact=residual <= opts.tol,
        method=opts.method,
        module=module,
        reduction=reduction,
        channels=dict(shape.channels),
        effective_size=shape.effective_size,
    )
