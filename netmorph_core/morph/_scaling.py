"""Magnitude invariance and size bounds at the entry of every chain morph.

:func:`chain_morph` wraps a public ``fn(g, ...) -> MorphResult`` whose filters F_P ⊛ … ⊛ F_0
reproduce G~. Before any work it validates G and the shared options, checks the chain's memory
and work (:func:`netmorph_core._limits.check_chain`), and normalises G by 2^−e with e a
multiple of the number of layers P + 1 (largest magnitude in [2^−(P+1), 1)). Every factor of
the answer is then scaled by the same 2^(e/(P+1)), exactly: G·2^k gives exactly the answer
for G with every factor times 2^(k/(P+1)) (k a multiple of P + 1), equal standard deviations
stay equal, and the residual is the one measured on the normalised problem (a relative
measure, so no norm overflows or underflows). Numerical exceptions leave as ``ValueError``.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from .. import _validation as v
from .._errors import typed_errors
from .._limits import check_chain, check_deconv
from .._memory import check_working_set
from .._scaling import exponent, relative_difference, scale_back
from ..reference import pad_centered
from .result import MorphResult

#: The most single-layer solves or rounds any morph accepts: more would run for hours.
MAX_ITER = 100_000

#: ``layout(g, arguments)`` -> (widths, kernels) of the chain in data-flow order, validated.
Layout = Callable[[np.ndarray, dict[str, Any]], tuple[Sequence[int], Sequence[tuple[int, ...]]]]
#: (arguments, G, widths, kernels, groups) → the layers a chain morph solves, or None.
Solves = Callable[[dict[str, Any], np.ndarray, list[int], list[tuple], int], list[int] | None]


def check_common(arguments: dict[str, Any]) -> None:
    """The options every morph shares: ``tol`` (None or a positive finite number) and
    ``max_iter`` (a positive int up to :data:`MAX_ITER`)."""
    if arguments.get("tol") is not None:
        v.real_number(arguments["tol"], "tol", low=0.0, low_open=True)
    if "max_iter" in arguments:
        v.positive_int(arguments["max_iter"], "max_iter", MAX_ITER)


def bind(
    signature: inspect.Signature, what: str, args: tuple, kwargs: dict[str, Any]
) -> inspect.BoundArguments:
    """The call's arguments by name, defaults applied (``TypeError`` naming ``what``)."""
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError as exc:
        raise TypeError(f"{what}(): {exc}") from None
    bound.apply_defaults()
    return bound


