"""Blocks shared by several depths (ALBERT): grown once, used everywhere.

ALBERT runs ``num_hidden_layers`` depths, each calling a layer group of
``encoder.albert_layer_groups``; with one group (``num_hidden_groups = 1``, every released
ALBERT) every depth runs the same ``inner_group_num`` layers. An edit that preserves one layer's
function on every input (new feed-forward units and heads whose output columns cancel, a
factored projection, the wider stream x̃ = [x; x] that every layer maps to [y; y]) preserves
it at every depth, so ``grow_ffn``, ``add_heads``, ``grow_width`` and ``deepen_projection``
edit the shared layers once. The config's sizes (hidden_size, intermediate_size,
num_attention_heads) are one per model, so a uniform edit round-trips; its layer count is the
depth and stays.

``add_block`` inserts a layer into the shared group (``inner_group_num`` + 1): it runs at every
depth right after layer ``at`` − 1, and the post-LN construction (:mod:`.transformer_postln`)
makes it pass that layer's output on at each depth (layer ``at`` − 1's last norm feeds only the
new layer). At 0 it would read the embedding projection at depth 0 and the group's last norm at
the others: refused. A block of its own at one depth is not offered: depth i runs group
⌊i/(L/G)⌋ (L = num_hidden_layers, G = num_hidden_groups), so a child of L + 1 depths gives each
of its groups ⌊(L+1)/G⌋ or ⌈(L+1)/G⌉ consecutive depths; a group run at one depth needs
(L+1)/G < 2, so for L ≥ 3 the old depths span several groups, each holding the shared layers:
``save_pretrained`` refuses one module held twice (shared tensors the class does not declare
tied), and copies in its place lose the sharing (about L times the layer's parameters).

Several groups (``num_hidden_groups`` > 1) are refused by name: depth i runs group
⌊i·groups/layers⌋, and the layout of one list of blocks does not hold them.
"""

from __future__ import annotations

from torch import nn

from .errors import MorphError


def check_groups(model: nn.Module, prefix: str) -> None:
    """MorphError when the block list ``prefix`` is entry 0 of a list of several groups (each
    holding blocks of its own: ALBERT with ``num_hidden_groups`` > 1)."""
    parts = prefix.split(".")
    for i, part in enumerate(parts):
        if not part.isdigit() or i == 0:
            continue
        groups = model.get_submodule(".".join(parts[:i]))
        if isinstance(groups, nn.ModuleList) and len(groups) > 1:
            raise MorphError(
                f"{type(model).__name__} has {len(groups)} layer groups in "
                f"{'.'.join(parts[:i])!r}, each run at some of the depths "
                "(num_hidden_groups > 1); the transformer operations grow one shared group "
                "(num_hidden_groups = 1); refused"
            )
