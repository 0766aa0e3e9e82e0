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
from .._limits import check_chain
from .._scaling import exponent, scale_back
from .result import MorphResult

#: The most single-layer solves or rounds any morph accepts: more would run for hours.
MAX_ITER = 100_000

#: ``layout(g, arguments)`` -> (widths, kernels) of the chain in data-flow order, validated.
Layout = Callable[[np.ndarray, dict[str, Any]], tuple[Sequence[int], Sequence[tuple[int, ...]]]]


def check_common(arguments: dict[str, Any]) -> None:
    """The options every morph shares: ``tol`` (None or a positive finite number) and
    ``max_iter`` (a positive int up to :data:`MAX_ITER`)."""
    if arguments.get("tol") is not None:
        v.real_number(arguments["tol"], "tol", low=0.0, low_open=True)
    if "max_iter" in arguments:
        v.positive_int(arguments["max_iter"], "max_iter", MAX_ITER)


def chain_morph(what: str, layout: Layout) -> Callable[[Callable[..., MorphResult]], Any]:
    """Decorate a chain morph ``fn(g, ...)`` (see the module docstring)."""

    def decorate(fn: Callable[..., MorphResult]) -> Callable[..., MorphResult]:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> MorphResult:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            g = v.as_filter(bound.arguments["g"], "G")
            check_common(bound.arguments)
            widths, kernels = layout(g, bound.arguments)
            check_chain(g.shape[0], g.shape[1], widths, kernels, what)
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


def subnet_layout(g: np.ndarray, arguments: dict[str, Any]) -> tuple[list[int], list[tuple]]:
    """The layers of :func:`morph_subnet` / :func:`stable_subnet`."""
    from .subnet import chain_effective_size, check_layers

    widths, kernels = check_layers(g, arguments["layers"])
    chain_effective_size(g.shape[2:], kernels)
    return widths, kernels
