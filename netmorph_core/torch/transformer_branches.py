"""Norms that read a layer's output directly, found in a recorded forward pass.

A *branch norm* normalises a block's branch before the residual sum: OLMo-2 computes
h = x + N₁(attn(x)), y = h + N₂(mlp(h)) (no norm before either branch); Gemma-2's sandwich
blocks have both, x + N₁(attn(n₁(x))). A *joint q/k norm* normalises a whole query or key
projection, n(q) over all heads·head_dim coordinates (OLMo-2's ``q_norm``/``k_norm``).

Both are the first norm call after a linear layer's call whose input holds that layer's
recorded output (same shape, same values), before the next linear layer or the block's end.
The calls are :class:`Call` records of :mod:`.transformer_trace`: ``name`` (``L:``/``N:``/
``B:`` prefixed), ``inp``, ``out``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch


class Call(Protocol):
    """One recorded module call."""

    name: str
    inp: torch.Tensor | None
    out: torch.Tensor | None


def reader_norm(calls: Sequence[Call], layer: Call, norms: set[str]) -> Call | None:
    """The call of a norm in ``norms`` that reads ``layer``'s output, None where none does
    before the next linear layer or block boundary."""
    at = next(i for i, c in enumerate(calls) if c is layer)
    out = layer.out
    for call in calls[at + 1 :]:
        if call.name.startswith(("L:", "B:")):
            return None
        inp = call.inp
        if (
            call.name in norms
            and out is not None
            and inp is not None
            and inp.shape == out.shape
            and torch.equal(inp, out)
        ):
            return call
    return None


def branch_norms(
    calls: Sequence[Call], o: Call, out: Call, norms: set[str]
) -> tuple[Call | None, Call | None]:
    """(N₁, N₂): the norms that read the attention output ``o`` and the feed-forward output
    ``out`` (:func:`reader_norm`), None for a branch without one."""
    return reader_norm(calls, o, norms), reader_norm(calls, out, norms)
