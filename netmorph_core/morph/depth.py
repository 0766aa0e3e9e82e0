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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from types import ModuleType

import numpy as np

from .. import _validation as v
from ..backends import select_backend
from ..reference import compose_ref, pad_at, pad_centered
from ..solver import solve_deconv
from ._scaling import chain_morph, depth_layout
from .result import MorphResult
from .solvability import Reduction, layer_kernel, practical_reductions, solvability

METHODS = ("general", "practical", "stable")
#: Default tolerance on the relative residual per input dtype.
DEFAULT_TOL = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 1e-5}

Seed = int | np.integer | np.random.Generator | None


@dataclass(frozen=True)
class Options:
    """Validated options shared by the depth and subnet morphs."""

    method: str
    max_iter: int
    tol: float
    stop_tol: float
    allow_approximate: bool
    rng: np.random.Generator
    backend: ModuleType


def check_options(
    g: np.ndarray,
    method: object,
    seed: object,
    max_iter: object,
    tol: object,
    allow_approximate: object,
    backend: object,
) -> Options:
    """Validate the common keyword arguments (typed errors) and select the backend.

    ``stop_tol`` is the residual the float64 iterations aim for: ``tol`` for float64 output, a
    tenth of it for float32 so that rounding the filters to float32 stays within ``tol``.
    """
    if not isinstance(method, str):
        raise TypeError(f"method must be one of {METHODS}, got {method!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    max_iter = v.positive_int(max_iter, "max_iter")
    if tol is None:
        tol = DEFAULT_TOL[g.dtype]
    if isinstance(tol, bool) or not isinstance(tol, (int, float, np.integer, np.floating)):
        raise TypeError(f"tol must be a positive number or None, got {tol!r}")
    if not (math.isfinite(tol) and tol > 0):
        raise ValueError(f"tol must be a positive finite number, got {tol}")
    if not isinstance(allow_approximate, (bool, np.bool_)):
        raise TypeError(f"allow_approximate must be a bool, got {allow_approximate!r}")
    rng = as_rng(seed)
    impl = select_backend(backend, np.dtype(np.float64), g)
    stop_tol = float(tol) if g.dtype == np.float64 else 0.1 * float(tol)
    return Options(method, max_iter, float(tol), stop_tol, bool(allow_approximate), rng, impl)


def as_rng(seed: object) -> np.random.Generator:
    """A NumPy Generator from None (fresh entropy), a non-negative int, or a Generator."""
    if seed is None or isinstance(seed, np.random.Generator):
        return np.random.default_rng(seed)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be None, a non-negative int or a numpy Generator, got {seed!r}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed}")
    return np.random.default_rng(int(seed))


def compose_chain(filters: Sequence[np.ndarray]) -> np.ndarray:
    """F_last ⊛ … ⊛ F_first for ``filters`` in data-flow order (float64)."""
    out = filters[0].astype(np.float64)
    for f in filters[1:]:
        out = compose_ref(f.astype(np.float64), out)
    return out


def relative_residual(g_tilde: np.ndarray, filters: Sequence[np.ndarray]) -> float:
    """‖F_last ⊛ … ⊛ F_first − G~‖ / ‖G~‖ in float64 (absolute when G~ is zero)."""
    err = float(np.linalg.norm(compose_chain(filters) - g_tilde))
    scale = float(np.linalg.norm(g_tilde))
    return err / scale if scale > 0 else err


def random_start(
    shapes: Sequence[tuple[int, ...]], g_tilde: np.ndarray, rng: np.random.Generator
) -> list[np.ndarray]:
    """He-like random filters (std √(2 / fan-in)), scaled together to the norm of G~."""
    filters = [
        rng.standard_normal(shape) * math.sqrt(2.0 / math.prod(shape[1:])) for shape in shapes
    ]
    target = float(np.linalg.norm(g_tilde))
    current = float(np.linalg.norm(compose_chain(filters)))
    if target > 0 and current > 0:
        alpha = (target / current) ** (1.0 / len(filters))
        filters = [f * alpha for f in filters]
    return filters


def scale_of(f: np.ndarray) -> float:
    """A filter's scale: its standard deviation, or its RMS when that is zero (one entry)."""
    std = float(np.std(f))
    return std if std > 0 else float(np.sqrt(np.mean(np.square(f))))


