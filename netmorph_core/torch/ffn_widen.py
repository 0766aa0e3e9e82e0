"""``widen`` of a transformer block's feed-forward input layer where the graph widen cannot
follow it (a layer subclass whose forward the exported graph does not show as a call, e.g.
Falcon's ``FalconLinear``; a layer run at several depths, ALBERT's shared ``ffn``): the layer's
block grows its feed-forward hidden size (:func:`.transformer.grow_ffn` of that one block),
which is exact. ``width`` keeps ``widen``'s meaning, the layer's new number of outputs: the
new hidden size, or half of it for a fused [gate; up] layer. A layer shared by every depth
grows once, and every depth sees the grown layer.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .encdec_layout import describe_encoder_decoder
from .transformer_layout import Layout, describe


@dataclass(frozen=True)
class FeedForwardInput:
    """The feed-forward input layer ``name`` of block ``block`` (global index: an
    encoder–decoder's encoder blocks first), ``rows`` outputs per hidden unit (2 for a fused
    [gate; up] layer), run at ``depths`` depths (ALBERT's shared layers: more than one)."""

    name: str
    block: int
    rows: int
    depths: int


def feed_forward_input(model: nn.Module, at: object) -> FeedForwardInput | None:
    """The :class:`FeedForwardInput` when ``at`` names a feed-forward input Linear layer of a
    dense block of a recognised transformer or encoder–decoder; None otherwise."""
    if not isinstance(at, str) or not isinstance(model, nn.Module):
        return None
    try:
        if not isinstance(model.get_submodule(at), nn.Linear):
            return None
        es = describe_encoder_decoder(model)
        stacks = [(describe(model), 0)] if es is None else [(s.layout, s.offset) for s in es.stacks]
    except Exception:  # not a transformer these layouts describe: the graph widen's refusal
        return None
    for layout, offset in stacks:
        found = _in_layout(layout, at)
        if found is not None:
            index, rows, depths = found
            return FeedForwardInput(at, offset + index, rows, depths)
    return None


def _in_layout(layout: Layout, at: str) -> tuple[int, int, int] | None:
    fam = layout.family
    if fam.moe:
        return None
    for i, block in enumerate(layout.blocks):
        if at in {block.name(rel) for rel in fam.ffn_in}:
            depth = getattr(layout.config, "num_hidden_layers", None) if fam.shared else 1
            return i, 2 if fam.gate_up else 1, depth if isinstance(depth, int) else 1
    return None
