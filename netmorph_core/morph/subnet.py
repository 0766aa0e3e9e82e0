"""Sequential subnet morphing: G~ = F_P ⊛ … ⊛ F_1 ⊛ F_0 (the paper's equation (19)).

G (C2, C0, *K) becomes P + 1 layers F_p (w_p, w_{p−1}, *K_p) with w_{−1} = C0 and w_P = C2;
G~ is G zero-padded centred to Kt = Σ K_p − P.

- ``"practical"``: Algorithm 2 applied recursively. One practical depth morph splits the
  layers at a blob m into L = layers 0..m and R = layers m+1..P (m = 0 is the chain
  G → F_0, R; R → F_1, R'; …), then L and R are split the same way. Of the two factors of a
  step the solved one is dense and the other is random noise shrunk to a small kernel, whose
  small core (at its offset) is the next target. Each step takes the candidate with the most
  non-zeros whose sub-targets are still exactly solvable by the equation counts (a memoised
  look-ahead over kernel sizes, no arithmetic).
- ``"general"``: Algorithm 1 generalised. Every layer starts as random noise (not the practical
  solution, so every entry is non-zero) and layers are solved one at a time with the others
  fixed: the first and last by one-sided deconvolution (the backend), middle layers by the
  two-sided solve G~ = Post ⊛ X ⊛ Pre (explicit operator for small systems, LSQR otherwise,
  both nearest the current iterate). The first layer solved is one whose exactness condition
  holds (:func:`chain_exact_layers`), which makes such chains exact in one solve.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import cache
from types import ModuleType

import numpy as np
from scipy.sparse.linalg import LinearOperator, lsqr

from .. import _validation as v
from ..reference import pad_at, pad_centered, swap_channels
from ..reference.two_sided import deconv_two_sided_ref
from ._scaling import chain_morph, subnet_layout
from .depth import (
    Options,
    Seed,
    Split,
    alternate,
    check_options,
    compose_chain,
    finish,
    general_order,
    practical_search,
    random_start,
    solve_end_layer,
    splits,
)
from .result import MorphResult
from .solvability import layer_kernel, taps

#: Two-sided systems with at most this many operator entries are solved with the explicit
#: operator (``deconv_two_sided_ref``); larger ones matrix-free with LSQR.
EXPLICIT_TWO_SIDED_ENTRIES = 2**22


def check_layers(g: np.ndarray, layers: object) -> tuple[list[int], list[tuple[int, ...]]]:
    """Validate ``layers`` = [(width, kernel_size), ...] against G; returns widths, kernels."""
    if not isinstance(layers, Sequence) or isinstance(layers, str) or len(layers) == 0:
        raise TypeError(f"layers must be a non-empty list of (width, kernel_size), got {layers!r}")
    ndim = g.ndim - 2
    c2 = g.shape[0]
    widths, kernels = [], []
    for p, entry in enumerate(layers):
        if not isinstance(entry, Sequence) or isinstance(entry, str) or len(entry) != 2:
            raise TypeError(f"layers[{p}] must be a (width, kernel_size) pair, got {entry!r}")
        width, k = entry
        last = p == len(layers) - 1
        if last and width is None:
            width = c2
        widths.append(v.positive_int(width, f"layers[{p}] width"))
        kernels.append(layer_kernel(k, ndim, f"layers[{p}] kernel_size"))
    if widths[-1] != c2:
        raise ValueError(
            f"the last layer's width must equal G's output channels {c2} (or be None), "
            f"got {widths[-1]}"
        )
    return widths, kernels


def chain_effective_size(
    kernel: tuple[int, ...], kernels: Sequence[tuple[int, ...]]
) -> tuple[int, ...]:
    """Kt = Σ K_p − P, checked to hold G centred (Kt − K even and ≥ 0)."""
    kt = tuple(sum(ks) - (len(kernels) - 1) for ks in zip(*kernels)) if kernel else ()
    for k, t in zip(kernel, kt):
        if t < k or (t - k) % 2:
            raise ValueError(
                f"layers: the effective kernel size {kt} (Σ K_p − P) must be at least the "
                f"kernel {kernel} of G and differ from it by an even amount per dimension"
            )
    return kt


def chain_exact_layers(
    c0: int, widths: Sequence[int], kernels: Sequence[tuple[int, ...]]
) -> list[bool]:
    """For each layer p, whether solving it alone with the other layers random is exact, by
    counting (the chain analogue of :func:`solvability`'s per-side conditions).

    The map X ↦ F_P ⊛ … ⊛ X ⊛ … ⊛ F_0 factors through one layer at a time, acting on the rows
    (X ⊛ F_{p−1}, …) and on the columns (F_{p+1} ⊛ …) of X; it can be onto only if no
    intermediate space is smaller than the target. With S(a, b) the kernel size of layers
    a..b composed and w_{−1} = C0, either order of the two sides is counted:
    rows first, min_q w_{q−1}|S(q, p)| ≥ C0|S(0, p)| and min_q w_q|S(0, q)| ≥ C2|Kt|, or
    columns first, min_q w_q|S(p, q)| ≥ C2|S(p, P)| and min_q w_{q−1}|S(q, P)| ≥ C0|Kt|.
    For P = 1 these are C1|K1| ≥ C2|Kt| and C1|K2| ≥ C0|Kt|. Like those, the counts are
    generically sufficient except where the fixed factors' syzygies lower the rank (see
    :mod:`.solvability`); the algorithms check the residual, never the prediction alone.
    """
    n = len(widths)

    def chan(q: int) -> int:
        return c0 if q < 0 else widths[q]

    def size(a: int, b: int) -> int:
        return taps(
            [sum(k[d] for k in kernels[a : b + 1]) - (b - a) for d in range(len(kernels[0]))]
        )

    def onto(dims: list[int]) -> bool:
        return min(dims) >= dims[-1]

    exact = []
    for p in range(n):
        rows_first = onto([chan(q - 1) * size(q, p) for q in range(p, -1, -1)]) and onto(
            [chan(q) * size(0, q) for q in range(p, n)]
        )
        cols_first = onto([chan(q) * size(p, q) for q in range(p, n)]) and onto(
            [chan(q - 1) * size(q, n - 1) for q in range(p, -1, -1)]
        )
        exact.append(rows_first or cols_first)
    return exact


def deconv_two_sided_lsqr(
    impl: ModuleType,
    g_tilde: np.ndarray,
    post: np.ndarray,
    pre: np.ndarray,
    k: tuple[int, ...],
    init: np.ndarray,
) -> np.ndarray:
    """X nearest ``init`` minimising ‖Post ⊛ X ⊛ Pre − G~‖, matrix-free with LSQR (float64).

    Products use the backend ``impl``: T·X = Post ⊛ (X ⊛ Pre) by two compositions, and
    Tᵀ·R by two ``correlate_outer`` calls (the adjoint of X ↦ X ⊛ Pre through the channel
    swap, (X ⊛ Pre)ᵀ = Preᵀ ⊛ Xᵀ). LSQR started from zero on the correction Δ = X − init
    converges to the minimum-norm least-squares Δ, i.e. the solution nearest ``init``.
    """
    x_shape = init.shape
    ky = tuple(a + b - 1 for a, b in zip(k, pre.shape[2:]))
    pre_t = np.ascontiguousarray(swap_channels(pre))

    def matvec(x: np.ndarray) -> np.ndarray:
        return np.asarray(impl.compose(post, impl.compose(x.reshape(x_shape), pre))).ravel()

    def rmatvec(r: np.ndarray) -> np.ndarray:
        y = np.asarray(impl.correlate_outer(post, r.reshape(g_tilde.shape), ky))
        x_t = impl.correlate_outer(pre_t, np.ascontiguousarray(swap_channels(y)), k)
        return np.ascontiguousarray(swap_channels(np.asarray(x_t))).ravel()

    n = math.prod(x_shape)
    op = LinearOperator((g_tilde.size, n), matvec=matvec, rmatvec=rmatvec, dtype=np.float64)
    rhs = g_tilde.ravel() - matvec(init)
    delta = lsqr(op, rhs, atol=1e-15, btol=1e-15, conlim=1e14, iter_lim=4 * n + 100)[0]
    return init + delta.reshape(x_shape)


def _solve_layer(
    impl: ModuleType, g_tilde: np.ndarray, filters: list[np.ndarray], p: int
) -> np.ndarray:
    """Layer p solved with the others fixed: one-sided at the ends, two-sided in the middle."""
    if p in (0, len(filters) - 1):
        return solve_end_layer(impl, g_tilde, filters, p)
    post = compose_chain(filters[p + 1 :])
    pre = compose_chain(filters[:p])
    k = filters[p].shape[2:]
    if g_tilde.size * filters[p].size <= EXPLICIT_TWO_SIDED_ENTRIES:
        return deconv_two_sided_ref(g_tilde, post, pre, k, filters[p])
    return deconv_two_sided_lsqr(impl, g_tilde, post, pre, k, filters[p])


def _general(
    g_tilde: np.ndarray,
    c0: int,
    widths: list[int],
    kernels: list[tuple[int, ...]],
    opts: Options,
) -> tuple[list[np.ndarray], int, float, list[bool]]:
    ins = [c0, *widths[:-1]]
    shapes = [(w, a, *k) for w, a, k in zip(widths, ins, kernels)]
    start = random_start(shapes, g_tilde, opts.rng)
    exact = chain_exact_layers(c0, widths, kernels)
    eq = g_tilde.size
    ratios = [f.size / eq for f in start]
    order = general_order(exact, ratios)
    filters, iterations, residual = alternate(
        g_tilde,
        start,
        order,
        lambda p, fs: _solve_layer(opts.backend, g_tilde, fs, p),
        opts.stop_tol,
        opts.max_iter,
    )
    return filters, iterations, residual, exact


def _practical(
    g: np.ndarray,
    kt: tuple[int, ...],
    widths: list[int],
    kernels: list[tuple[int, ...]],
    opts: Options,
) -> tuple[list[np.ndarray], int]:
    """Algorithm 2 applied recursively: split layers a..b at a blob m into L (a..m) and
    R (m+1..b) with one practical depth morph, then split L and R the same way.

    A target is a core (w_b, w_{a−1}, *size) at an offset in the window of layers a..b
    composed. The solved factor of a step is dense (its core is its whole window); the other
    is random noise shrunk to a small kernel (its core is that kernel). Steps are tried most
    non-zeros first (ties: the split nearest the input) among those whose two sub-targets are
    still exactly solvable by the equation counts (a memoised look-ahead on kernel sizes).
    """
    c0 = g.shape[1]
    n = len(widths)

    def chan(p: int) -> int:
        return c0 if p < 0 else widths[p]

    def span(a: int, b: int) -> tuple[int, ...]:
        return tuple(sum(k[d] for k in kernels[a : b + 1]) - (b - a) for d in range(len(kt)))

    def options(a: int, b: int, core: tuple[int, ...]) -> list[tuple[int, Split]]:
        shape = (widths[b], chan(a - 1), *core)
        found = [
            (m, s)
            for m in range(a, b)
            for s in splits(shape, widths[m], span(a, m), span(m + 1, b))
        ]
        return sorted(found, key=lambda ms: -ms[1].red.nonzeros)

    def sub_cores(split: Split) -> tuple[tuple[int, ...], tuple[int, ...]]:
        if split.red.solved == "F1":
            return split.k1, split.red.size
        return split.red.size, split.k2

    @cache
    def feasible(a: int, b: int, core: tuple[int, ...]) -> bool:
        return a == b or any(admissible(a, b, m, s) for m, s in options(a, b, core))

    def admissible(a: int, b: int, m: int, split: Split) -> bool:
        left, right = sub_cores(split)
        return split.red.count_ok and feasible(a, m, left) and feasible(m + 1, b, right)

    if not feasible(0, n - 1, g.shape[2:]) and not opts.allow_approximate:
        raise ValueError(
            "no tree of practical depth morphs is exact for these layers: every split leads to "
            "a reduced system with fewer unknowns than equations; widen the layers, enlarge "
            "the kernels, or use allow_approximate=True"
        )
    filters: list[np.ndarray] = [np.empty(0)] * n
    iterations = 0

    def solve(a: int, b: int, core: np.ndarray, offset: tuple[int, ...]) -> None:
        nonlocal iterations
        if a == b:
            filters[a] = pad_at(core, kernels[a], offset)
            return
        choices = options(a, b, core.shape[2:])
        good = [s for m, s in choices if admissible(a, b, m, s)]
        rest = [s for m, s in choices if not admissible(a, b, m, s)]
        sol = practical_search(core, offset, good, rest, opts)
        if sol is None:
            raise ValueError(
                f"practical subnet morph: no reduced kernel gave an exact split of layers {a}..{b}"
            )
        iterations += sol.iterations
        m = next(m for m, s in choices if s is sol.split)
        solve(a, m, sol.f1_core, sol.f1_offset)
        solve(m + 1, b, sol.f2_core, sol.f2_offset)

    solve(0, n - 1, g.astype(np.float64), tuple((t - k) // 2 for t, k in zip(kt, g.shape[2:])))
    return filters, iterations


@chain_morph("morph_subnet", subnet_layout)
def morph_subnet(
    g: np.ndarray,
    layers: Sequence[tuple[int | None, int | Sequence[int] | None]],
    *,
    method: str = "general",
    seed: Seed = None,
    max_iter: int = 200,
    tol: float | None = None,
    allow_approximate: bool = False,
    backend: str = "auto",
    groups: int = 1,
) -> MorphResult:
    """Morph G (C2, C0, *K) into the sequential layers ``layers`` = [(w_0, K_0), …, (C2, K_P)].

    Layer p has shape (w_p, w_{p−1}, *K_p) with w_{−1} = C0; the last width must be C2 (or
    None). F_P ⊛ … ⊛ F_0 = G~, G zero-padded centred to Σ K_p − P. One layer just pads G.
    ``method``, ``seed``, ``tol`` (1e-10 float64 / 1e-5 float32), ``allow_approximate`` and
    ``backend`` as in :func:`morph_depth`; ``max_iter`` bounds the single-layer solves of the
    general method. Filters are returned in data-flow order with G's dtype.
    ``method="stable"``: every entry non-zero and on a consistent scale, see
    :func:`netmorph_core.morph.stable.stable_subnet`.
    ``groups`` = g: G (C2, C0/g, *K) and every layer grouped, solved group by group.
    """
    if groups != 1:
        from .grouped import grouped_subnet  # builds on this module

        return grouped_subnet(
            g,
            layers,
            groups=groups,
            method=method,
            seed=seed,
            max_iter=max_iter,
            tol=tol,
            allow_approximate=allow_approximate,
            backend=backend,
        )
    if method == "stable":
        from .stable import stable_subnet  # stable builds on this module

        return stable_subnet(
            g,
            layers,
            seed=seed,
            tol=tol,
            max_iter=max_iter,
            allow_approximate=allow_approximate,
            backend=backend,
        )
    g = v.as_filter(g, "G")
    widths, kernels = check_layers(g, layers)
    kt = chain_effective_size(g.shape[2:], kernels)
    opts = check_options(g, method, seed, max_iter, tol, allow_approximate, backend)
    g_tilde = pad_centered(g.astype(np.float64), kt)
    if len(widths) == 1:
        return finish(g, g_tilde, [g_tilde], 0, opts)
    if opts.method == "practical":
        filters, iterations = _practical(g, kt, widths, kernels, opts)
        return finish(g, g_tilde, filters, iterations, opts)
    filters, iterations, residual, exact = _general(g_tilde, g.shape[1], widths, kernels, opts)
    if residual > opts.stop_tol and not opts.allow_approximate:
        raise ValueError(
            f"the general subnet morph did not reach tol={opts.tol} (relative residual "
            f"{residual:.3g} after {iterations} single-layer solves); layers whose one-solve "
            f"exactness condition holds: {[p for p, e in enumerate(exact) if e] or 'none'}; "
            "use method='practical', wider layers, or allow_approximate=True"
        )
    return finish(g, g_tilde, filters, iterations, opts)
