"""``widen`` of one attention projection (query, key or value) of a transformer block: every
head of the block grows from head_dim h to h' = h + δ, the width asked for being heads·h'.

Per head, the new query coordinates are random and the new key coordinates zero, so every
score q·k keeps its value; the new value coordinates are random and the output projection's
new columns zero, so the block's output keeps its value. The scale of the scores stays the
parent's 1/√h: the attention module must hold it as an attribute (``scaling``, ``scale``, or
none for T5's unscaled scores); the measurement refuses any other. Rotary position embeddings
rotate all h coordinates of a head with frequencies that depend on h, and are refused by name.
The block's attention module records its own head_dim (the config, one value for every block,
is marked; :func:`~.hf_load.load_grown` rebuilds the child).

Encoder–decoders (:mod:`.encdec_layout`: T5, MT5, UMT5, BART, Marian, MBart, Pegasus) widen
the same way in either stack, the decoder's cross-attention included: its keys and values read
the encoder's output, whose width does not change. T5's scores are unscaled (``scaling`` 1)
and its relative attention bias is one value per head and position pair, whatever head_dim.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from torch import nn

from .. import _validation as v
from .encdec import probe_inputs
from .encdec_layout import describe_encoder_decoder
from .errors import MorphError
from .pipeline import run_on_model
from .report import MorphReport, Outcome
from .transformer import _default_probe, _Editor, _std
from .transformer_layout import Block, Layout, describe

#: Attention attributes that record the head_dim (BERT's, GPT-NeoX's, the others').
HEAD_DIM_ATTRS = ("head_dim", "attention_head_size", "head_size", "d_kv", "key_value_proj_dim")
#: Attention attributes that record heads·head_dim (BERT's, T5's).
ALL_HEADS_ATTRS = ("all_head_size", "inner_dim")


@dataclass(frozen=True)
class Projection:
    """The attention projection a ``widen`` names: the ``layout`` of its attention (a decoder
    stack's cross-attention is a layout of its own), its ``block``, and the model's default
    ``probe`` (token ids, images; an encoder–decoder's ids and decoder ids)."""

    layout: Layout
    block: Block
    probe: Callable[[], tuple[torch.Tensor, ...]]


def attention_projection(model: nn.Module, at: object) -> Projection | None:
    """The :class:`Projection` when ``at`` names the query, key or value Linear layer of a block
    of a recognised transformer with three separate projections (an encoder–decoder's self- or
    cross-attention in either stack included); None otherwise."""
    if not isinstance(at, str) or not isinstance(model, nn.Module):
        return None
    try:
        if not isinstance(model.get_submodule(at), nn.Linear):
            return None
        es = describe_encoder_decoder(model)
        if es is not None:
            layouts = [x for s in es.stacks for x in (s.layout, s.cross) if x is not None]
            probe = partial(probe_inputs, model, es)
        else:
            layout = describe(model)
            layouts, probe = [layout], partial(_default_probe, model, layout)
    except Exception:  # not a layer of a transformer this recognises: the general widen's case
        return None
    for layout in layouts:
        if len(layout.family.qkv) != 3:
            continue
        for block in layout.blocks:
            if at in {block.name(rel) for rel in layout.family.qkv}:
                return Projection(layout, block, probe)
    return None


def _rotary(model: nn.Module) -> str | None:
    return next((n for n, m in model.named_modules() if "rotary" in type(m).__name__.lower()), None)


def widen_head_dim(
    model: nn.Module,
    at: str,
    width: int,
    *,
    seed: int | np.random.Generator | None = None,
    probe: object = None,
    tol: float | str | None = "auto",
) -> tuple[nn.Module, MorphReport]:
    """The projection ``at`` (query, key or value of a block) widens to ``width`` = heads·h'
    rows by growing every head of its block to head_dim h' (module docstring)."""
    found = attention_projection(model, at)
    if found is None:
        raise MorphError(f"at={at!r} is not an attention projection of a recognised transformer")
    layout, block = found.layout, found.block
    width = v.positive_int(width, "width")
    q, k, val = (block.name(rel) for rel in layout.family.qkv)
    heads = {q: block.heads, k: block.kv_heads, val: block.kv_heads}[at]
    rows = heads * block.head_dim
    if width <= rows or width % heads:
        raise ValueError(
            f"width={width}: {at!r} holds {heads} heads of head_dim {block.head_dim}; widen it to "
            f"a larger multiple of {heads} (each head grows to width / {heads})"
        )
    rotary = _rotary(model)
    if rotary is not None:
        raise MorphError(
            f"widening {at!r}: {rotary!r} rotates every head_dim coordinate with frequencies "
            "that depend on head_dim, which a wider head would change; add heads instead "
            "(add_heads)"
        )
    h, new_h = block.head_dim, width // heads
    attention = block.name(layout.family.attention)
    seed = v.torch_seed(seed)

    def build(child: nn.Module) -> Outcome:
        edit = _Editor(child, seed)
        _grow(edit, q, block.heads, h, new_h, zero=False)
        _grow(edit, k, block.kv_heads, h, new_h, zero=True)
        _grow(edit, val, block.kv_heads, h, new_h, zero=False)
        _grow_input(edit, block.name(layout.family.o), block.heads, h, new_h)
        module = child.get_submodule(attention)
        for attr in HEAD_DIM_ATTRS:
            if getattr(module, attr, None) == h:
                setattr(module, attr, new_h)
        for attr in ALL_HEADS_ATTRS:
            if getattr(module, attr, None) == block.heads * h:
                setattr(module, attr, block.heads * new_h)
        return edit.outcome(
            [
                f"every head of {attention!r} grows from head_dim {h} to {new_h}: new key "
                "coordinates zero (the scores keep their values and their 1/√head_dim scale), "
                "new value coordinates read by zero output columns"
            ]
        )

    return run_on_model(
        "widen",
        model,
        (q, k, val),
        build,
        probe,
        tol,
        False,
        found.probe,
        edits=(q, k, val, block.name(layout.family.o)),
        replaced=(q, k, val, block.name(layout.family.o)),
    )


def _head_rows(heads: int, h: int, new_h: int) -> np.ndarray:
    """Child row → parent row of a projection of ``heads`` heads grown from ``h`` to ``new_h``
    rows each (−1 for a new row)."""
    slot = np.arange(new_h)
    per_head = [np.where(slot < h, head * h + slot, -1) for head in range(heads)]
    return np.concatenate(per_head)


def _grow(edit: _Editor, name: str, heads: int, h: int, new_h: int, zero: bool) -> None:
    """Rows of the projection ``name`` per head: the parent's, then new ones (zero, or random
    of the weight's scale; zero bias)."""
    w, b = edit.linear(name)
    index = _head_rows(heads, h, new_h)
    fresh = torch.as_tensor(np.flatnonzero(index < 0))
    keep = torch.as_tensor(np.maximum(index, 0))
    new_w = w.to(torch.float64).index_select(0, keep)
    new_w[fresh] = 0.0 if zero else edit.noise((len(fresh), w.shape[1]), _std(w), new_w)
    new_b = None
    if b is not None:
        new_b = b.to(torch.float64).index_select(0, keep)
        new_b[fresh] = 0.0
    edit.put_linear(name, new_w, new_b, index, None)


def _grow_input(edit: _Editor, name: str, heads: int, h: int, new_h: int) -> None:
    """Columns of the output projection ``name`` per head: the parent's, then zeros."""
    w, b = edit.linear(name)
    index = _head_rows(heads, h, new_h)
    fresh = torch.as_tensor(np.flatnonzero(index < 0))
    new_w = w.to(torch.float64).index_select(1, torch.as_tensor(np.maximum(index, 0)))
    new_w[:, fresh] = 0.0
    edit.put_linear(name, new_w, None if b is None else b.to(torch.float64), None, index)
