"""Algorithm 2 ("practical") on every group of a grouped layer at once.

The groups of G (C2, C0/g, *K) share their shapes, so they share Algorithm 2's candidates
(:func:`netmorph_core.morph.chain.practical_plan`); only the numbers differ. Each candidate is
solved for all groups still open by one stacked least-squares call
(:func:`netmorph_core.grouped.deconv_stacked`, arrays (n, C_out/g, C_in/g, *K)); a group whose
residual reaches the tolerance keeps that candidate, the others try the next one. A depthwise
layer is C single-channel problems in one call. The result is the per-group algorithm's
(:func:`netmorph_core.morph.chain.practical_chain` run on each group): the same candidates in
the same order, the same exactness test per group, each group's filters balanced on their own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..grouped import compose_stacked, deconv_stacked, swap_stacked
from .chain import NO_PRACTICAL_TREE, practical_plan
from .common import Options
from .pair import Split, _placement


def pad_stacked(x: np.ndarray, size: tuple[int, ...], offset: tuple[int, ...]) -> np.ndarray:
    """Stacked cores (n, A, B, *k) placed at ``offset`` in zero kernels of spatial ``size``."""
    out = np.zeros((*x.shape[:3], *size), dtype=x.dtype)
    window = tuple(slice(o, o + k) for o, k in zip(offset, x.shape[3:]))
    out[(slice(None),) * 3 + window] = x
    return out


def _group_norms(x: np.ndarray) -> np.ndarray:
    """‖x_j‖ of every group j of (n, …): shape (n,)."""
    return np.sqrt(np.sum(np.square(x.reshape(x.shape[0], -1)), axis=1))


def orthogonal_stacked(n: int, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """n random filters of ``shape`` (C_out, C_in, *K) as
    :func:`netmorph_core.morph.common.orthogonal_filter` draws one: matrices (C_out, C_in·|K|)
    with orthonormal rows (or columns), He's std √(2 / fan-in); one batched QR."""
    rows, cols = shape[0], math.prod(shape[1:])
    a = rng.standard_normal((n, max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(a)
    q = q * np.where(np.diagonal(r, axis1=-2, axis2=-1) < 0, -1.0, 1.0)[:, None, :]
    mat = np.swapaxes(q, -1, -2) if rows <= cols else q
    return (mat * math.sqrt(2.0 * max(rows, cols) / cols)).reshape(n, *shape)


def random_pair_stacked(
    shape1: tuple[int, ...], shape2: tuple[int, ...], target: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Random orthogonal F1 (n, *shape1), F2 (n, *shape2), each group's pair scaled together so
    that ‖F2_j ⊛ F1_j‖ = ‖target_j‖ (as :func:`netmorph_core.morph.common.random_start`)."""
    n = target.shape[0]
    f1, f2 = orthogonal_stacked(n, shape1, rng), orthogonal_stacked(n, shape2, rng)
    want, have = _group_norms(target), _group_norms(compose_stacked(f2, f1))
    ok = (want > 0) & (have > 0)
    alpha = np.sqrt(np.where(ok, want, 1.0) / np.where(ok, have, 1.0))
    shape = (n,) + (1,) * (f1.ndim - 1)
    return f1 * alpha.reshape(shape), f2 * alpha.reshape(shape)


@dataclass(frozen=True)
class StackedSplit:
    """One candidate solved for n groups: F1, F2 (n, …) and the cores of the next targets
    (as :class:`netmorph_core.morph.pair.PairSolution`), with each group's residual (n,)."""

    split: Split
    f1_core: np.ndarray
    f1_offset: tuple[int, ...]
    f2_core: np.ndarray
    f2_offset: tuple[int, ...]
    residual: np.ndarray

    def take(self, rows: np.ndarray) -> StackedSplit:
        """The groups ``rows`` (indices into this solution's groups)."""
        return StackedSplit(
            self.split,
            self.f1_core[rows],
            self.f1_offset,
            self.f2_core[rows],
            self.f2_offset,
            self.residual[rows],
        )


def solve_split_stacked(
    core: np.ndarray, offset: tuple[int, ...], split: Split, rng: np.random.Generator
) -> StackedSplit:
    """:func:`netmorph_core.morph.pair.solve_split` for the stacked targets ``core``
    (n, C2', C0', *K) at ``offset``: the random factor drawn per group, the other solved for
    all groups in one stacked deconvolution nearest its random start."""
    width, k1, k2, red = split.width, split.k1, split.k2, split.red
    c2, c0 = core.shape[1:3]
    kt = tuple(a + b - 1 for a, b in zip(k1, k2))
    zero = (0,) * len(kt)
    full_reduced = k2 if red.solved == "F1" else k1
    slack = tuple(f - r for f, r in zip(full_reduced, red.size))
    p, q = _placement(offset, core.shape[3:], red.small_kt, slack)
    g_small = pad_stacked(core, red.small_kt, p)
    if red.solved == "F1":
        f1, f2r = random_pair_stacked((width, c0, *k1), (c2, width, *red.size), g_small, rng)
        f1 = deconv_stacked(g_small, f2r, k1, f1)
        f1_full, f2_full = f1, pad_stacked(f2r, k2, q)
        cores = (f1, zero, f2r, q)
    else:
        f1r, f2 = random_pair_stacked((width, c0, *red.size), (c2, width, *k2), g_small, rng)
        f2 = swap_stacked(
            deconv_stacked(swap_stacked(g_small), swap_stacked(f1r), k2, swap_stacked(f2))
        )
        f1_full, f2_full = pad_stacked(f1r, k1, q), f2
        cores = (f1r, q, np.ascontiguousarray(f2), zero)
    target = pad_stacked(core, kt, offset)
    err = _group_norms(compose_stacked(f2_full, f1_full) - target)
    scale = _group_norms(target)
    residual = np.where(scale > 0, err / np.where(scale > 0, scale, 1.0), err)
    return StackedSplit(split, *cores, residual)


def practical_search_stacked(
    core: np.ndarray,
    offset: tuple[int, ...],
    candidates: Sequence[Split],
    fallback: Sequence[Split],
    opts: Options,
) -> tuple[list[tuple[np.ndarray, StackedSplit]], int] | None:
    """:func:`netmorph_core.morph.pair.practical_search` for every group of ``core`` at once:
    each candidate is solved for the groups not yet exact. Returns the parts
    [(group indices, their solution)] covering every group, and the number of deconvolutions
    summed over the groups; None when a group has no exact candidate and approximate results
    are not allowed (with them, such a group keeps its smallest residual)."""
    ordered = [*candidates, *fallback] if opts.allow_approximate else list(candidates)
    n = core.shape[0]
    open_groups = np.arange(n)
    parts: list[tuple[np.ndarray, StackedSplit]] = []
    tries: list[tuple[np.ndarray, StackedSplit]] = []
    iterations = 0
    for solves, split in enumerate(ordered, start=1):
        if open_groups.size == 0:
            break
        sol = solve_split_stacked(core[open_groups], offset, split, opts.rng)
        exact = sol.residual <= opts.stop_tol
        if exact.any():
            parts.append((open_groups[exact], sol.take(np.flatnonzero(exact))))
            iterations += solves * int(exact.sum())
        tries.append((open_groups[~exact], sol.take(np.flatnonzero(~exact))))
        open_groups = open_groups[~exact]
    if open_groups.size == 0:
        return parts, iterations
    if not opts.allow_approximate or not tries:
        return None
    # Every open group was in every try: keep the try with its smallest residual.
    residuals = np.stack([t.residual[np.searchsorted(groups, open_groups)] for groups, t in tries])
    best = np.argmin(residuals, axis=0)
    for i, (groups, t) in enumerate(tries):
        mine = open_groups[best == i]
        if mine.size:
            parts.append((mine, t.take(np.searchsorted(groups, mine))))
    return parts, iterations + len(ordered) * open_groups.size


def balance_stacked(filters: Sequence[np.ndarray]) -> list[np.ndarray]:
    """:func:`netmorph_core.morph.common.balance` on every group on its own: F_p,j·s_p,j with
    Π_p s_p,j = 1 and equal standard deviations (RMS where it is zero) within group j; groups
    with an all-zero filter are left as they are."""
    n = filters[0].shape[0]
    flat = [f.reshape(n, -1) for f in filters]
    scales = np.stack(
        [
            np.where(np.std(f, axis=1) > 0, np.std(f, axis=1), np.sqrt(np.mean(f * f, axis=1)))
            for f in flat
        ]
    )
    ok = np.all(scales > 0, axis=0)
    safe = np.where(ok, scales, 1.0)
    common = np.exp(np.mean(np.log(safe), axis=0))
    out = []
    for f, s in zip(filters, safe):
        factor = np.where(ok, common / s, 1.0)
        out.append(f * factor.reshape((n,) + (1,) * (f.ndim - 1)))
    return out


def practical_chain_stacked(
    g: np.ndarray,
    kt: tuple[int, ...],
    widths: list[int],
    kernels: list[tuple[int, ...]],
    opts: Options,
) -> tuple[list[np.ndarray], int]:
    """:func:`netmorph_core.morph.chain.practical_chain` for the stacked groups ``g``
    (n, C2', C0', *K) and per-group ``widths``: returns the stacked filters (n, w_p, w_p−1, *K_p)
    in data-flow order, balanced per group, and the deconvolutions summed over the groups.
    Groups that take different candidates at a node continue as separate stacks."""
    n, depth = g.shape[0], len(widths)
    ranked, feasible = practical_plan(g.shape[2], widths, kernels)
    if not feasible(0, depth - 1, g.shape[3:]) and not opts.allow_approximate:
        raise ValueError(NO_PRACTICAL_TREE)
    ins = [g.shape[2], *widths[:-1]]
    filters = [np.zeros((n, w, c, *k)) for w, c, k in zip(widths, ins, kernels)]
    iterations = 0

    def solve(a: int, b: int, core: np.ndarray, offset: tuple[int, ...], rows: np.ndarray) -> None:
        nonlocal iterations
        if a == b:
            filters[a][rows] = pad_stacked(core, kernels[a], offset)
            return
        choices, good, rest = ranked(a, b, core.shape[3:])
        found = practical_search_stacked(core, offset, good, rest, opts)
        if found is None:
            raise ValueError(
                f"practical subnet morph: no reduced kernel gave an exact split of layers "
                f"{a}..{b} in every group"
            )
        parts, solves = found
        iterations += solves
        for part, sol in parts:
            m = next(m for m, s in choices if s is sol.split)
            solve(a, m, sol.f1_core, sol.f1_offset, rows[part])
            solve(m + 1, b, sol.f2_core, sol.f2_offset, rows[part])

    offset = tuple((t - k) // 2 for t, k in zip(kt, g.shape[3:]))
    solve(0, depth - 1, g.astype(np.float64), offset, np.arange(n))
    return balance_stacked(filters), iterations
