"""Edits shared by the Swin operations (:mod:`.swin`, :mod:`.swin_width`): the per-head
position bias of new heads, and which projections may be listed as edited modules."""

from __future__ import annotations

import numpy as np
from torch import nn

from .errors import MorphError
from .support import check_called_by_parent, check_no_hooks
from .swin_layout import SwinStage
from .transformer import _Editor, _gather_rows, _std
from .transformer_layout import Block

__all__ = ["by_attribute", "position_bias"]


def by_attribute(model: nn.Module, names: tuple[str, ...]) -> tuple[str, ...]:
    """``names`` less the layers whose parent does not call them as modules (torchvision's
    window attention passes ``qkv.weight`` to a functional), which may carry no hooks: the
    operations here replace parameters on the same modules, never the modules, so such a
    forward reads the new ones; the measurement checks the child."""
    kept = []
    for name in names:
        try:
            check_called_by_parent(model, name)
        except MorphError:
            check_no_hooks(model.get_submodule(name), name)
            continue
        kept.append(name)
    return tuple(kept)


def position_bias(
    edit: _Editor, stage: SwinStage, block: Block, old: int, new: int, sets: list[list[int]]
) -> None:
    """The per-head position bias of ``block`` grows from ``old`` to ``new`` heads: parent
    heads keep theirs; the heads of each cancelling set in ``sets`` share one new random
    table column (v1) or bias-MLP output row and one logit scale (the parent's mean; v2)."""
    src = np.concatenate([np.arange(old), -np.ones(new - old, int)])
    if stage.table:
        name = block.name(stage.table)
        table = edit.get(name)
        new_t = _gather_rows(table, src, 1)
        for head_set in sets:
            column = edit.noise((table.shape[0],), _std(table), table)
            for h in head_set:
                new_t[:, h] = column
        edit.put(name, new_t, (None, src))
    if stage.cpb:
        name = block.name(stage.cpb)
        w, b = edit.linear(name)
        new_w = _gather_rows(w, src)
        edit.set_rows(new_w, sets, _std(w))
        new_b = None if b is None else _gather_rows(b, src)
        edit.put_linear(name, new_w, new_b, src, None)
    if stage.logit_scale:
        name = block.name(stage.logit_scale)
        scale = edit.get(name)
        new_s = _gather_rows(scale, src)
        new_s[old:] = scale.mean()
        edit.put(name, new_s, (src, *(None,) * (scale.dim() - 1)))