def chain_morph(
    what: str, layout: Layout, solves: Solves | None = None
) -> Callable[[Callable[..., MorphResult]], Any]:
    """Decorate a chain morph ``fn(g, ...)`` (see the module docstring); ``solves``: the
    layers it will solve, where its working set is counted by them
    (:func:`netmorph_core._limits.general_chain_bytes`)."""

    def decorate(fn: Callable[..., MorphResult]) -> Callable[..., MorphResult]:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> MorphResult:
            bound = bind(signature, what, args, kwargs)
            g = v.as_filter(bound.arguments["g"], "G")
            check_common(bound.arguments)
            widths, kernels = layout(g, bound.arguments)
            layers = ", ".join(f"({w}, {k})" for w, k in zip(widths, kernels))
            groups = v.positive_int(bound.arguments.get("groups", 1), "groups")
            # a grouped chain is ``groups`` chains of C/groups channels (exact when divisible;
            # the grouped morph itself rejects the rest)
            check_chain(
                max(g.shape[0] // groups, 1),
                g.shape[1],
                [max(w // groups, 1) for w in widths],
                kernels,
                f"{what} into [{layers}]" + (f" with groups={groups}" if groups != 1 else ""),
                groups=groups,
                solved=solves(bound.arguments, g, widths, kernels, groups) if solves else None,
            )
            parts = len(kernels)
            e = parts * math.ceil(exponent(g) / parts)
            if e == 0:
                return fn(*bound.args, **bound.kwargs)
            bound.arguments["g"] = np.ldexp(g, -e)
            result = fn(*bound.args, **bound.kwargs)
            step = e // parts
            filters = tuple(scale_back(f, step, f.dtype, f"{what} of G") for f in result.filters)
            return replace(result, filters=filters)

        return typed_errors(what)(wrapper)

    return decorate


def depth_layout(g: np.ndarray, arguments: dict[str, Any]) -> tuple[list[int], list[tuple]]:
    """(width, k1), (C2, k2) of :func:`morph_depth` / :func:`stable_depth`."""
    from .solvability import layer_kernel

    ndim = g.ndim - 2
    width = v.positive_int(arguments["width"], "width")
    k1 = layer_kernel(arguments["k1"], ndim, "k1")
    k2 = layer_kernel(arguments["k2"], ndim, "k2")
    v.effective_size(g.shape[2:], k2, k1, "k1, k2")
    return [width, g.shape[0]], [k1, k2]


def general_solves(
    arguments: dict[str, Any],
    g: np.ndarray,
    widths: list[int],
    kernels: list[tuple],
    groups: int,
) -> list[int] | None:
    """The layers the general method of :func:`morph_subnet` solves for three or more
    ungrouped layers: the first of its order alone where that layer's one-solve exactness
    condition holds, else every layer; None for another method, grouped layers or two
    layers (counted as a whole)."""
    if arguments.get("method") != "general" or groups != 1 or len(widths) < 3:
        return None
    from .chain import chain_exact_layers
    from .pair import general_order

    exact = chain_exact_layers(g.shape[1], widths, kernels)
    sizes = [w * a * math.prod(k) for w, a, k in zip(widths, [g.shape[1], *widths], kernels)]
    first = general_order(exact, [n / g.size for n in sizes])[0]
    return [first] if exact[first] else list(range(len(widths)))


def subnet_layout(g: np.ndarray, arguments: dict[str, Any]) -> tuple[list[int], list[tuple]]:
    """The layers of :func:`morph_subnet` / :func:`stable_subnet`."""
    from .chain import chain_effective_size, check_layers

    widths, kernels = check_layers(g, arguments["layers"])
    chain_effective_size(g.shape[2:], kernels)
    return widths, kernels


def _potentials(module: Any, e: int) -> dict[str, int]:
    """Integer exponents φ(u) with φ(source) = 0, φ(sink) = e, growing with the longest path
    from the source: an edge u → v then carries 2^(φ(v) − φ(u)) and every source → sink path
    carries 2^e in all."""
    depth = {module.source: 0}
    for u in module.vertices:  # topological order
        for edge in module.out_edges(u):
            depth[edge.head] = max(depth.get(edge.head, 0), depth[u] + 1)
    longest = depth[module.sink]
    return {u: round(e * d / longest) for u, d in depth.items()}


def module_morph(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate :func:`morph_module` ``fn(g, module, ...)``: validation of the shared options,
    the module's memory bound, and G normalised by 2^−e with every edge u → v scaled by
    2^(φ(v) − φ(u)) (:func:`_potentials`): identity edges of the normalised module get
    scale·2^−(φ(v) − φ(u)), every returned filter 2^(φ(v) − φ(u)), so the module's kernel gains
    exactly 2^e. e is G's exponent, or an identity edge's when larger: a G far below a fixed
    identity path needs filters that cancel it, which is a matter of precision, not scaling."""
    from .common import DEFAULT_TOL
    from .graph import Module, bind_to_layer, compose_module, reduce_module

    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        bound = bind(signature, "morph_module", args, kwargs)
        g = v.as_filter(bound.arguments["g"], "G")
        module = bound.arguments["module"]
        check_common(bound.arguments)
        if not isinstance(module, Module):
            return fn(*bound.args, **bound.kwargs)
        shape = bind_to_layer(module, g)
        kt = math.prod(shape.effective_size)
        entries = sum(math.prod(shape.filter_shape(x.name)) for x in module.edges)
        entries += sum(c * max(g.shape[:2]) * kt for c in shape.channels.values())
        check_working_set(8 * 4 * entries + 8 * 2 * 2**24, "morph_module")
        c_out, c_in = g.shape[:2]
        for x in module.edges:  # one-sided solves at the source and at the sink
            k = shape.kernels[x.name]
            rest = [t - a + 1 for t, a in zip(shape.effective_size, k)]
            if not x.identity and x.tail == module.source:
                check_deconv(c_out, shape.channels[x.head], c_in, rest, k, f"edge {x.name!r}")
            if not x.identity and x.head == module.sink:
                check_deconv(c_in, shape.channels[x.tail], c_out, rest, k, f"edge {x.name!r}")
        # Fixed identity paths set a scale too: normalise by the larger of G and them.
        scales = [math.frexp(x.scale)[1] for x in module.edges if x.identity and x.scale]
        e = max([exponent(g), *scales])
        phi = _potentials(module, e)
        step = {x.name: phi[x.head] - phi[x.tail] for x in module.edges}
        scaled = Module(
            [
                replace(x, scale=math.ldexp(x.scale, -step[x.name])) if x.identity else x
                for x in module.edges
            ],
            channels=module.channels,
        )
        bound.arguments["g"] = np.ldexp(g, -e)
        bound.arguments["module"] = scaled
        result = fn(*bound.args, **bound.kwargs)
        target = pad_centered(bound.arguments["g"].astype(np.float64), shape.effective_size)
        kernel = compose_module(
            scaled, {n: f.astype(np.float64) for n, f in result.filters.items()}
        )
        residual = relative_difference(target, kernel)
        tol = bound.arguments["tol"]
        tol = DEFAULT_TOL[g.dtype] if tol is None else float(tol)
        if residual > tol and not bound.arguments["allow_approximate"]:
            raise ValueError(
                f"morph_module: the module reproduces G only to a relative residual of "
                f"{residual:.3g} > tol={tol}: G (largest entry {float(np.abs(g).max()):.3g}) is "
                "too small against the module's identity edges to be resolved in floating "
                "point; use allow_approximate=True or rescale G"
            )
        filters = {  # identity edges are the caller's scale·I, never a rescaled copy
            name: shape.identity_kernel(name).astype(f.dtype)
            if module.edge(name).identity
            else scale_back(f, step[name], f.dtype, f"morph_module of G (edge {name!r})")
            for name, f in result.filters.items()
        }
        return replace(
            result,
            filters=filters,
            residual=residual,
            exact=residual <= tol,
            module=module,
            reduction=reduce_module(module),
        )

    return typed_errors("morph_module")(wrapper)
