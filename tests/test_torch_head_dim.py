"""``widen`` of one query, key or value projection (or DeBERTa's and BLOOM's fused q/k/v layer):
its block's heads grow to a larger head_dim (new key coordinates zero, new value coordinates
read by zero output columns, the scores' scale kept: a scale derived from head_dim, as in MPNet
and DeBERTa, by queries ×√(h'/h)); exact in float64, the parent unchanged, the stock
``from_pretrained`` refusing the child loudly and ``load_grown`` rebuilding it exactly; a rotary
embedding of every coordinate (tests/test_torch_head_dim_rotary.py for the partial ones) and
widths that are not whole per-head growth are refused."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
from thirdparty import import_transformers  # noqa: E402

from netmorph_core.torch import MorphError, load_grown, widen  # noqa: E402
from netmorph_core.torch.head_dim import score_scales  # noqa: E402

try:
    transformers = import_transformers()
except ImportError:
    pytest.skip("transformers is not installed", allow_module_level=True)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2)
IMAGE = dict(image_size=16, patch_size=8)
DEBERTA = dict(vocab_size=100, relative_attention=True, pos_att_type=["c2p", "p2c"], num_labels=3)
#: model → (class, config class, config, the projection widened, input kind[, width]): the
#: width 40 grows 4 heads of head_dim 8 to 10, 120 a fused layer of 12 row blocks of 8.
MODELS = {
    "BERT": (
        "BertForSequenceClassification",
        "BertConfig",
        dict(TINY, vocab_size=100, num_labels=3),
        "bert.encoder.layer.0.attention.self.query",
        "ids",
    ),
    "ViT": (
        "ViTForImageClassification",
        "ViTConfig",
        dict(TINY, **IMAGE, num_labels=3),
        "vit.layers.1.attention.k_proj",
        "images",
    ),
    "DistilBERT": (
        "DistilBertForSequenceClassification",
        "DistilBertConfig",
        dict(dim=32, hidden_dim=64, n_heads=4, n_layers=2, vocab_size=100, num_labels=3),
        "distilbert.transformer.layer.0.attention.q_lin",
        "ids",
    ),
    "CLIP image encoder": (
        "CLIPVisionModel",
        "CLIPVisionConfig",
        dict(TINY, **IMAGE),
        "encoder.layers.0.self_attn.v_proj",
        "images",
    ),
    "OPT": (
        "OPTForCausalLM",
        "OPTConfig",
        dict(
            hidden_size=32,
            ffn_dim=64,
            num_attention_heads=4,
            num_hidden_layers=2,
            vocab_size=100,
            word_embed_proj_dim=32,
        ),
        "model.decoder.layers.1.self_attn.q_proj",
        "ids",
    ),
    "MPNet (scale 1/√attention_head_size)": (
        "MPNetForMaskedLM",
        "MPNetConfig",
        dict(TINY, vocab_size=100),
        "mpnet.encoder.layer.1.attention.attn.q",
        "ids",
    ),
    "DeBERTa (fused in_proj, c2p and p2c)": (
        "DebertaForSequenceClassification",
        "DebertaConfig",
        dict(TINY, **DEBERTA, max_relative_positions=16),
        "deberta.encoder.layer.0.attention.self.in_proj",
        "ids",
        120,
    ),
    "DeBERTa-v2 (position projections)": (
        "DebertaV2ForSequenceClassification",
        "DebertaV2Config",
        dict(TINY, **DEBERTA, position_buckets=8, share_att_key=False),
        "deberta.encoder.layer.1.attention.self.key_proj",
        "ids",
    ),
    "DeBERTa-v2 (shared attention key)": (
        "DebertaV2ForSequenceClassification",
        "DebertaV2Config",
        dict(TINY, **DEBERTA, position_buckets=8, share_att_key=True),
        "deberta.encoder.layer.0.attention.self.query_proj",
        "ids",
    ),
    "GPT-Neo (unscaled scores)": (
        "GPTNeoForCausalLM",
        "GPTNeoConfig",
        dict(
            hidden_size=32,
            num_heads=4,
            num_layers=2,
            attention_types=[[["global", "local"], 1]],
            window_size=4,
            vocab_size=100,
        ),
        "transformer.h.1.attn.attention.q_proj",
        "ids",
    ),
    "BLOOM (fused, ALiBi)": (
        "BloomForCausalLM",
        "BloomConfig",
        dict(hidden_size=32, n_head=4, n_layer=2, vocab_size=100),
        "transformer.h.1.self_attention.query_key_value",
        "ids",
        120,
    ),
}


def _parent(name: str) -> torch.nn.Module:
    """The float64 model, its weights redrawn of scale 0.2 (biases 0.1) so that a wrong scale
    of the scores would show far above rounding."""
    class_name, config_name, config = MODELS[name][:3]
    torch.manual_seed(0)
    model = getattr(transformers, class_name)(getattr(transformers, config_name)(**config))
    with torch.no_grad():
        for key, p in model.named_parameters():
            if "norm" not in key.lower():
                p.normal_(0.0, 0.2 if p.dim() > 1 else 0.1)
    return model.double().eval()


def _out(model: torch.nn.Module, kind: str) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    if kind == "ids":
        x = torch.randint(0, 100, (2, 9), generator=gen)
    else:
        x = torch.randn(2, 3, 16, 16, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        result = model(x)
    logits = getattr(result, "logits", None)
    return result.last_hidden_state if logits is None else logits


@pytest.mark.parametrize("name", MODELS)
def test_widening_a_projection_grows_its_heads_exactly(name: str, tmp_path: Path) -> None:
    parent = _parent(name)
    at, kind = MODELS[name][3], MODELS[name][4]
    width = MODELS[name][5] if len(MODELS[name]) > 5 else 40
    before = {k: v.clone() for k, v in parent.state_dict().items()}
    want = _out(parent, kind)
    child, report = widen(parent, at, width)  # every head of head_dim 8 → 10
    torch.testing.assert_close(_out(child, kind), want, rtol=0, atol=1e-9)
    assert child.get_submodule(at).out_features == width
    assert any("grows from head_dim 8 to 10" in n for n in report.notes), report.notes
    assert all(torch.equal(before[k], v) for k, v in parent.state_dict().items())
    child.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="does not recognize this architecture"):
        transformers.AutoConfig.from_pretrained(tmp_path)  # the marked model_type
    torch.testing.assert_close(_out(load_grown(tmp_path), kind), want, rtol=0, atol=1e-9)


@pytest.mark.parametrize(("width", "match"), [(34, "larger multiple of 4"), (32, "larger")])
def test_a_width_that_is_not_whole_growth_per_head_is_refused(width: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        widen(_parent("BERT"), MODELS["BERT"][3], width)


def test_rotary_attention_is_refused_by_name() -> None:
    config = transformers.MistralConfig(**TINY, num_key_value_heads=2, vocab_size=100)
    model = transformers.MistralForCausalLM(config).double().eval()
    with pytest.raises(MorphError, match=r"no exact child: 'model\.rotary_emb' rotates all 8"):
        widen(model, "model.layers.0.self_attn.q_proj", 48)


def test_a_scale_derived_from_head_dim_is_folded_into_the_queries() -> None:
    parent = _parent("MPNet (scale 1/√attention_head_size)")
    at = "mpnet.encoder.layer.1.attention.attn.q"
    child, report = widen(parent, at, 40)
    assert any("the queries ×√(10/8) against the scale 1/√10" in n for n in report.notes)
    q_parent = parent.get_submodule(at).weight.view(4, 8, 32)
    q_child = child.get_submodule(at).weight.view(4, 10, 32)
    torch.testing.assert_close(q_child[:, :8], q_parent * (10 / 8) ** 0.5, rtol=1e-15, atol=0)
    keys = child.get_submodule(at.replace(".q", ".k")).weight.view(4, 10, 32)
    assert torch.count_nonzero(keys[:, 8:]) == 0


def test_a_scale_attribute_the_forward_reads_is_kept() -> None:
    parent = _parent("BERT")
    at = MODELS["BERT"][3]
    child, report = widen(parent, at, 40)
    attention = child.get_submodule(at.rpartition(".")[0])
    assert attention.scaling == 8**-0.5 and attention.attention_head_size == 10
    q_parent = parent.get_submodule(at).weight.view(4, 8, 32)
    assert torch.equal(child.get_submodule(at).weight.view(4, 10, 32)[:, :8], q_parent)
    assert not any("the queries ×" in n for n in report.notes)


def test_deberta_position_rows_grow_per_head() -> None:
    child, _ = widen(
        _parent("DeBERTa (fused in_proj, c2p and p2c)"),
        MODELS["DeBERTa (fused in_proj, c2p and p2c)"][3],
        120,
    )
    attention = child.deberta.encoder.layer[0].attention.self
    assert attention.in_proj.weight.shape == (120, 32)
    assert attention.q_bias.shape == attention.v_bias.shape == (40,)
    assert attention.pos_proj.weight.shape == attention.pos_q_proj.weight.shape == (40, 32)
    grouped = attention.in_proj.weight.view(4, 3, 10, 32)  # [q_h; k_h; v_h] per head
    assert torch.count_nonzero(grouped[:, 1, 8:]) == 0  # new key coordinates
    assert torch.count_nonzero(attention.pos_proj.weight.view(4, 10, 32)[:, 8:]) == 0
    assert child.deberta.encoder.layer[1].attention.self.in_proj.weight.shape == (96, 32)


@pytest.mark.parametrize(
    ("name", "attention", "first"),
    [
        ("BERT", "bert.encoder.layer.0.attention.self", 1.0),  # reads self.scaling
        ("GPT-Neo (unscaled scores)", "transformer.h.0.attn.attention", 1.0),  # no scale
        ("MPNet (scale 1/√attention_head_size)", "mpnet.encoder.layer.0.attention.attn", 1.25),
    ],
)
def test_the_likelier_way_of_keeping_the_scale_comes_first(
    name: str, attention: str, first: float
) -> None:
    """The query factor tried first (squared: 10/8 where the scale is derived from head_dim);
    the other way is the measured fallback."""
    scales = score_scales(_parent(name).get_submodule(attention), 8, 10)
    assert len(scales) == 2 and scales[0][0] ** 2 == pytest.approx(first, rel=1e-15)
    assert scales[1][0] ** 2 == pytest.approx(2.25 - first, rel=1e-15)


def test_a_scale_attribute_of_another_value_is_only_kept() -> None:
    t5 = transformers.T5EncoderModel(transformers.T5Config(d_model=32, d_kv=8, num_heads=4))
    attention = t5.encoder.block[0].layer[0].SelfAttention  # scaling 1: unscaled scores
    assert score_scales(attention, 8, 10) == [(1.0, {})]
