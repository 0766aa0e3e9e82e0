"""One-block models ("pieces") of a Llama-family checkpoint, for the public operations.

A piece is the stock model class built from the checkpoint's config with one block, a tiny
vocabulary and, of the block, only the part being grown at full size:

- ``attention`` piece: the block's attention and ``input_layernorm``; a 2-unit feed-forward
  whose output projection is zero (it adds exactly 0);
- ``mlp`` piece: the block's ``post_attention_layernorm`` and a slice of its feed-forward
  hidden units (their gate/up rows and down columns: the output is the sum over units, so
  slices add up); one attention head of dimension 2 whose output projection is zero;
- ``ends`` piece: a slice of the vocabulary (embedding rows, head rows) and the final norm.

Pieces are built on the meta device and take their tensors by assignment (the rotary
embedding, a non-persistent buffer, is rebuilt from the config), so a piece costs its own
tensors only.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..torch.hf_config import config_from_dict
from ..torch.transformer_layout import sync_shapes

BLOCK = "model.layers.0."
ATTENTION = ("self_attn.", "input_layernorm.")
MLP = ("mlp.", "post_attention_layernorm.")
#: Width and heads of the dummy attention of an mlp piece, units of an attention piece's MLP.
DUMMY_HEAD_DIM = 2
DUMMY_UNITS = 2


def piece_config(
    config_class: type,
    values: dict[str, Any],
    *,
    heads: int,
    kv_heads: int,
    head_dim: int,
    units: int,
    vocab: int,
    layer_type: str | None,
) -> object:
    """The checkpoint's config with one block of the given sizes and ``vocab`` tokens."""
    values = dict(values)
    values.update(
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        intermediate_size=units,
        num_hidden_layers=1,
        vocab_size=vocab,
        pad_token_id=None,
        bos_token_id=None,
        eos_token_id=None,
    )
    if layer_type is not None:
        values["layer_types"] = [layer_type]
    if "max_window_layers" in values:
        values["max_window_layers"] = min(int(values["max_window_layers"]), 1)
    return config_from_dict(config_class, values)


def build_piece(
    model_class: type, config: object, tensors: dict[str, torch.Tensor], dtype: torch.dtype
) -> nn.Module:
    """``model_class(config)`` holding ``tensors`` (name → tensor, every parameter; those
    not given are filled as dummies: norms 1, output projections 0, others small random)."""
    with torch.device("meta"):
        model = model_class(config)
    gen = torch.Generator().manual_seed(0)
    state = {}
    for name, p in model.named_parameters():
        if name in tensors:
            state[name] = tensors[name].to(dtype)
        elif "norm" in name:
            state[name] = torch.ones(p.shape, dtype=dtype)
        elif name.endswith(("o_proj.weight", "down_proj.weight")) or name.endswith(".bias"):
            state[name] = torch.zeros(p.shape, dtype=dtype)
        else:
            state[name] = (0.02 * torch.randn(p.shape, generator=gen)).to(dtype)
    model.load_state_dict(state, strict=False, assign=True)
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    rotary = model.model.rotary_emb
    model.model.rotary_emb = type(rotary)(config=config)
    meta = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if meta:
        raise RuntimeError(f"piece left on the meta device: {meta[:3]}")
    sync_shapes(model)
    return model.eval()


def block_tensors(model: nn.Module, index: int, parts: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The tensors of block ``index`` of ``model`` under ``parts``, named inside the block."""
    prefix = f"model.layers.{index}."
    return {
        name[len(prefix) :]: t.detach()
        for name, t in model.state_dict().items()
        if name.startswith(prefix) and name[len(prefix) :].startswith(parts)
    }


def split(total: int, count: int) -> list[int]:
    """``total`` split into ``count`` near-equal non-negative parts (larger ones first)."""
    base, rest = divmod(total, count)
    return [base + (i < rest) for i in range(count)]


def unit_slices(tensors: dict[str, torch.Tensor], sizes: list[int]) -> list[dict]:
    """The mlp tensors of one block cut into slices of ``sizes`` hidden units."""
    out = []
    start = 0
    for size in sizes:
        part = {}
        for name, t in tensors.items():
            if name.startswith("mlp.down_proj.") and name.endswith("weight"):
                part[name] = t[:, start : start + size]
            elif name.startswith("mlp.down_proj."):  # the bias once, in the first slice
                part[name] = t if not out else torch.zeros_like(t)
            elif name.startswith("mlp."):
                part[name] = t[start : start + size]
            else:
                part[name] = t
        out.append(part)
        start += size
    return out


def join_units(slices: list[dict[str, torch.Tensor]], parent_sizes: list[int]) -> dict:
    """Grown mlp slices joined: every slice's parent units first (in order), then every
    slice's new units, so the parent's units keep their positions."""
    out = {}
    for name in slices[0]:
        if not name.startswith("mlp."):
            out[name] = slices[0][name]
            continue
        if name.startswith("mlp.down_proj.") and not name.endswith("weight"):
            out[name] = slices[0][name]  # the down bias is shared, not per unit
            continue
        axis = 1 if name.startswith("mlp.down_proj.") else 0
        old = [s[name].narrow(axis, 0, n) for s, n in zip(slices, parent_sizes)]
        new = [
            s[name].narrow(axis, n, s[name].shape[axis] - n) for s, n in zip(slices, parent_sizes)
        ]
        out[name] = torch.cat(old + new, dim=axis)
    return out
