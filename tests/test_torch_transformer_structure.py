"""Layouts found by structure equal the name tables they replace.

For the tiny config of every family that a name table once described (Llama, GPT-2, BERT,
RoBERTa, ELECTRA, DistilBERT, ViT, DeiT, BEiT, DINOv2, CLIP and SigLIP vision, Whisper's
encoder), :func:`describe_by_structure` (modules and a traced forward pass only) gives the
layout the table gave: the same projections, norms, writers, readers, layer scales and flags,
compared as sets where order does not matter and restricted to the names the model holds (a
table entry named parts some members of its family lack: DeiT's distillation token, BEiT's
layer scales). :data:`EXPECTED` holds those tables' values. The families still named
(ModernBERT, DeBERTa, ALBERT) are refused by the structural path with the part it does
not understand, and found by :func:`describe`; Llama's names stay for the models that carry
them and that the structural path refuses (Qwen3's q/k norms, OLMo's gain-free norms);
Gemma-2's sandwich blocks are found by structure as its named entry describes them.
"""

from __future__ import annotations

import pytest
import torch
from thirdparty import import_transformers
from torch import nn

from netmorph_core.torch import MorphError, grow_width
from netmorph_core.torch.transformer_layout import Layout, describe, describe_by_structure

try:
    transformers = import_transformers()
except ImportError:  # pragma: no cover - the test extra installs it
    pytest.skip("transformers is not installed", allow_module_level=True)

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
TEXT = dict(TINY, vocab_size=100, num_labels=3)
VISION = dict(TINY, image_size=8, patch_size=4, num_labels=3)
WHISPER = dict(
    d_model=32,
    encoder_layers=2,
    encoder_attention_heads=4,
    encoder_ffn_dim=64,
    num_mel_bins=8,
    max_source_positions=8,
    num_labels=3,
)
VIT_WRITERS = (
    "embeddings.patch_embeddings.projection",
    "embeddings.cls_token",
    "embeddings.distillation_token",
    "embeddings.position_embeddings",
    "embeddings.mask_token",
    "embeddings.register_tokens",
)
BERT_WRITERS = (
    "embeddings.word_embeddings",
    "embeddings.position_embeddings",
    "embeddings.token_type_embeddings",
)
BERT_BLOCK = dict(
    blocks="encoder.layer",
    qkv=("attention.self.query", "attention.self.key", "attention.self.value"),
    o="attention.output.dense",
    ffn_in=("intermediate.dense",),
    ffn_out="output.dense",
    norms=("attention.output.LayerNorm", "output.LayerNorm"),
    writers=BERT_WRITERS,
    stream_norms=("embeddings.LayerNorm",),
    readers=("pooler.dense",),
    post_ln=True,
)
VIT_BLOCK = dict(
    blocks="layers",
    qkv=("attention.q_proj", "attention.k_proj", "attention.v_proj"),
    o="attention.o_proj",
    ffn_in=("mlp.fc1",),
    ffn_out="mlp.fc2",
    norms=("layernorm_before", "layernorm_after"),
    writers=VIT_WRITERS,
    finals=("layernorm", "pooler.layernorm"),
    readers=("pooler.dense",),
    scales=("lambda_1", "lambda_2"),
)
DINOV2_BLOCK = dict(
    blocks="encoder.layer",
    qkv=("attention.q_proj", "attention.k_proj", "attention.v_proj"),
    o="attention.o_proj",
    ffn_in=("mlp.fc1",),
    ffn_out="mlp.fc2",
    norms=("norm1", "norm2"),
    writers=VIT_WRITERS,
    finals=("layernorm",),
    scales=("layer_scale1.lambda1", "layer_scale2.lambda1"),
)
CLIP_BLOCK = dict(
    blocks="encoder.layers",
    qkv=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    o="self_attn.out_proj",
    ffn_in=("mlp.fc1",),
    ffn_out="mlp.fc2",
    norms=("layer_norm1", "layer_norm2"),
    writers=(
        "embeddings.patch_embedding",
        "embeddings.class_embedding",
        "embeddings.position_embedding",
    ),
    finals=("post_layernorm",),
    stream_norms=("pre_layrnorm",),
)

