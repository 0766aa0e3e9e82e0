"""Size and work bounds checked before a routine allocates or solves (typed errors, fast).

Memory goes through :func:`netmorph_core._memory.check_working_set` (``ResourceLimitError``,
limit ``$NETMORPH_MAX_BYTES`` or half the available memory). Work is bounded too: a dense Gram
of order above :data:`MAX_GRAM_ORDER` would take minutes to hours to factorise (n³/3 flops),
so it is refused with a ``ValueError`` naming the sizes before anything is allocated.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ._memory import check_working_set

#: Largest order of a dense Gram the deconvolution factorises (≈ 2·10¹³ flops, 13 GB).
MAX_GRAM_ORDER = 40_000
#: Bytes per float64 entry: every solve works in float64.
_F64 = 8
#: Copies of each operand a solve holds at once (input, float64 copy, result, refinement).
_COPIES = 4
#: Copies of the Gram a factorisation holds (the Gram, its factor, eigenvectors).
_GRAM_COPIES = 3


def gram_order(rows: int, cols: int) -> int:
    """Order of the Gram of a (rows × cols) operator: AᵀA or A·Aᵀ, whichever is smaller."""
    return min(rows, cols)


def check_deconv(
    c_out: int,
    c_mid: int,
    c_in: int,
    k_factor: Sequence[int],
    k_x: Sequence[int],
    what: str,
) -> None:
    """Bounds of solving G~ (c_out, c_in, *Kt) = F (c_out, c_mid, *k_factor) ⊛ X (c_mid, c_in,
    *k_x): the Gram's order (work) and the working set (memory), before anything is built.

    A 1×1 factor is solved per tap (G~[:, :, t] = F · X[:, :, t]): a (c_out × c_mid) system
    with c_in·|k_x| columns, whose Gram has order min(c_out, c_mid), not min(·)·|k_x|."""
    rows, cols, _ = _deconv_system(c_out, c_mid, c_in, k_factor, k_x)
    n = gram_order(rows, cols)
    if n > MAX_GRAM_ORDER:
        raise ValueError(
            f"{what}: the deconvolution's Gram has order {n} (min of {rows} equations and "
            f"{cols} unknowns per column), above the {MAX_GRAM_ORDER} a dense solve "
            "finishes in reasonable time; use fewer channels or smaller kernels"
        )
    check_working_set(deconv_bytes(c_out, c_mid, c_in, k_factor, k_x), what)


def _deconv_system(
    c_out: int, c_mid: int, c_in: int, k_factor: Sequence[int], k_x: Sequence[int]
) -> tuple[int, int, int]:
    """(equations, unknowns, right-hand sides) of the deconvolution of :func:`check_deconv`."""
    taps = math.prod(k_x)
    if math.prod(k_factor) == 1:
        return c_out, c_mid, c_in * taps
    kt = math.prod(a + b - 1 for a, b in zip(k_factor, k_x))
    return c_out * kt, c_mid * taps, c_in


def deconv_bytes(
    c_out: int, c_mid: int, c_in: int, k_factor: Sequence[int], k_x: Sequence[int]
) -> int:
    """Bytes the deconvolution of :func:`check_deconv` holds: its Gram's copies and the
    operands' (:data:`_GRAM_COPIES`, :data:`_COPIES`)."""
    rows, cols, columns = _deconv_system(c_out, c_mid, c_in, k_factor, k_x)
    n = gram_order(rows, cols)
    operands = (rows + cols) * columns + c_out * c_mid * math.prod(k_factor)
    return _F64 * (_GRAM_COPIES * n * n + _COPIES * operands)


def partial_compositions(
    c_out: int, c_in: int, widths: Sequence[int], kernels: Sequence[Sequence[int]]
) -> list[int]:
    """For each layer p of the chain, the entries of the larger of its partial compositions
    F_p ⊛ … ⊛ F_0 (w_p, c_in, *S(0, p)) and F_P ⊛ … ⊛ F_p (c_out, w_{p−1}, *S(p, P)), where
    S(a, b) = K_a + … + K_b − (b − a) is the kernel size layers a..b compose to."""
    chans = [c_in, *widths]
    last = len(kernels) - 1

    def span(a: int, b: int) -> int:
        return math.prod(sum(k) - (b - a) for k in zip(*kernels[a : b + 1]))

    return [
        max(chans[p + 1] * c_in * span(0, p), c_out * chans[p] * span(p, last))
        for p in range(len(kernels))
    ]


#: Float64 copies of a middle layer an LSQR solve holds (its iterate, search directions,
#: the adjoint's temporaries, the correction and the result; measured: 8).
_LSQR_COPIES = 8
#: Float64 copies of a middle layer its closed-form solve holds (the correction and the
#: result; :func:`netmorph_core.morph.chain.deconv_sandwiched`).
_SANDWICH_COPIES = 2
#: Copies of all filters while the random start is drawn (draw, scale, result; measured: 3).
_START_COPIES = 3
#: Margin on the working set of :func:`general_chain_bytes` (the measured peaks were within).
_MARGIN = 1.25


def sandwich_solvable(
    c_in: int, widths: Sequence[int], kernels: Sequence[Sequence[int]], p: int
) -> bool:
    """Whether middle layer p of a chain from ``c_in`` channels through ``widths`` has a
    closed-form solve: every other layer pointwise (1×…×1), none before it narrower than
    ``c_in`` and none from it on narrower than the output (so the random layers around it
    are generically one-to-one before it and onto after it)."""
    return (
        0 < p < len(widths) - 1
        and all(math.prod(k) == 1 for q, k in enumerate(kernels) if q != p)
        and min(widths[:p]) >= c_in
        and min(widths[p:]) >= widths[-1]
    )


