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

from collections.abc import Sequence

import numpy as np

from .. import _validation as v
from ..reference import pad_centered
from ._scaling import chain_morph, general_solves, subnet_layout
from .augmented import augmented_pair, prefer_augmented
from .chain import (
    chain_effective_size,
    chain_exact_layers,
    check_layers,
    deconv_two_sided_lsqr,
    general_chain,
    practical_chain,
)
from .common import Seed, check_options, finish
from .conditioning import balanced_pair
from .counting import check_chain_count
from .grouped import grouped_subnet
from .result import MorphResult
from .solvability import solvability
from .stable import stable_subnet

__all__ = [
    "chain_effective_size",
    "chain_exact_layers",
    "check_layers",
    "deconv_two_sided_lsqr",
    "morph_subnet",
]


@chain_morph("morph_subnet", subnet_layout, general_solves)
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
    general method. Filters are returned in data-flow order with G's dtype. With the default
    ``tol`` and no ``allow_approximate``, the general method raises ``ValueError`` before any
    work where counting rules out any exact solution for a generic G
    (:func:`netmorph_core.morph.counting.check_chain_count`).
    ``method="stable"``: every entry non-zero and on a consistent scale, see
    :func:`netmorph_core.morph.stable.stable_subnet`.
    ``groups`` = g: G (C2, C0/g, *K) and every layer grouped, solved group by group.
    """
    if groups != 1:
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
            per_group=morph_subnet,
        )
    if method == "stable":
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
        filters, iterations = practical_chain(g, kt, widths, kernels, opts)
        return finish(g, g_tilde, filters, iterations, opts)
    if len(widths) == 2:
        info = solvability(g.shape, widths[0], *kernels)
        if prefer_augmented(info):  # the same pair as morph_depth
            pair = augmented_pair(
                g_tilde, g.shape[2:], widths[0], *kernels, info.augmented_side, opts.rng
            )
            return finish(g, g_tilde, list(pair), 0, opts)
    if not opts.allow_approximate and tol is None:
        check_chain_count(g.shape, widths, kernels, "general subnet morph")
    filters, iterations, residual, exact = general_chain(g_tilde, g.shape[1], widths, kernels, opts)
    if residual > opts.stop_tol and not opts.allow_approximate:
        raise ValueError(
            f"the general subnet morph did not reach tol={opts.tol} (relative residual "
            f"{residual:.3g} after {iterations} single-layer solves); layers whose one-solve "
            f"exactness condition holds: {[p for p, e in enumerate(exact) if e] or 'none'}; "
            "use method='practical', wider layers, or allow_approximate=True"
        )
    if len(filters) == 2:
        filters = list(balanced_pair(filters[0], filters[1], opts.rng))
    return finish(g, g_tilde, filters, iterations, opts)
