"""Where the parts of an encoder–decoder transformer live (T5, BART).

An encoder–decoder holds two stacks of blocks under one owner (the root, or ``model`` of the
``…ForConditionalGeneration`` heads): ``encoder`` and ``decoder``. Each stack is described as
a :class:`~.transformer_layout.Layout` of its self-attention and feed-forward layers, so the
block-level edits of :mod:`.transformer` apply to it unchanged; a decoder block's
cross-attention (queries from the decoder stream, keys and values from the encoder's output)
is a second ``Layout`` over the same blocks. Recognised layouts:

- ``t5``: T5 (``block[i].layer[0].SelfAttention.{q,k,v,o}``, the decoder's
  ``layer[1].EncDecAttention``, the feed-forward ``DenseReluDense.{wi, wo}`` or gated
  ``{wi_0, wi_1, wo}``; pre-RMSNorm without mean, ``final_layer_norm`` per stack; a relative
  attention bias ``relative_attention_bias`` (buckets × heads) in block 0 of each stack,
  computed once per forward and passed to every later block); also ``T5EncoderModel`` (an
  encoder alone) and LongT5's encoders (:data:`T5_ATTENTIONS`);
- ``bart``: BART and the models laid out like it (``layers[i].self_attn.{q,k,v,out}_proj``,
  ``encoder_attn``, ``fc1``/``fc2``; LayerNorms ``self_attn_layer_norm``,
  ``encoder_attn_layer_norm``, ``final_layer_norm``; embeddings ``embed_tokens`` (scaled) +
  ``embed_positions``, then ``layernorm_embedding`` where present): post-LN (BART, Marian),
  or pre-LN where the stack ends in a final ``layer_norm`` (MBart, Pegasus, Blenderbot).

Blocks are addressed by one global index: the encoder's blocks first (0 … E−1), then the
decoder's (E … E+D−1). A model with cross-attention in another layout is refused by name.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator
from dataclasses import dataclass

from torch import nn

from .errors import MorphError
from .transformer_layout import (
    CROSS_ATTENTION,
    Block,
    Family,
    Layout,
    _check_blocks,
    as_matrix,
)

#: The self-attention modules of T5's layout: T5's, and LongT5's local attention (each token
#: attends to the tokens within ``local_radius`` of it; heads and bias as T5's).
T5_ATTENTIONS = ("SelfAttention", "LocalSelfAttention", "TransientGlobalSelfAttention")

#: Attributes of an attention module that give its head_dim (T5: ``key_value_proj_dim``).
HEAD_DIM_ATTRS = ("head_dim", "key_value_proj_dim", "attention_head_size")


def _t5_self(ff: int, gated: bool, attention: str = "SelfAttention") -> Family:
    """T5's self-attention (``attention``: LongT5's encoder has ``LocalSelfAttention``) and
    feed-forward of a stack whose feed-forward is ``layer[ff]``; ``alibi``: the relative bias
    differs per head (heads of a cancelling set would not cancel)."""
    dense = f"layer.{ff}.DenseReluDense"
    return Family(
        "t5",
        blocks="block",
        attention=f"layer.0.{attention}",
        qkv=tuple(f"layer.0.{attention}.{p}" for p in "qkv"),
        o=f"layer.0.{attention}.o",
        ffn_in=(f"{dense}.wi_0", f"{dense}.wi_1") if gated else (f"{dense}.wi",),
        ffn_out=f"{dense}.wo",
        norms=("layer.0.layer_norm", f"layer.{ff}.layer_norm"),
        writers=("embed_tokens",),
        final_norm="final_layer_norm",
        alibi=True,
    )


T5_CROSS = Family(
    "t5",
    blocks="block",
    attention="layer.1.EncDecAttention",
    qkv=tuple(f"layer.1.EncDecAttention.{p}" for p in "qkv"),
    o="layer.1.EncDecAttention.o",
    ffn_in=(),
    ffn_out="layer.2.DenseReluDense.wo",
    norms=("layer.1.layer_norm",),
    writers=("embed_tokens",),
    final_norm="final_layer_norm",
)


def _bart_self() -> Family:
    return Family(
        "bart",
        blocks="layers",
        attention="self_attn",
        qkv=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
        o="self_attn.out_proj",
        ffn_in=("fc1",),
        ffn_out="fc2",
        norms=("self_attn_layer_norm", "final_layer_norm"),
        writers=("embed_tokens", "embed_positions"),
        final_norm=None,
        stream_norms=("layernorm_embedding",),
        post_ln=True,
        derived_head_dim=True,
    )


BART_CROSS = Family(
    "bart",
    blocks="layers",
    attention="encoder_attn",
    qkv=("encoder_attn.q_proj", "encoder_attn.k_proj", "encoder_attn.v_proj"),
    o="encoder_attn.out_proj",
    ffn_in=(),
    ffn_out="fc2",
    norms=("encoder_attn_layer_norm",),
    writers=("embed_tokens", "embed_positions"),
    final_norm=None,
    post_ln=True,
    derived_head_dim=True,
)


@dataclass(frozen=True)
class Stack:
    """One stack: ``name`` ("encoder"/"decoder"), ``layout`` (self-attention and
    feed-forward; ``layout.owner`` is the stack's prefix), ``cross`` (the decoder's
    cross-attention over the same blocks, else None) and ``offset`` (the global index of its
    block 0)."""

    name: str
    layout: Layout
    cross: Layout | None
    offset: int

    @property
    def prefix(self) -> str:
        return self.layout.owner

    def __len__(self) -> int:
        return len(self.layout.blocks)


@dataclass(frozen=True)
class EncoderDecoder:
    """A recognised encoder–decoder (or T5's encoder alone): ``kind`` ("t5"/"bart": the
    layout), its ``model_type`` (the config's, else the class name), the ``owner`` prefix of
    its stacks, the ``stacks`` (encoder first), the output ``head`` (the layer reading the
    decoder's stream; None when the model returns the stream), whether the head is ``tied``
    to the shared embedding, and the model ``config``."""

    kind: str
    model_type: str
    owner: str
    stacks: tuple[Stack, ...]
    d_model: int
    head: str | None
    tied: bool
    config: object | None

    def name(self, rel: str) -> str:
        return f"{self.owner}.{rel}" if self.owner else rel

    @property
    def total(self) -> int:
        """The number of blocks of both stacks."""
        return sum(len(s) for s in self.stacks)

    def locate(self, index: int) -> tuple[Stack, int]:
        """(stack, position in it) of global block ``index``."""
        for stack in self.stacks:
            if index < stack.offset + len(stack):
                return stack, index - stack.offset
        raise IndexError(index)

    def stack(self, name: str) -> Stack | None:
        return next((s for s in self.stacks if s.name == name), None)

    def blocks(self) -> Iterator[tuple[Stack, Block]]:
        for stack in self.stacks:
            for block in stack.layout.blocks:
                yield stack, block


def _get(model: nn.Module, name: str) -> nn.Module | None:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def _geometry(attention: nn.Module, q: nn.Module, where: str) -> tuple[int, int]:
    """(heads, head_dim) of a multi-head attention module from its head_dim attribute and its
    query rows."""
    hd = next(
        (
            int(getattr(attention, a))
            for a in HEAD_DIM_ATTRS
            if isinstance(getattr(attention, a, None), int)
        ),
        None,
    )
    if hd is None or hd <= 0:
        raise MorphError(f"{where!r} ({type(attention).__name__}) records no head_dim; refused")
    rows = as_matrix(q).shape[0]
    if rows % hd:
        raise MorphError(f"{where!r}: {rows} query rows are not whole heads of {hd}; refused")
    return rows // hd, hd


def _stack_layout(model: nn.Module, family: Family, prefix: str, config: object | None) -> Layout:
    """The :class:`Layout` of the stack at ``prefix`` under ``family``."""
    blocks = model.get_submodule(f"{prefix}.{family.blocks}")
    _check_blocks(family, f"{prefix}.{family.blocks}", blocks)
    found = []
    for i, block in enumerate(blocks):
        where = f"{prefix}.{family.blocks}.{i}"
        attention = block.get_submodule(family.attention)
        heads, hd = _geometry(
            attention, block.get_submodule(family.qkv[0]), f"{where}.{family.attention}"
        )
        kv_rows = as_matrix(block.get_submodule(family.qkv[1])).shape[0]
        if kv_rows != heads * hd:
            raise MorphError(
                f"'{where}.{family.qkv[1]}' holds {kv_rows} rows, not {heads} heads of {hd}: "
                "only multi-head attention is understood in an encoder–decoder; refused"
            )
        found.append(Block(where, heads, heads, hd))
    first = blocks[0]
    d_model = as_matrix(first.get_submodule(family.o)).shape[0]
    norm = first.get_submodule(family.norms[0])
    kind = (
        "layer"
        if isinstance(norm, nn.LayerNorm) or getattr(norm, "bias", None) is not None
        else "rms"
    )
    return Layout(family, prefix, tuple(found), d_model, kind, None, False, config)


def _family(block: nn.Module, decoder: bool) -> tuple[Family, Family | None] | None:
    """The (self, cross) families whose modules ``block`` holds, or None."""
    ff = 2 if decoder else 1
    for gated, attention in itertools.product((True, False), T5_ATTENTIONS):
        family = _t5_self(ff, gated, attention)
        names = (*family.qkv, family.o, *family.ffn_in, family.ffn_out, *family.norms)
        cross_names = (*T5_CROSS.qkv, T5_CROSS.o, *T5_CROSS.norms)
        if all(_get(block, n) is not None for n in names):
            if not decoder:
                return family, None
            if all(_get(block, n) is not None for n in cross_names):
                return family, T5_CROSS
    family = _bart_self()
    names = (*family.qkv, family.o, *family.ffn_in, family.ffn_out, *family.norms)
    if all(_get(block, n) is not None for n in names):
        if not decoder:
            return family, None
        if all(_get(block, n) is not None for n in (*BART_CROSS.qkv, BART_CROSS.o)):
            return family, BART_CROSS
    return None


def _stacks_owner(model: nn.Module) -> str | None:
    """The name of the first module (outermost first) holding an ``encoder`` stack of T5 or
    BART blocks."""
    for owner_name, owner in model.named_modules():
        encoder = getattr(owner, "encoder", None)
        if not isinstance(encoder, nn.Module):
            continue
        for rel in ("block", "layers"):
            blocks = getattr(encoder, rel, None)
            if isinstance(blocks, nn.ModuleList) and len(blocks) and _family(blocks[0], False):
                return owner_name
    return None


def _cross_attention(model: nn.Module) -> str | None:
    return next(
        (n for n, _ in model.named_modules() if n.rpartition(".")[2].lower() in CROSS_ATTENTION),
        None,
    )


def _head(model: nn.Module, owner: str, d: int) -> str | None:
    """The output head's layer that reads the decoder's stream: ``lm_head``, else the first
    Linear of d inputs in a module of the root beside the stacks' owner (BART's and T5's
    ``classification_head.dense``, ``qa_outputs``); None when the model returns the stream."""
    if isinstance(_get(model, "lm_head"), nn.Linear):
        return "lm_head"
    beside = {owner.partition(".")[0]} if owner else {"encoder", "decoder"}
    for name, child in model.named_children():
        if name in beside:
            continue
        for rel, m in child.named_modules():
            if isinstance(m, nn.Linear) and m.in_features == d:
                return f"{name}.{rel}" if rel else name
    return None


def describe_encoder_decoder(model: nn.Module) -> EncoderDecoder | None:
    """The :class:`EncoderDecoder` of a T5/BART model (or T5's encoder alone); None for a
    model with neither stacks of these layouts nor cross-attention, or with an encoder alone
    that reads no token embedding (Whisper's); MorphError naming the
    cross-attention of an encoder–decoder in another layout."""
    owner = _stacks_owner(model)
    if owner is None:
        cross = _cross_attention(model)
        if cross is not None:
            raise MorphError(
                f"{type(model).__name__} is an encoder–decoder model ({cross!r} attends to the "
                "encoder's output: cross-attention) whose blocks are laid out neither as T5's "
                "nor as BART's; refused"
            )
        return None
    config = getattr(model, "config", None)
    root = model.get_submodule(owner) if owner else model
    if not isinstance(getattr(root, "decoder", None), nn.Module) and not isinstance(
        getattr(root.encoder, "embed_tokens", None), nn.Embedding
    ):
        return None  # an encoder alone on other inputs (Whisper's audio encoder): one stack
    stacks: list[Stack] = []
    kind = ""
    offset = 0
    for name in ("encoder", "decoder"):
        stack = getattr(root, name, None)
        if not isinstance(stack, nn.Module):
            continue
        prefix = f"{owner}.{name}" if owner else name
        rel = "block" if isinstance(getattr(stack, "block", None), nn.ModuleList) else "layers"
        blocks = getattr(stack, rel, None)
        found = (
            _family(blocks[0], name == "decoder")
            if isinstance(blocks, nn.ModuleList) and len(blocks)
            else None
        )
        if found is None:
            raise MorphError(
                f"{prefix!r} of {type(model).__name__} is not a stack of T5 or BART blocks "
                f"(with cross-attention in the decoder); refused"
            )
        family, cross = found
        final = getattr(stack, "layer_norm", None)
        if family.name == "bart" and isinstance(final, nn.LayerNorm):  # MBart, Pegasus: pre-LN
            family = dataclasses.replace(family, post_ln=False, final_norm="layer_norm")
            cross = cross and dataclasses.replace(cross, post_ln=False, final_norm="layer_norm")
        if kind and family.name != kind:
            raise MorphError(
                f"{type(model).__name__}: the encoder is {kind}, the decoder {family.name}; refused"
            )
        kind = family.name
        layout = _stack_layout(model, family, prefix, config)
        cross_layout = None if cross is None else _stack_layout(model, cross, prefix, config)
        stacks.append(Stack(name, layout, cross_layout, offset))
        offset += len(layout.blocks)
    d = stacks[0].layout.d_model
    if any(s.layout.d_model != d for s in stacks):
        raise MorphError(f"{type(model).__name__}: the stacks' widths differ; refused")
    head = _head(model, owner, d)
    shared = _get(model, f"{owner}.shared" if owner else "shared")
    tied = bool(
        head is not None
        and isinstance(shared, nn.Embedding)
        and model.get_submodule(head).weight is shared.weight
    )
    model_type = str(getattr(config, "model_type", "") or type(model).__name__)
    return EncoderDecoder(kind, model_type, owner, tuple(stacks), d, head, tied, config)
