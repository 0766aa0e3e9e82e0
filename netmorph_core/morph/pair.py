"""The two-factor algorithms of the paper on one pair G~ = F2 ⊛ F1: Algorithm 1's alternating
one-sided solves and Algorithm 2's reduced-kernel candidates (``Split``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from types import ModuleType

import numpy as np

from ..reference import pad_at
from ..solver import solve_deconv
from .common import Options, compose_chain, random_start, relative_residual
from .solvability import Reduction, practical_reductions


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


def general_order(exact: Sequence[bool], ratios: Sequence[float]) -> list[int]:
    """The order Algorithm 1 solves layers in: first a layer whose exactness condition holds
    (first layer, then last, then middle ones), else the one with the most unknowns per
    equation; then the others in data-flow order."""
    n = len(exact)
    priority = [0, n - 1, *range(1, n - 1)] if n > 1 else [0]
    exact_layers = [p for p in priority if exact[p]]
    first = exact_layers[0] if exact_layers else max(range(n), key=lambda p: (ratios[p], -p))
    return [first, *(p for p in range(n) if p != first)]
