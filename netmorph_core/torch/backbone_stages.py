"""A Hugging Face backbone's stages follow the blocks ``add_block`` inserts.

A transformer backbone (DINOv2's, as Depth Anything and DPT use it) names its hidden states
``stage_names`` = ["stem", "stage1", …, "stage{n}"]: state 0 is the embeddings' output, state
k the output of block k − 1. It returns the states its config's ``out_indices`` pick. A block
inserted at position ``at`` moves every old block j ≥ at to j + 1, so old state k > at is new
state k + 1: the indices shift with it, and the backbone returns the same features (the new
block's own output is not among them).
"""

from __future__ import annotations

from torch import nn


def _stage_names(n: int) -> list[str]:
    return ["stem", *(f"stage{k}" for k in range(1, n + 1))]


def shift_stages(child: nn.Module, prefix: str, at: int, n: int) -> list[str]:
    """Shift the ``out_indices`` of every backbone of ``child`` whose stages are the n blocks
    at ``prefix`` for a block inserted at ``at`` (module docstring): the config's
    ``stage_names``, ``out_indices`` and ``out_features``, the module's ``stage_names`` and its
    per-stage ``num_features``. Returns the report's notes."""
    notes = []
    for name, module in child.named_modules():
        config = getattr(module, "config", None)
        inside = not name or prefix.startswith(name + ".")
        if not inside or getattr(module, "stage_names", None) != _stage_names(n):
            continue
        if not callable(getattr(config, "set_output_features_output_indices", None)):
            continue
        old = [k % (n + 1) for k in config.out_indices]
        new = [k + 1 if k > at else k for k in old]
        config.stage_names = _stage_names(n + 1)
        config.set_output_features_output_indices(out_features=None, out_indices=new)
        module.stage_names = config.stage_names
        sizes = getattr(module, "num_features", None)
        if isinstance(sizes, list) and len(sizes) == n + 1:
            module.num_features = [*sizes[: at + 1], sizes[at], *sizes[at + 1 :]]
        if new != old:
            notes.append(
                f"backbone {name or type(module).__name__!r} returns the same blocks' outputs: "
                f"out_indices {old} → {new}"
            )
    return notes
