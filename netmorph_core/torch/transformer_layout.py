"""Where the parts of a transformer live: the layout the transformer morphs work on.

A model is recognised from its modules and a traced forward pass
(:mod:`.transformer_trace`): pre-LN and parallel decoders (GPT-2, Phi-3, GPT-NeoX, Falcon,
GPT-J, GPT-Neo, Starcoder2, Bloom, Phi), post-LN encoders (BERT, RoBERTa, ELECTRA,
DistilBERT), vision and audio encoders whose stream is written by a patch or convolution
projection (ViT, DeiT, BEiT, DINOv2, CLIP/SigLIP vision, Whisper's encoder, timm's
VisionTransformer) with their layer scales, and any model that follows these patterns; the
found family is cached per structure. :func:`describe_by_structure` gives that layout alone.

The name table :data:`FAMILIES` is consulted first and holds only the families the trace does
not reproduce:

- ``gemma2``: Gemma-2 and Gemma-3 (Llama's names, with sandwich norms: ``input_layernorm``
  and ``pre_feedforward_layernorm`` before the branches, ``post_attention_layernorm`` and
  ``post_feedforward_layernorm`` after them). The trace finds Gemma-2's sandwich blocks
  itself; Gemma-3's per-head q/k norms undo its scaling of each head's q and k;
- ``llama``: Hugging Face Llama / Mistral / Qwen2 (``layers[i].self_attn.{q,k,v,o}_proj``,
  ``mlp.{gate,up,down}_proj``, RMSNorm ``input_layernorm``/``post_attention_layernorm``) and
  :class:`~netmorph_core.torch.models.LlamaStyle`. The trace gives Llama, Mistral and
  Qwen2 the same layout, but these names also cover models the trace refuses: Qwen3, whose
  per-head q/k norms undo the trace's scaling of each head's q and k, and OLMo, whose norms
  have no gain (the trace finds norms by their gain);
- ``modernbert`` (and ``modernbert-decoder``): block 0's attention norm is an
  ``nn.Identity`` (the embedding norm's output enters its attention directly), which the
  trace reads as a block whose attention input is no norm of its input;
- ``deberta-v2``, ``deberta``: every block also reads the relative-position table
  ``encoder.rel_embeddings`` through further per-head projections (side inputs at the
  stream's width), which the trace sees as linear layers beyond q/k/v → o → feed-forward;
- ``albert``: one layer group runs at every depth (its layers run several times per pass,
  which the trace refuses) and ``encoder.embedding_hidden_mapping_in`` writes the stream.

These are Gemma-2's entry, :data:`LLAMA`, the encoders of :mod:`.encoder_families` and
ALBERT (below).

Decoders whose feed-forwards are mixtures of experts (Mixtral, OLMoE, Qwen2-MoE with dense
blocks mixed in, Qwen3-MoE) are found by :mod:`.moe_layout`: the same trace with the mixture
of experts seen as one feed-forward module (``Family.moe``).

Encoder–decoder models (a cross-attention module, or ``config.is_encoder_decoder``) and
other models whose blocks run at several depths are refused by name.

The residual stream of width d_model is *written* by the embeddings and each block's output
projections, *read* by the query/key/value and feed-forward input projections (through a norm
in pre-LN models) and the output head. ``Conv1D`` (GPT-2) is the linear layer y = x·W + b with
W stored as (in, out) (:mod:`.linear_view`): :func:`weight_axes` gives each layer kind's
(out, in) axes so every routine treats it as the linear layer it is.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from .encoder_families import ENCODER_FAMILIES
from .errors import MorphError
from .kinds import type_label
from .linear_view import as_matrix, is_conv1d
from .moe_layout import moe_ffn, trace_moe
from .norm_kind import norm_kind
from .transformer_latent import latent_geometry
from .transformer_shared import check_groups
from .transformer_stream import NoWriterError, find_stack
from .transformer_trace import (
    POSITION_BIASES,
    Stack,
    geometry,
    head_dim,
    is_linear,
    shared_block,
    trace_stack,
)
from .wrappers import unsupported_kind

__all__ = ["as_matrix", "describe", "is_conv1d", "sync_shapes", "weight_axes"]


def weight_axes(module: nn.Module) -> tuple[int, int | None]:
    """(output axis, input axis) of ``module.weight``: Linear/Conv (0, 1), Conv1D (1, 0),
    Embedding (1, None)."""
    if is_conv1d(module):
        return 1, 0
    if isinstance(module, nn.Embedding):
        return 1, None
    if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return 0, 1
    raise MorphError(f"{type(module).__name__} is not a linear, conv, Conv1D or embedding layer")


def sync_shapes(model: nn.Module) -> None:
    """Set every layer's size attributes from its parameters' shapes after an edit."""
    for module in model.modules():
        w = getattr(module, "weight", None)
        if not isinstance(w, torch.Tensor):
            continue
        if isinstance(module, nn.Linear):
            module.out_features, module.in_features = w.shape
        elif is_conv1d(module):
            module.nx, module.nf = w.shape
        elif isinstance(module, nn.Embedding):
            module.embedding_dim = w.shape[1]
        elif isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            module.out_channels, module.in_channels = w.shape[0], w.shape[1] * module.groups
        elif isinstance(module, (nn.LayerNorm, nn.RMSNorm)) or hasattr(module, "normalized_shape"):
            module.normalized_shape = tuple(w.shape)


@dataclass(frozen=True)
class Family:
    """Submodule names of one architecture family, relative to a block or to the stream's owner.

    ``qkv``: the query, key and value projections, or one fused projection (q|k|v along its
    output). ``heads_attr``/``kv_heads_attr``/``head_dim_attr``: the attention module's
    attributes (None where it has none). ``derived_head_dim``: the config derives head_dim as
    hidden_size / num_heads (no head_dim field). ``writers``: parameters or layers of the owner
    that write the stream; ``readers``: layers of the owner or root that read it.
    ``qkv_layout``: "separate" (three layers), "concat" (one layer, rows [Q; K; V]) or
    "grouped" (one layer, rows per key/value group g: [q heads of g; k_g; v_g], which is
    [q_h; k_h; v_h] per head under multi-head attention). ``gate_up``: one feed-forward input
    layer whose rows are [gate; up]. ``parallel``: attention and feed-forward both read the
    block's input (x + attn(n₁(x)) + mlp(n₂(x))). ``alibi``: a per-head position bias (the
    attention is not invariant under a permutation of its heads). ``scales``: per-channel
    layer-scale gains of a block (relative names of the parameters λ₁, λ₂ in
    x + λ₁⊙attn(n₁(x)), then + λ₂⊙mlp(n₂(x)); absent ones are skipped). ``head_norms``: norms
    of the owner between the stream and the head (BEiT's mean-pooling ``pooler.layernorm``).
    ``head``: the root's output head module where the family names one (looked up before
    :data:`HEADS`); ``pooled_head``: the root's classifier reads the owner's ``pooler`` (a
    stream reader), not the stream; ``head_reads_stream``: the trace saw a layer of the
    :data:`HEADS` module read the stream itself, beside a pooler (LayoutLM's token
    classifier). ``head_rows``: attention layers whose output rows are per
    query head besides q/k/v (DeBERTa's position projections), or per-head bias parameters
    (DeBERTa v1's ``q_bias``/``v_bias``); absent ones are skipped;
    ``side_inputs``: tensors of width d_model built outside the blocks that every block reads
    (DeBERTa's relative-position embeddings); ``fixed_width``: modules of the owner or root
    that keep the stream's width (grow_width and add_block refuse naming them);
    ``head_dim_field``: the config field that records head_dim.
    ``shared``: the blocks run at several depths (ALBERT's layer group): the config's layer
    count is the depth, not the number of blocks.
    ``moe``: the feed-forward is the module ``ffn_out`` names, a mixture of experts in some
    blocks and a dense MLP in the others (:mod:`.moe_layout`); ``ffn_in`` is then empty.
    ``branch_norms``: the norms N₁, N₂ of the attention and feed-forward outputs before the
    residual sum, x + N₁(attn(·)), then + N₂(mlp(·)) (OLMo-2, where they are also ``norms``:
    its branches read the stream itself; Gemma-2's sandwich adds them to pre-norms).
    ``qk_norms``: the norms that read the query and the key projection's whole output (""
    for none), where the trace found them. ``stream_convs``: convolutions of the owner that
    read the stream before block 0 and add to it (speech encoders' position convolution,
    :mod:`.speech_stream`). ``pooled_norms``: norms outside the owner (qualified from the
    model's root) that read tokens pooled from the stream after the final norm (AST's
    classifier LayerNorm). ``linear_entry``: the stream entering the blocks is linear in its
    writers' parameters (not Whisper's gelu(conv2(x)) + positions). ``latent``: under
    multi-head latent attention (``qkv_layout``
    "latent", :mod:`.transformer_latent`; ``qkv`` then names the two layers reading the
    stream), the query layer and the key/value up-projection, whose rows are per head.
    """

    name: str
    blocks: str
    attention: str
    qkv: tuple[str, ...]
    o: str
    ffn_in: tuple[str, ...]
    ffn_out: str
    norms: tuple[str, ...]
    writers: tuple[str, ...]
    final_norm: str | None
    stream_norms: tuple[str, ...] = ()
    readers: tuple[str, ...] = ()
    post_ln: bool = False
    derived_head_dim: bool = False
    qkv_layout: str = "separate"
    gate_up: bool = False
    parallel: bool = False
    alibi: bool = False
    scales: tuple[str, ...] = ()
    head_norms: tuple[str, ...] = ()
    head: str | None = None
    pooled_head: bool = False
    head_rows: tuple[str, ...] = ()
    side_inputs: tuple[str, ...] = ()
    fixed_width: tuple[str, ...] = ()
    head_dim_field: str = "head_dim"
    shared: bool = False
    moe: bool = False
    branch_norms: tuple[str, ...] = ()
    qk_norms: tuple[str, ...] = ()
    stream_convs: tuple[str, ...] = ()
    pooled_norms: tuple[str, ...] = ()
    latent: tuple[str, ...] = ()
    head_reads_stream: bool = False
    linear_entry: bool = True


#: Llama's names: Gemma-2/3 carry them with sandwich norms, and the mixture-of-experts
#: stacks that carry them (Mixtral, OLMoE, Qwen-MoE) are found by them (:func:`_named_moe`).
LLAMA = Family(
    "llama",
    blocks="layers",
    attention="self_attn",
    qkv=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    o="self_attn.o_proj",
    ffn_in=("mlp.gate_proj", "mlp.up_proj"),
    ffn_out="mlp.down_proj",
    norms=("input_layernorm", "post_attention_layernorm"),
    writers=("embed_tokens",),
    final_norm="norm",
)

FAMILIES: tuple[Family, ...] = (
    Family(  # Gemma-2/3: sandwich norms, before and after each branch
        "gemma2",
        blocks="layers",
        attention="self_attn",
        qkv=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
        o="self_attn.o_proj",
        ffn_in=("mlp.gate_proj", "mlp.up_proj"),
        ffn_out="mlp.down_proj",
        norms=("input_layernorm", "pre_feedforward_layernorm"),
        writers=("embed_tokens",),
        final_norm="norm",
        branch_norms=("post_attention_layernorm", "post_feedforward_layernorm"),
    ),
    LLAMA,
    *(Family(**entry) for entry in ENCODER_FAMILIES),  # ModernBERT, DeBERTa, MPNet
    Family(  # one layer group run at every depth (num_hidden_groups = 1)
        "albert",
        blocks="encoder.albert_layer_groups.0.albert_layers",
        attention="attention",
        qkv=("attention.query", "attention.key", "attention.value"),
        o="attention.dense",
        ffn_in=("ffn",),
        ffn_out="ffn_output",
        norms=("attention.LayerNorm", "full_layer_layer_norm"),
        writers=("encoder.embedding_hidden_mapping_in",),
        final_norm=None,
        readers=("pooler",),
        post_ln=True,
        derived_head_dim=True,
        shared=True,
    ),
)

#: Root-level output heads that read the final norm's output (or the stream): ``cls``: BERT's
#: pre-training and masked-LM heads (``cls.predictions.transform.dense`` reads the stream);
#: ALBERT's, ELECTRA's and DistilBERT's heads and Whisper's audio classifier read it through
#: their first layer, which comes before the classifier it feeds; ``qa_outputs``:
#: question-answering span heads (start and end logits per token).
HEADS = (
    "lm_head",
    "pre_classifier",  # DistilBERT: reads the stream, its classifier reads pre_classifier
    "projector",  # Whisper's audio classifier
    "classifier",
    "score",
    "cls",
    "predictions",
    "generator_predictions",
    "discriminator_predictions",
    "vocab_transform",
    "qa_outputs",
    "output_projection",  # BioGPT's language-model head
    "visual_projection",  # CLIP's towers with a projection: read the pooled, normed token
    "text_projection",
)
#: Heads that read one tower of a two-tower model: taken only for the stream of that tower.
TOWER_HEADS = {"visual_projection": "vision_model", "text_projection": "text_model"}


@dataclass(frozen=True)
class Block:
    """One transformer block: its qualified ``prefix`` and attention geometry."""

    prefix: str
    heads: int
    kv_heads: int
    head_dim: int

    def name(self, rel: str) -> str:
        """The qualified name of ``rel`` inside this block."""
        return f"{self.prefix}.{rel}"


@dataclass(frozen=True)
class Layout:
    """A recognised transformer: ``family``, the stream owner's ``owner`` prefix ("" for the
    root), its ``blocks``, ``norm_kind`` ("layer" or "rms"), the output ``head`` (None when the
    model returns the stream itself), whether the head is tied to the token embedding, and the
    model ``config`` (None for a plain module)."""

    family: Family
    owner: str
    blocks: tuple[Block, ...]
    d_model: int
    norm_kind: str
    head: str | None
    tied: bool
    config: object | None

    def name(self, rel: str) -> str:
        """The qualified name of ``rel`` inside the stream's owner."""
        return f"{self.owner}.{rel}" if self.owner else rel

    @property
    def blocks_path(self) -> str:
        return self.name(self.family.blocks)


def _get(model: nn.Module, name: str) -> nn.Module | None:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def _heads(family: Family, block: nn.Module, where: str) -> Block:
    attention = block.get_submodule(family.attention) if family.attention else block
    if family.latent:  # every head reads the one latent: heads = key/value heads
        geo = latent_geometry(attention, block, family.latent, family.o, where)
        return Block("", geo.heads, geo.heads, geo.value)
    if len(family.qkv) == 1:
        heads, kv, hd = geometry(attention, [block.get_submodule(family.qkv[0])], where)
        return Block("", heads, kv, hd)
    q_rows = as_matrix(block.get_submodule(family.qkv[0])).shape[0]
    size = next(
        (
            int(getattr(attention, a))
            for a in ("head_dim", "attention_head_size")
            if isinstance(getattr(attention, a, None), int)
        ),
        None,
    )
    size = size or head_dim(attention)  # else the first submodule that records it
    if size is None:
        at = f"{where}.{family.attention}" if family.attention else where
        raise MorphError(
            f"{at!r} ({type(attention).__name__}) records no head_dim (no head_dim or "
            "attention_head_size attribute on it or its submodules): its heads cannot be "
            "found; refused"
        )
    kv_rows = as_matrix(block.get_submodule(family.qkv[1])).shape[0]
    return Block("", q_rows // size, kv_rows // size, size)


def describe(model: nn.Module) -> Layout:
    """The :class:`Layout` of ``model``; MorphError when no known family matches."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    _refuse_encoder_decoder(model)
    moe = _moe_stack(model)
    named = _named_moe(model, *moe) if moe else None
    if named is not None:
        return named
    named = None if moe else _named_layout(model)
    return named if named is not None else _structural_layout(model, moe)


def describe_by_structure(model: nn.Module) -> Layout:
    """The :class:`Layout` of ``model`` found from its modules and a traced forward pass
    alone, without the name table :data:`FAMILIES` (MorphError where the trace does not
    understand it)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    _refuse_encoder_decoder(model)
    return _structural_layout(model, _moe_stack(model))


def _named_layout(model: nn.Module) -> Layout | None:
    """The layout of the first family of :data:`FAMILIES` whose names ``model`` holds."""
    for owner_name, owner in model.named_modules():
        for family in FAMILIES:
            blocks = _get(owner, family.blocks)
            if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0:
                continue
            first = blocks[0]
            if not all(_get(first, n) is not None for n in (*family.qkv, family.o, family.ffn_out)):
                continue
            parts = (*family.ffn_in[-1:], *family.norms, *family.branch_norms)
            if not all(_get(first, n) is not None for n in parts):
                continue  # e.g. OLMo-2: Llama's names but no pre-attention norm
            if _get(owner, family.writers[0]) is None:
                continue  # e.g. CLIP's text encoder: the image encoder's block names
            ffn_in = tuple(n for n in family.ffn_in if _get(first, n) is not None)
            family = _with_ffn_in(family, ffn_in)
            prefix = f"{owner_name}.{family.blocks}" if owner_name else family.blocks
            if family.shared:
                check_groups(model, prefix)
            _check_blocks(family, prefix, blocks)
            d_model = as_matrix(first.get_submodule(family.o)).shape[0]
            geo = [_heads(family, b, f"{prefix}.{i}") for i, b in enumerate(blocks)]
            block_list = tuple(
                Block(f"{prefix}.{i}", g.heads, g.kv_heads, g.head_dim) for i, g in enumerate(geo)
            )
            return _layout(model, family, owner_name, block_list, d_model)
    return None


def _structural_layout(model: nn.Module, moe: tuple[str, str, int, str] | None) -> Layout:
    """The layout of the traced block stack (:func:`.transformer_trace.trace_stack`)."""
    found: tuple | None = moe
    if found is None:
        stack = find_stack(model)
        found = None if stack is None else (*stack, None)
    if found is None:
        shared = shared_block(model)
        if shared is not None:
            name, runs = shared
            raise MorphError(
                f"{type(model).__name__} shares its blocks across depths: {name!r} runs {runs} "
                "times in one forward pass (one module used at several depths, as in ALBERT); "
                "the transformer operations do not support shared layers yet; refused"
            )
        # every nn.Linear in one module (its classifier): a CNN
        linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        convolutional = len({n.rpartition(".")[0] for n in linears}) <= 1
        hint = (
            " (a convolutional network: grow it with deepen, widen, grow_kernel or morph_subnet)"
            if convolutional
            else ""
        )
        raise MorphError(
            f"{type(model).__name__} is not a recognised transformer: no list of blocks (a "
            f"ModuleList of one block class holding linear layers){hint}; refused"
        )
    owner_name, rel, d = found[:3]
    while True:
        try:
            family = _traced_family(model, owner_name, rel, d, *found[3:])
            break
        except NoWriterError as exc:  # the writers sit above a module holding a side table
            if not owner_name:
                what = f"{type(model).__name__} is not a recognised transformer: {exc}"
                raise MorphError(what) from exc
            owner_name, _, up = owner_name.rpartition(".")
            rel = f"{up}.{rel}"
        except MorphError as exc:
            raise MorphError(
                f"{type(model).__name__} is not a recognised transformer: {exc}"
            ) from exc
    prefix = f"{owner_name}.{rel}" if owner_name else rel
    blocks = model.get_submodule(prefix)
    d = d or as_matrix(blocks[0].get_submodule(family.o)).shape[0]
    _check_blocks(family, prefix, blocks)
    geo = [_heads(family, b, f"{prefix}.{i}") for i, b in enumerate(blocks)]
    block_list = tuple(
        Block(f"{prefix}.{i}", g.heads, g.kv_heads, g.head_dim) for i, g in enumerate(geo)
    )
    return _layout(model, family, owner_name, block_list, d)


#: Last name components of cross-attention modules (BART/Marian/Whisper, T5, BERT decoders).
CROSS_ATTENTION = (
    "encoder_attn",
    "encdecattention",
    "crossattention",
    "cross_attn",
    "cross_attention",
)


def _refuse_encoder_decoder(model: nn.Module) -> None:
    """MorphError naming the model class and its cross-attention (or decoder) module when
    ``model`` is an encoder–decoder."""
    found = next(
        (n for n, _ in model.named_modules() if n.rpartition(".")[2].lower() in CROSS_ATTENTION),
        None,
    )
    config = getattr(model, "config", None)
    if found is None and getattr(config, "is_encoder_decoder", False) is True:
        # T5EncoderModel keeps its config's flag without a decoder
        found = next(
            (n for n, _ in model.named_modules() if n.rpartition(".")[2] == "decoder"), None
        )
    if found is not None:
        raise MorphError(
            f"{type(model).__name__} is an encoder–decoder model ({found!r} attends to the "
            "encoder's output: cross-attention) laid out neither as T5's nor as BART's, the "
            "encoder–decoders the transformer operations follow; refused"
        )


def _layout(
    model: nn.Module, family: Family, owner: str, blocks: tuple[Block, ...], d_model: int
) -> Layout:
    first = model.get_submodule(blocks[0].prefix)
    # ModernBERT's block 0 has an Identity for its attention norm
    norms = [first.get_submodule(n) for n in family.norms]
    norm = next((m for m in norms if type(m) is not nn.Identity), norms[0])
    heads = (family.head, *HEADS) if family.head else HEADS
    tower = owner.rpartition(".")[2]
    head_name = next(
        (h for h in heads if _get(model, h) is not None and TOWER_HEADS.get(h, tower) == tower),
        None,
    )
    embed_name = f"{owner}.{family.writers[0]}" if owner else family.writers[0]
    embed = _get(model, embed_name)
    head = _get(model, head_name) if head_name else None
    tied = bool(
        head is not None
        and isinstance(embed, nn.Embedding)
        and getattr(head, "weight", None) is embed.weight
    )
    return Layout(
        family=family,
        owner=owner,
        blocks=blocks,
        d_model=d_model,
        norm_kind=norm_kind(norm),
        head=head_name,
        tied=tied,
        config=getattr(model, "config", None),
    )


def _moe_stack(model: nn.Module) -> tuple[str, str, int, str] | None:
    """(owner, list name, d_model, feed-forward name) of a block stack whose feed-forwards
    are mixtures of experts (:func:`.moe_layout.moe_ffn`), None for any other model."""
    found = _block_stack(model)
    if found is None:
        return None
    ffn = moe_ffn(model, *found)
    return None if ffn is None else (*found, ffn)


def _named_moe(model: nn.Module, owner: str, rel: str, d: int, ffn: str) -> Layout | None:
    """The layout of a mixture-of-experts stack whose attention and norms carry the names of
    a family of :data:`FAMILIES` (Mixtral, OLMoE and Qwen-MoE: Llama's; their q/k norms are
    outside the structural trace's attention check); None when none matches."""
    prefix = f"{owner}.{rel}" if owner else rel
    blocks = model.get_submodule(prefix)
    for family in FAMILIES:
        if family.blocks != rel or any(
            _get(blocks[0], n) is None for n in (*family.qkv, family.o, *family.norms)
        ):
            continue
        family = dataclasses.replace(
            family, name=f"{family.name}-moe", ffn_in=(), ffn_out=ffn, gate_up=False, moe=True
        )
        _check_blocks(family, prefix, blocks)
        geo = [_heads(family, b, f"{prefix}.{i}") for i, b in enumerate(blocks)]
        block_list = tuple(
            Block(f"{prefix}.{i}", g.heads, g.kv_heads, g.head_dim) for i, g in enumerate(geo)
        )
        return _layout(model, family, owner, block_list, d)
    return None


def _block_stack(model: nn.Module) -> tuple[str, str, int] | None:
    """(owner, list name, d_model) of the first ModuleList of blocks of one class holding
    linear layers in a module that also holds an embedding (the stream's width d)."""
    for owner_name, owner in model.named_modules():
        embed = next((m for m in owner.children() if isinstance(m, nn.Embedding)), None)
        if embed is None:
            continue
        for rel, blocks in owner.named_children():
            if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0:
                continue
            if len({type(b) for b in blocks}) != 1:
                continue
            if sum(is_linear(m) for m in blocks[0].modules()) >= 2:
                return owner_name, rel, embed.embedding_dim
    return None


#: Families found by tracing, by the structure that decides them (see :func:`_trace_key`).
_TRACED: dict[tuple, Family] = {}


def _trace_key(model: nn.Module, owner: str, rel: str) -> tuple:
    """What a traced family depends on: the model's and block's classes, the block's module
    names and classes, its parameter names, the flags (bools and strings) its modules and the
    model's config hold (Falcon's ``parallel_attn`` is read from the config), and the names,
    classes and flags of the modules outside the blocks."""
    root = model.get_submodule(owner) if owner else model
    block = root.get_submodule(rel)[0]
    modules = tuple((n, type(m)) for n, m in block.named_modules())
    modules += tuple((n, None) for n, _ in block.named_parameters())
    flags = tuple(
        (n, k, v)
        for n, m in block.named_modules()
        for k, v in sorted(vars(m).items())
        if _flag(k, v)
    )
    config = getattr(model, "config", None)
    values = getattr(config, "to_dict", lambda: {})() if config is not None else {}
    switches = tuple(sorted((k, v) for k, v in values.items() if isinstance(v, (bool, str))))
    blocks = f"{owner}.{rel}" if owner else rel
    around = tuple(  # the writers, norms and heads outside the blocks (timm's pooling)
        (n, type(m), *((k, v) for k, v in sorted(vars(m).items()) if _flag(k, v)))
        for n, m in model.named_modules()
        if not (n == blocks or n.startswith(blocks + "."))
    )
    return type(model), owner, rel, modules, flags, switches, around


def _flag(key: str, value: object) -> bool:
    """A module attribute that can change its forward: a public bool or string."""
    return not key.startswith("_") and key != "training" and isinstance(value, (bool, str))


def _traced_family(
    model: nn.Module, owner: str, rel: str, d: int | None, moe: str | None = None
) -> Family:
    """The :class:`Family` of a block list found by :func:`trace_stack` (cached); ``d``: the
    stream's width (None: block 0's output width); ``moe``: the name of the feed-forward
    module of a mixture-of-experts stack (:func:`trace_moe`)."""
    key = (*_trace_key(model, owner, rel), moe)
    family = _TRACED.get(key)
    if family is None:
        if moe:
            assert d is not None
            stack = trace_moe(model, owner, rel, d, moe)
            family = dataclasses.replace(_as_family(model, owner, rel, stack), moe=True)
        else:
            family = _as_family(model, owner, rel, trace_stack(model, owner, rel, d))
        _TRACED[key] = family
    return family


def _settable(config: object, attr: str) -> bool:
    """Whether the config holds ``attr`` as a field (not absent, not a derived property)."""
    return hasattr(config, attr) and not isinstance(getattr(type(config), attr, None), property)


def _honours_head_dim(model: nn.Module, prefix: str, attention: str) -> bool:
    """Whether the model's class builds its attention with a ``head_dim`` its config does not
    declare but reads when present (Phi-3, Starcoder2, Phi): a copy of the config given twice
    block 0's head_dim, built on the meta device."""
    block = model.get_submodule(prefix)[0]
    hd = head_dim(block.get_submodule(attention) if attention else block)
    config = copy.deepcopy(model.config)
    try:
        config.head_dim = 2 * hd
        with torch.device("meta"):
            stock = type(model)(config)
        built = stock.get_submodule(f"{prefix}.0.{attention}" if attention else f"{prefix}.0")
    except Exception:  # the class or its config refuses the value: it derives head_dim
        return False
    return head_dim(built) == 2 * hd


def _as_family(model: nn.Module, owner: str, rel: str, stack: Stack) -> Family:
    config = getattr(model, "config", None)
    name = str(getattr(config, "model_type", "") or type(model).__name__)
    prefix = f"{owner}.{rel}" if owner else rel
    settable = config is not None and (
        _settable(config, "head_dim") or _honours_head_dim(model, prefix, stack.attention)
    )
    head, readers = _head(model, owner, stack.readers)
    # the output head reads the stream itself, beside a pooler (LayoutLM's token classifier)
    named = next((h for h in HEADS if _get(model, h) is not None), None)
    head_reads = named is not None and any(
        r == named or r.startswith(named + ".") for r in stack.readers
    )
    return Family(
        name,
        blocks=rel,
        attention=stack.attention,
        qkv=stack.qkv,
        o=stack.o,
        ffn_in=stack.ffn_in,
        ffn_out=stack.ffn_out,
        norms=stack.norms,
        writers=stack.writers,
        final_norm=stack.final_norm,
        stream_norms=stack.stream_norms,
        readers=readers,
        post_ln=stack.post_ln,
        derived_head_dim=config is not None and not settable,
        qkv_layout=stack.qkv_layout,
        gate_up=stack.gate_up,
        parallel=stack.parallel,
        alibi=stack.alibi and not _position_bias(model),
        scales=stack.scales,
        head_norms=stack.head_norms,
        head=head,
        pooled_head=stack.post_ln and bool(readers) and not head_reads,
        branch_norms=stack.branch_norms,
        qk_norms=stack.qk_norms,
        stream_convs=stack.stream_convs,
        pooled_norms=stack.pooled_norms,
        latent=stack.latent,
        head_reads_stream=head_reads,
        linear_entry=stack.linear_entry,
    )


def _position_bias(model: nn.Module) -> bool:
    """Whether the model holds a per-head relative position bias of
    :data:`.transformer_trace.POSITION_BIASES` (the bias the trace saw per head)."""
    return any(b in name for name, _ in model.named_parameters() for b in POSITION_BIASES)


def _head(model: nn.Module, owner: str, readers: tuple[str, ...]) -> tuple[str | None, tuple]:
    """The output head the family names (None where one of :data:`HEADS` is the model's) and
    the stream readers that are not part of it: where the owner is the root and no module of
    :data:`HEADS` exists, the root's child holding the last layer that reads the stream after
    the blocks (timm's ``head``)."""
    found = next((h for h in HEADS if _get(model, h) is not None), None)
    head = None
    if found is None and not owner and readers:
        head = found = readers[-1].split(".")[0]
    if found is None:
        return None, readers
    inside = tuple(r for r in readers if not (r == found or r.startswith(found + ".")))
    return head, inside


def _check_blocks(family: Family, prefix: str, blocks: nn.ModuleList) -> None:
    """Every block has block 0's classes (block, attention, feed-forward) and the family's
    projections as Linear or Conv1D layers; MorphError naming the first that does not (a
    mixture-of-experts or custom attention block in an otherwise known stack)."""
    first = blocks[0]
    containers = {family.attention, *(r.rpartition(".")[0] for r in (family.ffn_out, family.o))}
    containers.discard("")
    for i, block in enumerate(blocks):
        where = f"{prefix}.{i}"
        for rel in ("", *sorted(c for c in containers if c)):
            mine, theirs = _get(block, rel) if rel else block, _get(first, rel) if rel else first
            if type(mine) is not type(theirs):
                name = f"{where}.{rel}" if rel else where
                raise MorphError(
                    f"{name!r} is {type_label(mine)}, block 0's is {type_label(theirs)}: every "
                    f"block of a {family.name} stack must share one layout (a mixture-of-experts "
                    "or custom block is not understood); refused"
                )
        ffn = () if family.moe else (*family.ffn_in, family.ffn_out)  # moe: moe_layout checks
        for rel in (*family.qkv, family.o, *ffn):
            layer = _get(block, rel)
            if layer is None:
                raise MorphError(f"{where!r} has no {rel}; refused")
            if not is_linear(layer):
                kind = unsupported_kind(layer) or f"{type_label(layer)}, not a Linear layer"
                raise MorphError(f"'{where}.{rel}' is {kind}; refused")


def _with_ffn_in(family: Family, ffn_in: tuple[str, ...]) -> Family:
    if ffn_in == family.ffn_in:
        return family
    fields = {k: getattr(family, k) for k in family.__dataclass_fields__}
    return Family(**(fields | {"ffn_in": ffn_in}))
