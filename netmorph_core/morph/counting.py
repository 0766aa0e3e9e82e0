"""Counting refusals for chains and modules: no exact solution at all when the unknowns, less
the channel gauges, are fewer than the entries of G.

A polynomial map from n parameters has an image of dimension at most n, less the dimension of
any group that leaves it unchanged and acts freely at a generic point. For a chain
F_P ⊛ … ⊛ F_0 (and a module, whose paths meet at inner vertices) that group is one gauge per
inner blob u of width w_u: T_u ∈ GL(w_u) applied as T_u⁻¹ to the edges entering u and as T_u
to the edges leaving it leaves every path composition unchanged. It acts freely when w_u is at
most the fan-in of the filters into u and the fan-out of the filters out of it (a full-rank
factor pins T_u = I); a wider blob is not counted. The targets G~ = G zero-padded form a space
of dimension C_out·C_in·|K| (G's entries, not G~'s: a zero border is reachable by sparse
compositions of dense factors), so with fewer parameters than that a generic G is out of
reach of every solution, and the general and stable methods refuse before any work.

A chain is counted cut by cut: at blob p its image lies in that of the pair
Pre = F_p ⊛ … ⊛ F_0 (w_p, C0, S(0, p)), Post = F_P ⊛ … ⊛ F_{p+1} (C2, w_p, S(p+1, P)), which
has at most w_p·(C0·|S(0, p)| + C2·|S(p+1, P)|) − w_p² dimensions. A chain with a layer whose
one-solve exactness count holds (:func:`netmorph_core.morph.chain.chain_exact_layers`) is
never refused.
"""

from __future__ import annotations

from collections.abc import Sequence

from .chain import chain_exact_layers
from .graph import ModuleShape
from .solvability import taps


def _span(kernels: Sequence[tuple[int, ...]]) -> tuple[int, ...]:
    """Kernel size of the layers ``kernels`` composed: Σ K_p − P per dimension."""
    return tuple(sum(ks) - (len(kernels) - 1) for ks in zip(*kernels))


def check_chain_count(
    g_shape: Sequence[int],
    widths: Sequence[int],
    kernels: Sequence[tuple[int, ...]],
    what: str,
) -> None:
    """``ValueError`` naming ``layers`` and the numbers when no exact solution of the chain
    G~ = F_P ⊛ … ⊛ F_0 (F_p (w_p, w_{p−1}, *K_p), w_{−1} = C0, G (C2, C0, *K)) exists for a
    generic G by counting: some cut's pair has fewer parameters, less its free gauge, than
    C2·C0·|K|. ``what`` names the morph."""
    c2, c0, kernel = g_shape[0], g_shape[1], tuple(g_shape[2:])
    if len(widths) < 2 or any(chain_exact_layers(c0, widths, kernels)):
        return
    equations = c2 * c0 * taps(kernel)
    for p, w in enumerate(widths[:-1]):
        before, after = _span(kernels[: p + 1]), _span(kernels[p + 1 :])
        reach_in, reach_out = c0 * taps(before), c2 * taps(after)
        parameters = w * (reach_in + reach_out)
        gauge = w * w if w <= min(reach_in, reach_out) else 0
        if parameters - gauge < equations:
            raise ValueError(
                f"layers: no exact {what} exists for a generic G: at blob {p} (width {w}) the "
                f"layers before it compose to ({w}, {c0}, {before}) and those after to "
                f"({c2}, {w}, {after}); that pair has {parameters} parameters, less {gauge} "
                f"for the channel gauge, i.e. {parameters - gauge} < {equations} entries "
                f"C2·C0·|K| of G, and the chain cannot reach more than the pair; widen the "
                "inner layers, or use allow_approximate=True"
            )


def check_module_count(shape: ModuleShape, kernel: tuple[int, ...], what: str) -> None:
    """``ValueError`` naming ``module`` and the numbers when its convolution edges' parameters,
    less w_u² for every inner vertex u whose gauge acts freely (all its edges convolutions,
    w_u at most both Σ C_tail·|K| of the edges into u and Σ C_head·|K| of the edges out of
    it), are fewer than the C_out·C_in·|K| entries of G."""
    module, channels = shape.module, shape.channels
    parameters = sum(
        channels[e.head] * channels[e.tail] * taps(shape.kernels[e.name])
        for e in module.edges
        if not e.identity
    )
    gauge = 0
    for u, w in channels.items():
        into, out = module.in_edges(u), module.out_edges(u)
        if not into or not out or any(e.identity for e in (*into, *out)):
            continue
        fan_in = sum(channels[e.tail] * taps(shape.kernels[e.name]) for e in into)
        fan_out = sum(channels[e.head] * taps(shape.kernels[e.name]) for e in out)
        if w <= min(fan_in, fan_out):
            gauge += w * w
    c_out, c_in = channels[module.sink], channels[module.source]
    equations = c_out * c_in * taps(kernel)
    if parameters - gauge < equations:
        raise ValueError(
            f"module: no exact {what} exists for a generic G: its convolution edges have "
            f"{parameters} parameters, less {gauge} = Σ w_u² for the channel gauges of the "
            f"inner vertices, i.e. {parameters - gauge} < {equations} entries C_out·C_in·|K| "
            f"of G; widen the inner vertices, or allow_approximate=True"
        )
