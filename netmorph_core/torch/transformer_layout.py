"""Where the parts of a transformer live: the layout the transformer morphs work on.

A model is recognised structurally, by the names of its submodules, as one of the families in
:data:`FAMILIES`:

- ``llama``: Hugging Face Llama / Mistral / Qwen2 (``layers[i].self_attn.{q,k,v,o}_proj``,
  ``mlp.{gate,up,down}_proj``, RMSNorm) and :class:`~netmorph_core.torch.models.LlamaStyle`;
- ``gpt2``: GPT-2 (``h[i].attn.c_attn`` fused q|k|v and ``c_proj`` as ``Conv1D``, ``mlp.c_fc``,
  LayerNorm ``ln_1``/``ln_2``/``ln_f``, embeddings ``wte`` + ``wpe``);
- ``bert``: BERT (post-LayerNorm: ``encoder.layer[i].attention.self.{query,key,value}``,
  ``attention.output``, ``intermediate``, ``output``; embeddings word + position + token type);
- ``vit``: Hugging Face ViT and DeiT (pre-LayerNorm; patch convolution, class token, DeiT's
  distillation token and position embedding write the stream).

The residual stream of width d_model is *written* by the embeddings and each block's output
projections, *read* by the query/key/value and feed-forward input projections (through a norm
in pre-LN models) and the output head. ``Conv1D`` (GPT-2) is the linear layer y = x·W + b with
W stored as (in, out): :func:`weight_axes` gives each layer kind's (out, in) axes so every
routine treats it as the linear layer it is.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .errors import MorphError
from .kinds import type_label
from .wrappers import unsupported_kind


def is_conv1d(module: nn.Module) -> bool:
    """Whether ``module`` is transformers' ``Conv1D`` (y = x·W + b, W of shape (in, out))."""
    return type(module).__name__ == "Conv1D" and type(module).__module__.startswith("transformers")


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


def as_matrix(module: nn.Module) -> torch.Tensor:
    """The (out, in) matrix of a Linear or Conv1D layer (a view, not a copy); a conv's weight
    as it is."""
    w = module.weight
    return w.t() if is_conv1d(module) else w


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
            module.out_channels, module.in_channels = w.shape[:2]
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


FAMILIES: tuple[Family, ...] = (
    Family(
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
    ),
    Family(
        "gpt2",
        blocks="h",
        attention="attn",
        qkv=("attn.c_attn",),
        o="attn.c_proj",
        ffn_in=("mlp.c_fc",),
        ffn_out="mlp.c_proj",
        norms=("ln_1", "ln_2"),
        writers=("wte", "wpe"),
        final_norm="ln_f",
        derived_head_dim=True,
    ),
    Family(
        "bert",
        blocks="encoder.layer",
        attention="attention.self",
        qkv=("attention.self.query", "attention.self.key", "attention.self.value"),
        o="attention.output.dense",
        ffn_in=("intermediate.dense",),
        ffn_out="output.dense",
        norms=("attention.output.LayerNorm", "output.LayerNorm"),
        writers=(
            "embeddings.word_embeddings",
            "embeddings.position_embeddings",
            "embeddings.token_type_embeddings",
        ),
        final_norm=None,
        stream_norms=("embeddings.LayerNorm",),
        readers=("pooler.dense",),
        post_ln=True,
        derived_head_dim=True,
    ),
    Family(
        "vit",
        blocks="layers",
        attention="attention",
        qkv=("attention.q_proj", "attention.k_proj", "attention.v_proj"),
        o="attention.o_proj",
        ffn_in=("mlp.fc1",),
        ffn_out="mlp.fc2",
        norms=("layernorm_before", "layernorm_after"),
        writers=(
            "embeddings.patch_embeddings.projection",
            "embeddings.cls_token",
            "embeddings.distillation_token",  # DeiT
            "embeddings.position_embeddings",
            "embeddings.mask_token",
        ),
        final_norm="layernorm",
        readers=("pooler.dense",),
        derived_head_dim=True,
    ),
)

#: Root-level output heads that read the final norm's output (or the stream); ``cls``: BERT's
#: pre-training and masked-LM heads (``cls.predictions.transform.dense`` reads the stream).
HEADS = ("lm_head", "classifier", "score", "cls")


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