#: model → (class, config class, config, owner, what the name table said about it).
EXPECTED: dict[str, tuple[str, str, dict, str, dict]] = {
    "Llama": (
        "LlamaForCausalLM",
        "LlamaConfig",
        dict(TEXT, num_key_value_heads=2),
        "model",
        dict(
            blocks="layers",
            qkv=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
            o="self_attn.o_proj",
            ffn_in=("mlp.gate_proj", "mlp.up_proj"),
            ffn_out="mlp.down_proj",
            norms=("input_layernorm", "post_attention_layernorm"),
            writers=("embed_tokens",),
            finals=("norm",),
            heads=(4, 2, 8),
            norm_kind="rms",
        ),
    ),
    "GPT-2": (
        "GPT2LMHeadModel",
        "GPT2Config",
        dict(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=32),
        "transformer",
        dict(
            blocks="h",
            qkv=("attn.c_attn",),
            qkv_layout="concat",
            o="attn.c_proj",
            ffn_in=("mlp.c_fc",),
            ffn_out="mlp.c_proj",
            norms=("ln_1", "ln_2"),
            writers=("wte", "wpe"),
            finals=("ln_f",),
        ),
    ),
    "BERT classifier": (
        "BertForSequenceClassification",
        "BertConfig",
        TEXT,
        "bert",
        BERT_BLOCK,
    ),
    "BERT masked LM": ("BertForMaskedLM", "BertConfig", TEXT, "bert", BERT_BLOCK),
    "RoBERTa": (
        "RobertaForSequenceClassification",
        "RobertaConfig",
        TEXT,
        "roberta",
        BERT_BLOCK,
    ),
    "ELECTRA (embedding_size 16)": (
        "ElectraForSequenceClassification",
        "ElectraConfig",
        dict(TEXT, embedding_size=16),
        "electra",
        BERT_BLOCK,
    ),
    "DistilBERT": (
        "DistilBertForSequenceClassification",
        "DistilBertConfig",
        dict(vocab_size=100, dim=32, n_layers=2, n_heads=4, hidden_dim=64, num_labels=3),
        "distilbert",
        dict(
            blocks="transformer.layer",
            qkv=("attention.q_lin", "attention.k_lin", "attention.v_lin"),
            o="attention.out_lin",
            ffn_in=("ffn.lin1",),
            ffn_out="ffn.lin2",
            norms=("sa_layer_norm", "output_layer_norm"),
            writers=("embeddings.word_embeddings", "embeddings.position_embeddings"),
            stream_norms=("embeddings.LayerNorm",),
            post_ln=True,
        ),
    ),
    "ViT": ("ViTForImageClassification", "ViTConfig", VISION, "vit", VIT_BLOCK),
    "DeiT (distilled)": (
        "DeiTForImageClassificationWithTeacher",
        "DeiTConfig",
        VISION,
        "deit",
        VIT_BLOCK,
    ),
    "BEiT (layer scale, mean pooling)": (
        "BeitForImageClassification",
        "BeitConfig",
        dict(VISION, use_mean_pooling=True, layer_scale_init_value=0.1),
        "beit",
        VIT_BLOCK,
    ),
    "DINOv2": ("Dinov2ForImageClassification", "Dinov2Config", VISION, "dinov2", DINOV2_BLOCK),
    "DINOv2 (SwiGLU)": (
        "Dinov2ForImageClassification",
        "Dinov2Config",
        dict(VISION, use_swiglu_ffn=True),
        "dinov2",
        dict(DINOV2_BLOCK, ffn_in=("mlp.gate_proj", "mlp.up_proj"), ffn_out="mlp.down_proj"),
    ),
    "CLIP vision": ("CLIPVisionModel", "CLIPVisionConfig", VISION, "", CLIP_BLOCK),
    "SigLIP vision": ("SiglipVisionModel", "SiglipVisionConfig", VISION, "", CLIP_BLOCK),
    "Whisper encoder (audio classifier)": (
        "WhisperForAudioClassification",
        "WhisperConfig",
        WHISPER,
        "encoder",
        dict(
            blocks="layers",
            qkv=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
            o="self_attn.out_proj",
            ffn_in=("fc1",),
            ffn_out="fc2",
            norms=("self_attn_layer_norm", "final_layer_norm"),
            writers=("conv2", "embed_positions"),
            finals=("layer_norm",),
        ),
    ),
}


def _build(model: str, config: str, args: dict) -> nn.Module:
    torch.manual_seed(0)
    cfg = getattr(transformers, config)(**args)
    return getattr(transformers, model)(cfg).to(torch.float64).eval()


