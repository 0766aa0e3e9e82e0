"""Fused experts' 3-D parameters seen in one layout, whichever way they are stored.

Every layout :func:`.moe_find.find_moe` follows (:class:`.moe_find.Fused`) computes, for
expert e and a token x of width d,

    h = φ(G_e·x + g_e) ⊙ (U_e·x + u_e)      (ungated: h = φ(U_e·x + u_e))
    f_e(x) = D_e·h + c_e

with G_e, U_e: I × d, D_e: d × I and biases g_e, u_e (I) and c_e (d) where ``biased``. The
stored ``gate_up_proj`` holds G and U along its hidden axis, [G; U] or interleaved
[g₀, u₀, g₁, u₁, …], and is (E, 2I, d), or (E, d, 2I) when ``transposed`` (``down_proj`` then
(E, I, d) instead of (E, d, I)). :func:`views` gives G, U as (E, I, d), D as (E, d, I) and the
biases as views of the stored parameters (writing a view writes the parameter);
:func:`stored` lays grown views out as the parameters again, with their index maps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .moe_find import MoeBlock


@dataclass(frozen=True)
class Views:
    """``inputs``: [G, U] (gated) or [U], each (E, I, d); ``output``: D (E, d, I);
    ``input_biases``: [g, u] or [u], each (E, I), empty when unbiased; ``output_bias``: c
    (E, d) or None."""

    inputs: list[torch.Tensor]
    output: torch.Tensor
    input_biases: list[torch.Tensor]
    output_bias: torch.Tensor | None


def first_name(block: MoeBlock) -> str:
    """The experts' input parameter: ``gate_up_proj`` (gated) or ``up_proj``."""
    return "gate_up_proj" if block.gated else "up_proj"


def _split(block: MoeBlock, t: torch.Tensor, axis: int) -> list[torch.Tensor]:
    """The gate and up parts of ``t`` along its hidden ``axis`` (views); [t] when ungated."""
    if not block.gated:
        return [t]
    if block.interleaved:
        at = (slice(None),) * axis
        return [t[(*at, slice(0, None, 2))], t[(*at, slice(1, None, 2))]]
    return list(t.chunk(2, dim=axis))


def _join(block: MoeBlock, parts: list[torch.Tensor], axis: int) -> torch.Tensor:
    """The inverse of :func:`_split`: ``parts`` laid out along ``axis`` (a new tensor)."""
    if not block.gated:
        return parts[0].contiguous()
    if block.interleaved:
        return torch.stack(parts, axis + 1).flatten(axis, axis + 1)
    return torch.cat(parts, axis)


def views(block: MoeBlock, experts: nn.Module) -> Views:
    """The :class:`Views` of the fused ``experts`` module of ``block``."""
    first = experts.get_parameter(first_name(block)).detach()
    down = experts.get_parameter("down_proj").detach()
    t = block.transposed
    inputs = [p.transpose(1, 2) if t else p for p in _split(block, first, 2 if t else 1)]
    biases: list[torch.Tensor] = []
    output_bias = None
    if block.biased:
        biases = _split(block, experts.get_parameter(f"{first_name(block)}_bias").detach(), 1)
        output_bias = experts.get_parameter("down_proj_bias").detach()
    return Views(inputs, down.transpose(1, 2) if t else down, biases, output_bias)


def _hidden_index(block: MoeBlock, src: np.ndarray) -> np.ndarray:
    """Child position → parent position (−1 new) along the stored hidden axis of
    ``gate_up_proj`` (``up_proj``), from the same map ``src`` of the I hidden units."""
    if not block.gated:
        return src
    if block.interleaved:
        parts = [np.where(src >= 0, 2 * src + k, -1) for k in range(2)]
        return np.stack(parts, 1).reshape(-1)
    return np.concatenate([src, np.where(src >= 0, src + block.hidden, -1)])


def stored(
    block: MoeBlock, grown: Views, src: np.ndarray
) -> list[tuple[str, torch.Tensor, tuple[np.ndarray | None, ...]]]:
    """(name relative to the experts module, value, index) of every stored parameter whose
    hidden axis changes, laid out from ``grown`` views of I' units; ``src``: child unit →
    parent unit (−1 new)."""
    t = block.transposed
    rows = _hidden_index(block, src)
    inputs = [w.transpose(1, 2) if t else w for w in grown.inputs]
    found = [
        (
            first_name(block),
            _join(block, inputs, 2 if t else 1),
            (None, None, rows) if t else (None, rows, None),
        ),
        (
            "down_proj",
            grown.output.transpose(1, 2).contiguous() if t else grown.output,
            (None, src, None) if t else (None, None, src),
        ),
    ]
    if block.biased:
        bias = _join(block, grown.input_biases, 1)
        found.append((f"{first_name(block)}_bias", bias, (None, rows)))
    return found