def _norm_kind(norm: nn.Module) -> str:
    return "layer" if isinstance(norm, nn.LayerNorm) or hasattr(norm, "bias") else "rms"


def _heads(family: Family, block: nn.Module) -> Block:
    attention = block.get_submodule(family.attention)
    q_rows = (
        as_matrix(block.get_submodule(family.qkv[0])).shape[0] // 3
        if len(family.qkv) == 1
        else as_matrix(block.get_submodule(family.qkv[0])).shape[0]
    )
    head_dim = next(
        (
            int(getattr(attention, a))
            for a in ("head_dim", "attention_head_size")
            if isinstance(getattr(attention, a, None), int)
        ),
        None,
    )
    if head_dim is None:
        raise MorphError(f"{type(attention).__name__} has no head_dim attribute")
    if len(family.qkv) == 1:
        kv_rows = q_rows
    else:
        kv_rows = as_matrix(block.get_submodule(family.qkv[1])).shape[0]
    return Block("", q_rows // head_dim, kv_rows // head_dim, head_dim)


def describe(model: nn.Module) -> Layout:
    """The :class:`Layout` of ``model``; MorphError when no known family matches."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    config = getattr(model, "config", None)
    for owner_name, owner in model.named_modules():
        for family in FAMILIES:
            blocks = _get(owner, family.blocks)
            if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0:
                continue
            first = blocks[0]
            if not all(_get(first, n) is not None for n in (*family.qkv, family.o, family.ffn_out)):
                continue
            if not all(_get(first, n) is not None for n in (*family.ffn_in[-1:], *family.norms)):
                continue  # e.g. OLMo-2: Llama's names but no pre-attention norm
            ffn_in = tuple(n for n in family.ffn_in if _get(first, n) is not None)
            family = _with_ffn_in(family, ffn_in)
            prefix = f"{owner_name}.{family.blocks}" if owner_name else family.blocks
            _check_blocks(family, prefix, blocks)
            d_model = as_matrix(first.get_submodule(family.o)).shape[0]
            geo = [_heads(family, b) for b in blocks]
            block_list = tuple(
                Block(f"{prefix}.{i}", g.heads, g.kv_heads, g.head_dim) for i, g in enumerate(geo)
            )
            norm = first.get_submodule(family.norms[0])
            head_name = next((h for h in HEADS if _get(model, h) is not None), None)
            embed_name = f"{owner_name}.{family.writers[0]}" if owner_name else family.writers[0]
            embed = _get(model, embed_name)
            head = _get(model, head_name) if head_name else None
            tied = bool(
                head is not None
                and isinstance(embed, nn.Embedding)
                and getattr(head, "weight", None) is embed.weight
            )
            return Layout(
                family=family,
                owner=owner_name,
                blocks=block_list,
                d_model=d_model,
                norm_kind=_norm_kind(norm),
                head=head_name,
                tied=tied,
                config=config,
            )
    raise MorphError(
        f"{type(model).__name__} is not a recognised transformer: expected the layout of "
        "Llama/Mistral/Qwen2, GPT-2, BERT or ViT (see netmorph_core.torch.transformer_layout)"
    )


def _check_blocks(family: Family, prefix: str, blocks: nn.ModuleList) -> None:
    """Every block has block 0's classes (block, attention, feed-forward) and the family's
    projections as Linear or Conv1D layers; MorphError naming the first that does not (a
    mixture-of-experts or custom attention block in an otherwise known stack)."""
    first = blocks[0]
    containers = {family.attention, *(r.rpartition(".")[0] for r in (family.ffn_out, family.o))}
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
        for rel in (*family.qkv, family.o, *family.ffn_in, family.ffn_out):
            layer = _get(block, rel)
            if layer is None:
                raise MorphError(f"{where!r} has no {rel}; refused")
            if not (isinstance(layer, nn.Linear) or is_conv1d(layer)):
                kind = unsupported_kind(layer) or f"{type_label(layer)}, not a Linear layer"
                raise MorphError(f"'{where}.{rel}' is {kind}; refused")


def _with_ffn_in(family: Family, ffn_in: tuple[str, ...]) -> Family:
    if ffn_in == family.ffn_in:
        return family
    fields = {k: getattr(family, k) for k in family.__dataclass_fields__}
    return Family(**(fields | {"ffn_in": ffn_in}))
