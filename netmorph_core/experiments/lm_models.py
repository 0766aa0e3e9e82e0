"""The decoder-only models of the language-model growth experiment, and their initialisation.

Models are :class:`netmorph_core.torch.models.LlamaStyle` (RMSNorm, RoPE, SwiGLU, untied head)
with multi-head attention (key/value heads = query heads) and a byte vocabulary. Weights start
as in GPT-2/Llama training: every projection N(0, 0.02²), the residual writers (o_proj,
down_proj) N(0, (0.02/√(2·layers))²), the embedding N(0, 0.02²), every norm gain 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..torch.models import LlamaStyle
from .lm_corpus import VOCAB

INIT_STD = 0.02


@dataclass(frozen=True)
class LMShape:
    """d_model ``dim``, ``layers`` blocks, ``heads`` heads of ``head_dim``, SwiGLU ``hidden``."""

    dim: int
    layers: int
    heads: int
    head_dim: int
    hidden: int


def shape_of(model: LlamaStyle) -> LMShape:
    """The shape of a :class:`LlamaStyle` model (read from its modules)."""
    attn = model.layers[0].self_attn
    return LMShape(
        model.embed_tokens.embedding_dim,
        len(model.layers),
        attn.num_heads,
        attn.head_dim,
        model.layers[0].mlp.gate_proj.out_features,
    )


def build_lm(shape: LMShape) -> LlamaStyle:
    """A :class:`LlamaStyle` of ``shape`` with the library's random weights (not trained-like:
    call :func:`init_lm` before training)."""
    return LlamaStyle(
        VOCAB,
        shape.dim,
        shape.layers,
        shape.heads,
        shape.heads,
        shape.head_dim,
        shape.hidden,
    )


@torch.no_grad()
def init_lm(model: LlamaStyle) -> LlamaStyle:
    """Re-draw ``model``'s weights in place from torch's global RNG (see the module doc)."""
    writer_std = INIT_STD / math.sqrt(2 * len(model.layers))
    model.embed_tokens.weight.normal_(0.0, INIT_STD)
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            std = writer_std if name.endswith(("o_proj", "down_proj")) else INIT_STD
            module.weight.normal_(0.0, std)
        elif isinstance(module, nn.RMSNorm):
            module.weight.fill_(1.0)
    return model


def new_lm(shape: LMShape, seed: int) -> LlamaStyle:
    """A freshly initialised model of ``shape``, its weights drawn after seeding with ``seed``."""
    torch.manual_seed(seed)
    return init_lm(build_lm(shape))
