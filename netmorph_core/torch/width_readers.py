"""Readers of the residual stream outside the blocks that ``grow_width`` does not widen.

An attention pooling head (``nn.MultiheadAttention`` of embed_dim d outside the blocks: the
pooling head SigLIP-2's vision model runs beside its classifier's mean pooling) reads the
stream through its packed ``in_proj_weight`` (3d, d) and checks its input's width: a child
with a wider stream would fail in it, so :func:`check_attention_pools` refuses naming it.
"""

from __future__ import annotations

from torch import nn

from .errors import MorphError


def check_attention_pools(model: nn.Module, blocks: str, d: int, d_model: int) -> None:
    """MorphError naming the first ``nn.MultiheadAttention`` of embed_dim ``d`` outside the
    blocks ``blocks`` (qualified name of their list)."""
    for name, module in model.named_modules():
        if name == blocks or name.startswith(blocks + "."):
            continue
        if isinstance(module, nn.MultiheadAttention) and module.embed_dim == d:
            raise MorphError(
                f"d_model={d_model}: {name!r} (nn.MultiheadAttention) reads the stream through "
                f"its packed in_proj_weight of width {d}, which grow_width does not widen; "
                "refused (an attention pooling head: grow a model without it, or remove it)"
            )