def general_chain_bytes(
    c_out: int,
    c_in: int,
    widths: Sequence[int],
    kernels: Sequence[Sequence[int]],
    solved: Sequence[int],
) -> int:
    """Bytes the general method holds at once morphing G into three or more layers, solving
    the layers ``solved``: G~ and every filter F throughout; at most the largest of the
    random start (:data:`_START_COPIES` × F), a residual's partial compositions (two of the
    largest), one solve of a middle layer (LSQR: :data:`_LSQR_COPIES` copies of the layer
    and two partial compositions; in closed form, :func:`sandwich_solvable`:
    :data:`_SANDWICH_COPIES` copies and one) and one of an end layer (:func:`deconv_bytes` and
    the composition of the others); each LSQR solve also checks its own working set as it
    starts."""
    chans = [c_in, *widths]
    size = [sum(k) - len(k) + 1 for k in zip(*kernels)]
    kt = math.prod(size)
    sizes = [chans[p + 1] * chans[p] * math.prod(k) for p, k in enumerate(kernels)]
    held = c_out * c_in * kt + sum(sizes)
    partial = max(partial_compositions(c_out, c_in, widths, kernels))
    closed = [p for p in solved if sandwich_solvable(c_in, widths, kernels, p)]
    middle = [sizes[p] for p in solved if 0 < p < len(kernels) - 1 and p not in closed]
    ends = []  # the one-sided solves of the first and last layers, as check_chain bounds them
    if 0 in solved:
        rest = [max(a - b + 1, 1) for a, b in zip(size, kernels[0])]
        ends.append(deconv_bytes(c_out, widths[0], c_in, rest, kernels[0]) // _F64)
    if len(kernels) - 1 in solved:
        rest = [max(a - b + 1, 1) for a, b in zip(size, kernels[-1])]
        ends.append(deconv_bytes(c_in, widths[-2], c_out, rest, kernels[-1]) // _F64)
    transient = max(
        (_START_COPIES - 1) * sum(sizes),
        2 * partial,
        *(_LSQR_COPIES * n + 2 * partial for n in middle),
        *(_SANDWICH_COPIES * sizes[p] + partial for p in closed),
        *(n + partial for n in ends),
    )
    return math.ceil(_MARGIN * _F64 * (held + transient))


def lsqr_bytes(layer: int, g_tilde: int, post: int, pre: int) -> int:
    """Bytes an LSQR solve of a middle layer of ``layer`` entries holds beside the filters:
    :data:`_LSQR_COPIES` copies of it, G~'s residuals and the compositions on either side."""
    return math.ceil(_MARGIN * _F64 * (_LSQR_COPIES * layer + 2 * g_tilde + post + pre))


def check_compose(
    c_out: int,
    c_mid: int,
    c_in: int,
    k_outer: Sequence[int],
    k_inner: Sequence[int],
    what: str,
    *,
    groups: int = 1,
) -> None:
    """Working set of F2 (c_out, c_mid, *k_outer) ⊛ F1 (c_mid, c_in, *k_inner): the output of
    size K_outer + K_inner − 1, the operands, and the transform kernels' copies of all three;
    ``groups`` such products at once (grouped filters, channel counts per group)."""
    kt = 1
    for a, b in zip(k_outer, k_inner):  # a loop, not a generator: this runs on every compose
        kt *= a + b - 1
    entries = c_out * c_in * kt + c_out * c_mid * math.prod(k_outer)
    entries += c_mid * c_in * math.prod(k_inner)
    check_working_set(_F64 * _COPIES * groups * entries, what)


def check_chain(
    c_out: int,
    c_in: int,
    widths: Sequence[int],
    kernels: Sequence[Sequence[int]],
    what: str,
    *,
    groups: int = 1,
    solved: Sequence[int] | None = None,
) -> None:
    """Bounds of morphing G (c_out, c_in, *K) into the chain of layers (widths[p], kernels[p]),
    data-flow order, widths[-1] = c_out: every filter, every partial composition and the
    one-sided solves of the first and last layer (the largest dense systems of any method).
    ``groups`` such chains at once (grouped layers, channel counts per group): the memory of
    all of them, the Gram order of one. ``solved``: the layers the general method of three or
    more layers solves (:func:`general_chain_bytes`), whose working set is then counted as it
    runs rather than every term :data:`_COPIES` times."""
    chans = [c_in, *widths]
    kt = [sum(k) - len(k) + 1 for k in zip(*kernels)] if kernels and kernels[0] else []
    if solved is not None:
        check_working_set(general_chain_bytes(c_out, c_in, widths, kernels, solved), what)
    else:
        entries = c_out * c_in * math.prod(kt)
        for p, k in enumerate(kernels):
            entries += chans[p + 1] * chans[p] * math.prod(k)
        entries += sum(partial_compositions(c_out, c_in, widths, kernels))
        check_working_set(_F64 * _COPIES * groups * entries, what)
    if len(kernels) < 2:
        return
    rest_in = [max(a - b + 1, 1) for a, b in zip(kt, kernels[0])]
    rest_out = [max(a - b + 1, 1) for a, b in zip(kt, kernels[-1])]
    check_deconv(c_out, widths[0], c_in, rest_in, kernels[0], what)
    check_deconv(c_in, widths[-2], c_out, rest_out, kernels[-1], what)