def _held(model: nn.Module, layout: Layout, names: tuple[str, ...]) -> set[str]:
    """The names of ``names`` (relative to the stream's owner) the model holds as a module or
    parameter other than an ``nn.Identity``."""
    found = set()
    for rel in names:
        owner, _, attr = layout.name(rel).rpartition(".")
        try:
            obj = getattr(model.get_submodule(owner) if owner else model, attr)
        except AttributeError:
            continue
        if obj is not None and not isinstance(obj, nn.Identity):
            found.add(rel)
    return found


def _summary(model: nn.Module, layout: Layout) -> dict:
    """What the layout says, in the terms of ``table`` (names the model holds)."""
    fam = layout.family
    block = model.get_submodule(layout.blocks[0].prefix)

    def inside(names: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(n for n in names if n in dict(block.named_modules()) or _param(block, n))

    return dict(
        owner=layout.owner,
        blocks=fam.blocks,
        qkv=fam.qkv,
        qkv_layout=fam.qkv_layout if len(fam.qkv) == 1 else "separate",
        o=fam.o,
        ffn_in=fam.ffn_in,
        ffn_out=fam.ffn_out,
        norms=fam.norms,
        writers=_held(model, layout, fam.writers),
        finals=_held(model, layout, (*filter(None, [fam.final_norm]), *fam.head_norms)),
        stream_norms=_held(model, layout, fam.stream_norms),
        readers=_held(model, layout, fam.readers),
        scales=set(inside(fam.scales)),
        post_ln=fam.post_ln,
        parallel=fam.parallel,
        alibi=fam.alibi,
        gate_up=fam.gate_up,
        heads={(b.heads, b.kv_heads, b.head_dim) for b in layout.blocks},
        d_model=layout.d_model,
        norm_kind=layout.norm_kind,
    )


def _param(block: nn.Module, name: str) -> bool:
    return name in dict(block.named_parameters())


def _expected(model: nn.Module, layout: Layout, owner: str, table: dict) -> dict:
    """The table's values restricted to what ``model`` holds, in :func:`_summary`'s terms."""
    block = model.get_submodule(layout.blocks[0].prefix)
    return dict(
        owner=owner,
        blocks=table["blocks"],
        qkv=table["qkv"],
        qkv_layout=table.get("qkv_layout", "separate"),
        o=table["o"],
        ffn_in=table["ffn_in"],
        ffn_out=table["ffn_out"],
        norms=table["norms"],
        writers=_held(model, layout, table["writers"]),
        finals=_held(model, layout, table.get("finals", ())),
        stream_norms=_held(model, layout, table.get("stream_norms", ())),
        readers=_held(model, layout, table.get("readers", ())),
        scales={n for n in table.get("scales", ()) if _param(block, n)},
        post_ln=table.get("post_ln", False),
        parallel=False,
        alibi=False,
        gate_up=table.get("gate_up", False),
        heads={table.get("heads", (4, 4, 8))},
        d_model=32,
        norm_kind=table.get("norm_kind", "layer"),
    )


@pytest.mark.parametrize("name", list(EXPECTED))
def test_structure_gives_the_table_layout(name: str) -> None:
    model_cls, config_cls, args, owner, table = EXPECTED[name]
    model = _build(model_cls, config_cls, args)
    layout = describe_by_structure(model)
    assert _summary(model, layout) == _expected(model, layout, owner, table)
    assert _summary(model, describe(model)) == _summary(model, layout)


def test_beit_layer_scales_are_found_even_at_one() -> None:
    """BEiT's λ₁, λ₂ all 1: the plain sums hold too, the doubled run tells them apart."""
    model = _build(
        "BeitForImageClassification",
        "BeitConfig",
        dict(VISION, use_mean_pooling=True, layer_scale_init_value=1.0),
    )
    assert describe_by_structure(model).family.scales == ("lambda_1", "lambda_2")


#: still named: (class, config class, config, family, the structural refusal's fragment).
NAMED: dict[str, tuple[str, str, dict, str, str]] = {
    "ModernBERT": (
        "ModernBertForMaskedLM",
        "ModernBertConfig",
        dict(TEXT, pad_token_id=0, global_attn_every_n_layers=2, local_attention=4),
        "modernbert",
        "does not compute LN₁(x + attention)",
    ),
    "DeBERTa-v2 (shared attention key)": (
        "DebertaV2ForSequenceClassification",
        "DebertaV2Config",
        dict(TEXT, relative_attention=True, pos_att_type=["p2c", "c2p"], share_att_key=True),
        "deberta-v2",
        "attention.self.query_proj' runs 2 times",
    ),
    "DeBERTa": (
        "DebertaForSequenceClassification",
        "DebertaConfig",
        dict(TEXT, relative_attention=True, pos_att_type=["p2c", "c2p"]),
        "deberta",
        "attention.self.pos_proj|attention.self.pos_q_proj",
    ),
    "OLMo (gain-free norms, Llama's names)": (
        "OlmoForCausalLM",
        "OlmoConfig",
        dict(TEXT, num_key_value_heads=2),
        "llama",
        "are not norms of the block's input",
    ),
    "ALBERT": (
        "AlbertForMaskedLM",
        "AlbertConfig",
        dict(TEXT, embedding_size=16),
        "albert",
        "'albert.encoder.albert_layer_groups.0' runs 2 times",
    ),
}


def test_mpnet_is_found_by_structure_above_the_module_holding_its_bias() -> None:
    """MPNet's encoder holds the blocks and the relative bias table but no writer: the owner is
    the module above it, which holds the embeddings."""
    model = _build("MPNetForSequenceClassification", "MPNetConfig", TEXT)
    layout = describe_by_structure(model)
    assert layout.owner == "mpnet" and layout.family.blocks == "encoder.layer"
    assert layout.family.post_ln and not layout.family.alibi
    assert set(layout.family.writers) == {
        "embeddings.word_embeddings",
        "embeddings.position_embeddings",
    }
    assert layout.family.qkv == ("attention.attn.q", "attention.attn.k", "attention.attn.v")


def test_gemma2_sandwich_blocks_are_found_by_structure_as_named() -> None:
    model = _build(
        "Gemma2ForCausalLM", "Gemma2Config", dict(TEXT, num_key_value_heads=2, head_dim=8)
    )
    found, named = describe_by_structure(model).family, describe(model).family
    assert named.name == "gemma2"
    assert found.norms == named.norms == ("input_layernorm", "pre_feedforward_layernorm")
    assert found.branch_norms == named.branch_norms
    assert named.branch_norms == ("post_attention_layernorm", "post_feedforward_layernorm")
    for field in ("qkv", "o", "ffn_in", "ffn_out", "writers", "final_norm", "post_ln"):
        assert getattr(found, field) == getattr(named, field), field


def test_qwen3_per_head_query_key_norms_are_found_by_structure_as_named() -> None:
    """Qwen3's q/k RMS norms over each head's coordinates keep a head's scale 2^a only to
    rounding (their ε): the trace leaves q and k unscaled and finds Llama's layout."""
    model = _build("Qwen3ForCausalLM", "Qwen3Config", dict(TEXT, num_key_value_heads=2, head_dim=8))
    found, named = describe_by_structure(model).family, describe(model).family
    assert named.name == "llama"
    for field in ("qkv", "o", "ffn_in", "ffn_out", "norms", "writers", "final_norm", "post_ln"):
        assert getattr(found, field) == getattr(named, field), field
    assert found.qkv_layout == "separate" and not found.alibi


@pytest.mark.parametrize("name", list(NAMED))
def test_families_still_named_are_refused_by_structure(name: str) -> None:
    model_cls, config_cls, args, family, message = NAMED[name]
    model = _build(model_cls, config_cls, args)
    with pytest.raises(MorphError, match="not a recognised transformer") as info:
        describe_by_structure(model)
    assert message in str(info.value)
    assert describe(model).family.name == family


def test_an_activation_after_the_stream_writer_is_found_and_refused_by_name() -> None:
    """Whisper's stream enters as gelu(conv2(x)) + positions: not linear in its writers, so
    grow_width to k·d + r refuses naming conv2 (its extra coordinates would need the mean of
    a gelu) before building anything; whole copies stay exact. A linear entry (BERT's
    embeddings, ViT's patch projection) is found linear."""
    whisper = _build(*EXPECTED["Whisper encoder (audio classifier)"][:3])
    before = {k: v.clone() for k, v in whisper.state_dict().items()}
    assert not describe_by_structure(whisper).family.linear_entry  # its runs double the writers
    features = torch.randn(1, WHISPER["num_mel_bins"], 2 * WHISPER["max_source_positions"])
    with pytest.raises(MorphError, match=r"an activation follows what 'encoder\.conv2' writes"):
        grow_width(whisper, 45, probe=(features.double(),))
    _, report = grow_width(whisper, 64, probe=(features.double(),), seed=0)
    assert report.rel_dev_f64 <= 1e-12
    assert all(torch.equal(v, before[k]) for k, v in whisper.state_dict().items())
    for name in ("BERT masked LM", "ViT"):
        assert describe_by_structure(_build(*EXPECTED[name][:3])).family.linear_entry
