"""Counting refusals for chains and modules: no dense exact solution when the unknowns, less
the channel gauges, are fewer than the equations of a generic G~.

A polynomial map from n parameters has an image of dimension at most n, less the dimension of
any group that leaves it unchanged and acts freely. For a chain F_P ⊛ … ⊛ F_0 (and a module,
whose paths meet at inner vertices) that group is one gauge per inner blob u of width w_u:
T_u ∈ GL(w_u) applied as T_u⁻¹ to the edges entering u and as T_u to the edges leaving it
leaves every path composition unchanged. It acts freely when w_u is at most the fan-in of the
filters into u and the fan-out of the filters out of it (a full-rank factor pins T_u = I);
a wider blob is not counted. With fewer parameters than that plus the C_out·C_in·|Kt|
equations, a generic G~ is out of reach of every dense solution (a zero-padded one, as
Algorithm 2 builds, may still exist), and the general and stable methods refuse before any
work, as :func:`netmorph_core.morph.solvability.check_dense_count` does for a depth morph.

A chain is counted cut by cut: at blob p it is a depth morph into Pre = F_p ⊛ … ⊛ F_0 and
Post = F_P ⊛ … ⊛ F_{p+1}, whose image contains the chain's, so the chain is refused when one
cut is (on every chain of up to four 1-D layers of widths ≤ 6 and kernels ≤ 5, the count of
the whole chain never refused one that all its cuts admit). A chain with a layer whose
one-solve exactness count holds (:func:`netmorph_core.morph.chain.chain_exact_layers`) is
never refused.
"""

from __future__ import annotations

from collections.abc import Sequence

from .chain import chain_exact_layers
from .graph import ModuleShape
from .solvability import Solvability, taps

_ADVICE = "widen the inner layers, use method='practical' (zero-padded), or allow_approximate=True"


def _span(kernels: Sequence[tuple[int, ...]]) -> tuple[int, ...]:
    """Kernel size of the layers ``kernels`` composed: Σ K_p − P per dimension."""
    return tuple(sum(ks) - (len(kernels) - 1) for ks in zip(*kernels))


def check_chain_count(
    g_shape: Sequence[int],
    widths: Sequence[int],
    kernels: Sequence[tuple[int, ...]],
    what: str,
) -> None:
    """``ValueError`` naming ``layers`` and the numbers when no dense exact solution of the
    chain G~ = F_P ⊛ … ⊛ F_0 (F_p (w_p, w_{p−1}, *K_p), w_{−1} = C0, G (C2, C0, *K)) is
    expected by counting: the depth count of some cut fails
    (:attr:`Solvability.dense_count_ok` of Pre and Post). ``what`` names the morph."""
    c2, c0, kernel = g_shape[0], g_shape[1], tuple(g_shape[2:])
    if len(widths) < 2 or any(chain_exact_layers(c0, widths, kernels)):
        return
    for p in range(len(widths) - 1):
        cut = Solvability(
            c0, widths[p], c2, kernel, _span(kernels[: p + 1]), _span(kernels[p + 1 :])
        )
        if not cut.dense_count_ok:
            raise ValueError(
                f"layers: no exact dense {what} exists for a generic G: cut at blob {p} "
                f"(width {widths[p]}), the layers before it compose to ({widths[p]}, {c0}, "
                f"{cut.k1}) and those after to ({c2}, {widths[p]}, {cut.k2}); that pair has "
                f"{cut.params_f1 + cut.params_f2} parameters, less {widths[p]}² for the channel "
                f"gauge, i.e. {cut.dense_count} < {cut.params_g_tilde} equations C2·C0·|Kt|, "
                f"and the chain cannot reach more than the pair; {_ADVICE}"
            )


def check_module_count(shape: ModuleShape, what: str) -> None:
    """``ValueError`` naming ``module`` and the numbers when its convolution edges' parameters,
    less w_u² for every inner vertex u whose gauge acts freely (all its edges convolutions,
    w_u at most both Σ C_tail·|K| of the edges into u and Σ C_head·|K| of the edges out of
    it), are fewer than the C_out·C_in·|Kt| equations of a generic G~."""
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
    equations = c_out * c_in * taps(shape.effective_size)
    if parameters - gauge < equations:
        raise ValueError(
            f"module: no exact dense {what} exists for a generic G: its convolution edges "
            f"have {parameters} parameters, less {gauge} = Σ w_u² for the channel gauges of "
            f"the inner vertices, i.e. {parameters - gauge} < {equations} equations "
            f"C_out·C_in·|Kt|; widen the inner vertices, or allow_approximate=True"
        )
