"""Sequential chains G~ = F_P ⊛ … ⊛ F_0: layer validation, the exactness counts per layer, and
the general (alternating) and practical (recursive Algorithm 2) solvers that
:func:`netmorph_core.morph.subnet.morph_subnet` and the stable morph run."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import cache
from types import ModuleType

import numpy as np
import scipy.linalg
from scipy.sparse.linalg import LinearOperator, lsqr

from .. import _validation as v
from .._limits import lsqr_bytes, sandwich_solvable
from .._memory import check_working_set
from ..reference import pad_at, swap_channels
from ..reference.two_sided import deconv_two_sided_ref
from .common import Options, compose_chain, random_start
from .pair import Split, alternate, general_order, practical_search, solve_end_layer, splits
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


def deconv_sandwiched(
    g_tilde: np.ndarray, post: np.ndarray, pre: np.ndarray, init: np.ndarray
) -> np.ndarray:
    """X nearest ``init`` with A·X_t·B = G~_t at every tap t, for pointwise Post = A (C2, w)
    of full row rank and Pre = B (w', C0) of full column rank (float64):
    X = init + A⁺ (G~ − A·init·B) B⁺, with A⁺ = Q_A R_A⁻ᵀ from Aᵀ = Q_A R_A and
    B⁺ = R_B⁻¹ Q_Bᵀ from B = Q_B R_B, the correction computed tap by tap in two products."""
    a = post.reshape(post.shape[:2])
    b = pre.reshape(pre.shape[:2])
    spatial = init.ndim - 2
    inner = np.moveaxis(np.tensordot(init, b, axes=([1], [0])), -1, 1)  # (w, C0, *K)
    r = g_tilde - np.tensordot(a, inner, axes=([1], [0]))  # (C2, C0, *K)
    del inner
    q_a, r_a = scipy.linalg.qr(a.T, mode="economic", check_finite=False)
    q_b, r_b = scipy.linalg.qr(b, mode="economic", check_finite=False)
    # A⁺ r: solve R_Aᵀ y = r over the C2 axis, then Q_A y
    y = scipy.linalg.solve_triangular(
        r_a, r.reshape(r.shape[0], -1), trans="T", check_finite=False
    ).reshape(r.shape)
    left = np.tensordot(q_a, y, axes=([1], [0]))  # (w, C0, *K)
    del r, y
    # (·) B⁺ = (·) R_B⁻¹ Q_Bᵀ over the C0 axis
    moved = np.moveaxis(left, 1, -1)  # (w, *K, C0)
    z = scipy.linalg.solve_triangular(  # z R_B = moved: R_Bᵀ zᵀ = movedᵀ
        r_b, moved.reshape(-1, moved.shape[-1]).T, trans="T", check_finite=False
    ).T.reshape(moved.shape)
    del left, moved
    correction = np.moveaxis(np.tensordot(z, q_b, axes=([spatial + 1], [1])), -1, 1)
    return init + correction


def _solve_layer(
    impl: ModuleType, g_tilde: np.ndarray, filters: list[np.ndarray], p: int
) -> np.ndarray:
    """Layer p solved with the others fixed: one-sided at the ends, two-sided in the middle
    (in closed form where the others are pointwise and can be exact around it)."""
    if p in (0, len(filters) - 1):
        return solve_end_layer(impl, g_tilde, filters, p)
    post = compose_chain(filters[p + 1 :])
    pre = compose_chain(filters[:p])
    k = filters[p].shape[2:]
    widths = [f.shape[0] for f in filters]
    if sandwich_solvable(filters[0].shape[1], widths, [f.shape[2:] for f in filters], p):
        return deconv_sandwiched(g_tilde, post, pre, filters[p])
    if g_tilde.size * filters[p].size <= EXPLICIT_TWO_SIDED_ENTRIES:
        return deconv_two_sided_ref(g_tilde, post, pre, k, filters[p])
    check_working_set(
        lsqr_bytes(filters[p].size, g_tilde.size, post.size, pre.size),
        f"the general subnet morph's solve of layer {p} {filters[p].shape}",
    )
    return deconv_two_sided_lsqr(impl, g_tilde, post, pre, k, filters[p])


def general_chain(
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


#: (every (m, Split) in order, the admissible splits, the others) of one node of the tree.
Ranked = tuple[list[tuple[int, Split]], list[Split], list[Split]]

#: ``ranked`` and ``feasible`` of :func:`practical_plan`.
Plan = tuple[
    Callable[[int, int, tuple[int, ...]], Ranked], Callable[[int, int, tuple[int, ...]], bool]
]


def practical_plan(c0: int, widths: list[int], kernels: list[tuple[int, ...]]) -> Plan:
    """The choices of :func:`practical_chain`, from shapes alone: ``ranked(a, b, core)`` lists
    the splits of layers a..b for a target core of spatial size ``core`` — every (m, Split)
    most non-zeros first (ties: the split nearest the input), then the admissible splits (both
    sub-targets still exactly solvable by the equation counts, a memoised look-ahead) and the
    others; ``feasible(a, b, core)`` whether some tree of admissible splits exists."""
    n_dims = len(kernels[0])

    def chan(p: int) -> int:
        return c0 if p < 0 else widths[p]

    def span(a: int, b: int) -> tuple[int, ...]:
        return tuple(sum(k[d] for k in kernels[a : b + 1]) - (b - a) for d in range(n_dims))

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

    def ranked(a: int, b: int, core: tuple[int, ...]) -> Ranked:
        choices = options(a, b, core)
        good = [s for m, s in choices if admissible(a, b, m, s)]
        rest = [s for m, s in choices if not admissible(a, b, m, s)]
        return choices, good, rest

    return ranked, feasible


#: The refusal of :func:`practical_chain` when no tree of admissible splits exists.
NO_PRACTICAL_TREE = (
    "no tree of practical depth morphs is exact for these layers: every split leads to "
    "a reduced system with fewer unknowns than equations; widen the layers, enlarge "
    "the kernels, or use allow_approximate=True"
)


def practical_chain(
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
    is random noise shrunk to a small kernel (its core is that kernel). Steps are tried in the
    order of :func:`practical_plan`.
    """
    n = len(widths)
    ranked, feasible = practical_plan(g.shape[1], widths, kernels)
    if not feasible(0, n - 1, g.shape[2:]) and not opts.allow_approximate:
        raise ValueError(NO_PRACTICAL_TREE)
    filters: list[np.ndarray] = [np.empty(0)] * n
    iterations = 0

    def solve(a: int, b: int, core: np.ndarray, offset: tuple[int, ...]) -> None:
        nonlocal iterations
        if a == b:
            filters[a] = pad_at(core, kernels[a], offset)
            return
        choices, good, rest = ranked(a, b, core.shape[2:])
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