def balance(filters: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Rescale F_p by s_p (Π s_p = 1) so that every filter has the same :func:`scale_of`
    (the standard deviation); the composition is unchanged. All-zero filters: no change."""
    scales = [scale_of(f) for f in filters]
    if len(filters) == 1 or min(scales) == 0.0:
        return list(filters)
    common = math.exp(sum(math.log(s) for s in scales) / len(scales))
    return [f * (common / s) for f, s in zip(filters, scales)]


def solve_end_layer(
    impl: ModuleType, g_tilde: np.ndarray, filters: Sequence[np.ndarray], p: int
) -> np.ndarray:
    """Solve the first (p = 0) or last layer of the chain with the others fixed (one-sided).

    First: G~ = Post ⊛ X with Post = F_last ⊛ … ⊛ F_1; last: G~ = X ⊛ Pre.
    """
    if p == 0:
        post = compose_chain(filters[1:])
        x = solve_deconv(impl, g_tilde, post, "outer", filters[0].shape[2:], filters[0])
    else:
        pre = compose_chain(filters[:-1])
        x = solve_deconv(impl, g_tilde, pre, "inner", filters[-1].shape[2:], filters[-1])
    return np.asarray(x, dtype=np.float64)


def alternate(
    g_tilde: np.ndarray,
    filters: list[np.ndarray],
    order: Sequence[int],
    solve: Callable[[int, list[np.ndarray]], np.ndarray],
    stop_tol: float,
    max_iter: int,
) -> tuple[list[np.ndarray], int, float]:
    """Algorithm 1 generalised: solve one layer at a time (``order``, cyclically) with the
    others fixed, at least once, until the relative residual is ≤ ``stop_tol`` or after
    ``max_iter`` solves.

    Returns (filters, number of solves, residual).
    """
    filters = list(filters)
    iterations = 0
    while True:
        p = order[iterations % len(order)]
        filters[p] = solve(p, filters)
        iterations += 1
        residual = relative_residual(g_tilde, filters)
        if residual <= stop_tol or iterations >= max_iter:
            return filters, iterations, residual


@dataclass(frozen=True)
class Split:
    """One candidate of Algorithm 2: G~ = F2 ⊛ F1 with F1 (width, C0, *k1), F2 (C2, width, *k2),
    solved as described by ``red``."""

    width: int
    k1: tuple[int, ...]
    k2: tuple[int, ...]
    red: Reduction


def splits(
    g_shape: tuple[int, ...], width: int, k1: tuple[int, ...], k2: tuple[int, ...]
) -> list[Split]:
    """Every Algorithm 2 candidate for G of ``g_shape``, most non-zeros first."""
    reds = practical_reductions(g_shape[1], width, g_shape[0], tuple(g_shape[2:]), k1, k2)
    return [Split(width, k1, k2, r) for r in reds]


@dataclass(frozen=True)
class PairSolution:
    """F1, F2 of one practical step. The non-zero part of each is its core at its offset:
    the shrunk random factor inside its window, or the whole solved factor at offset 0."""

    split: Split
    f1: np.ndarray
    f2: np.ndarray
    f1_core: np.ndarray
    f1_offset: tuple[int, ...]
    f2_core: np.ndarray
    f2_offset: tuple[int, ...]
    iterations: int
    residual: float


def _placement(
    e: tuple[int, ...],
    kernel: tuple[int, ...],
    small_kt: tuple[int, ...],
    slack: tuple[int, ...],
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Offsets (p, q) with p + q = e: G at p in the reduced system of size ``small_kt``, the
    shrunk factor at q in its full window (0 ≤ q ≤ ``slack``); p as centred as possible."""
    p = tuple(
        min(max((t - k) // 2, max(0, ei - s)), min(ei, t - k))
        for ei, k, t, s in zip(e, kernel, small_kt, slack)
    )
    return p, tuple(ei - pi for ei, pi in zip(e, p))


def solve_split(
    g_core: np.ndarray,
    offset: tuple[int, ...],
    split: Split,
    rng: np.random.Generator,
    impl: ModuleType,
) -> PairSolution:
    """One call of Algorithm 1 with max_iter = 1 on the reduced system of ``split``.

    G~ is ``g_core`` (C2, C0, *K) placed at ``offset`` in a zero kernel of size K1 + K2 − 1.
    F1 solved: F2r random (C2, C1, *K2r), F1 = deconv nearest a random start, F2 = F2r placed
    in the K2 window; F2 solved: symmetric. Either way F2 ⊛ F1 reproduces G at ``offset``.
    """
    c2, c0 = g_core.shape[:2]
    width, k1, k2, red = split.width, split.k1, split.k2, split.red
    kt = tuple(a + b - 1 for a, b in zip(k1, k2))
    zero = (0,) * len(kt)
    full_reduced = k2 if red.solved == "F1" else k1
    slack = tuple(f - r for f, r in zip(full_reduced, red.size))
    p, q = _placement(offset, g_core.shape[2:], red.small_kt, slack)
    g_small = pad_at(g_core, red.small_kt, p)
    if red.solved == "F1":
        f2r, f1 = random_start([(width, c0, *k1), (c2, width, *red.size)], g_small, rng)[::-1]
        f1 = np.asarray(solve_deconv(impl, g_small, f2r, "outer", k1, f1), dtype=np.float64)
        f2 = pad_at(f2r, k2, q)
        cores = (f1, zero, f2r, q)
    else:
        f1r, f2 = random_start([(width, c0, *red.size), (c2, width, *k2)], g_small, rng)
        f2 = np.asarray(solve_deconv(impl, g_small, f1r, "inner", k2, f2), dtype=np.float64)
        f1 = pad_at(f1r, k1, q)
        cores = (f1r, q, f2, zero)
    residual = relative_residual(pad_at(g_core, kt, offset), [f1, f2])
    return PairSolution(split, f1, f2, *cores, 1, residual)


def practical_search(
    g_core: np.ndarray,
    offset: tuple[int, ...],
    candidates: Sequence[Split],
    fallback: Sequence[Split],
    opts: Options,
) -> PairSolution | None:
    """Algorithm 2: solve the ``candidates`` in order until one is exact.

    If none is exact and ``opts.allow_approximate``, the ``fallback`` candidates are tried too
    and the solution with the smallest residual is returned; otherwise None. ``iterations``
    counts every deconvolution performed.
    """
    ordered = [*candidates, *fallback] if opts.allow_approximate else list(candidates)
    best: PairSolution | None = None
    for solves, split in enumerate(ordered, start=1):
        sol = solve_split(g_core, offset, split, opts.rng, opts.backend)
        if sol.residual <= opts.stop_tol:
            return replace(sol, iterations=solves)
        if best is None or sol.residual < best.residual:
            best = sol
    if best is None or not opts.allow_approximate:
        return None
    return replace(best, iterations=len(ordered))


def finish(
    g: np.ndarray,
    g_tilde: np.ndarray,
    filters: Sequence[np.ndarray],
    iterations: int,
    opts: Options,
) -> MorphResult:
    """Balance the scales, cast to G's dtype, and measure the residual of what is returned
    (``ValueError`` when it exceeds ``tol``, unless approximate results are allowed)."""
    out = tuple(np.ascontiguousarray(f, dtype=g.dtype) for f in balance(filters))
    residual = relative_residual(g_tilde, out)
    if residual > opts.tol and not opts.allow_approximate:
        raise ValueError(
            f"the {opts.method} morph's filters in {g.dtype} have relative residual "
            f"{residual:.3g} > tol={opts.tol}; use a larger tol or allow_approximate=True"
        )
    return MorphResult(
        filters=out,
        residual=residual,
        iterations=iterations,
        exact=residual <= opts.tol,
        method=opts.method,
        kernel_sizes=tuple(tuple(f.shape[2:]) for f in out),
    )


def general_order(exact: Sequence[bool], ratios: Sequence[float]) -> list[int]:
    """The order Algorithm 1 solves layers in: first a layer whose exactness condition holds
    (first layer, then last, then middle ones), else the one with the most unknowns per
    equation; then the others in data-flow order."""
    n = len(exact)
    priority = [0, n - 1, *range(1, n - 1)] if n > 1 else [0]
    exact_layers = [p for p in priority if exact[p]]
    first = exact_layers[0] if exact_layers else max(range(n), key=lambda p: (ratios[p], -p))
    return [first, *(p for p in range(n) if p != first)]


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
    ``method="practical"`` (Algorithm 2): one factor's kernel is shrunk until a single solve
    is exact, the shrunk factor is zero-padded back (any parity), choosing the exact
    candidate with the most non-zeros. ``tol`` defaults to 1e-10 (float64 G) or 1e-5
    (float32). Raises ``ValueError`` when no exact decomposition is found, unless
    ``allow_approximate`` (then ``exact=False`` with the residual). Filters have G's dtype.
    ``method="stable"``: every entry non-zero and on a consistent scale, see
    :func:`netmorph_core.morph.stable.stable_depth` (``max_iter`` counts its rounds).
    ``groups`` = g: G (C2, C0/g, *K) is grouped and so are F1 (width, C0/g, *k1) and
    F2 (C2, width/g, *k2); see :mod:`netmorph_core.morph.grouped`.
    """
    if groups != 1:
        from .grouped import grouped_depth  # builds on this module

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
        )
    if method == "stable":
        from .stable import stable_depth  # stable builds on this module

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

    shapes = [(width, c0, *kernel1), (c2, width, *kernel2)]
    start = random_start(shapes, g_tilde, opts.rng)
    ratios = [
        width * math.prod(kernel1) / (c2 * math.prod(kt)),
        width * math.prod(kernel2) / (c0 * math.prod(kt)),
    ]
    order = general_order([info.f1_last_exact, info.f2_last_exact], ratios)
    filters, iterations, residual = alternate(
        g_tilde,
        start,
        order,
        lambda p, fs: solve_end_layer(opts.backend, g_tilde, fs, p),
        opts.stop_tol,
        opts.max_iter,
    )
    if residual > opts.stop_tol and not opts.allow_approximate:
        raise ValueError(
            f"the general depth morph did not reach tol={opts.tol} (relative residual "
            f"{residual:.3g} after {iterations} solves):\n{info.explain()}"
        )
    return finish(g, g_tilde, filters, iterations, opts)
