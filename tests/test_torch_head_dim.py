"""``widen`` of one query, key or value projection: its block's heads grow to a larger head_dim
(new key coordinates zero, new value coordinates read by zero output columns, the scores'
scale kept); exact in float64, the parent unchanged, the child reloaded by ``load_grown``;
rotary position embeddings and widths that are not whole per-head growth are refused."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
from thirdparty import import_transformers  # noqa: E402

from netmorph_core.torch import MorphError, load_grown, widen  # noqa: E402

try:
    transformers = import_transformers()
except ImportError:
    pytest.skip("transformers is not installed", allow_module_level=True)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2)
IMAGE = dict(image_size=16, patch_size=8)
#: model → (class, config class, config, the projection widened, input kind)
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
}


def _parent(name: str) -> torch.nn.Module:
    class_name, config_name, config, _, _ = MODELS[name]
    torch.manual_seed(0)
    model = getattr(transformers, class_name)(getattr(transformers, config_name)(**config))
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
    before = {k: v.clone() for k, v in parent.state_dict().items()}
    want = _out(parent, kind)
    child, report = widen(parent, at, 40)  # 4 heads of head_dim 8 → 4 heads of 10
    torch.testing.assert_close(_out(child, kind), want, rtol=0, atol=1e-9)
    assert child.get_submodule(at).out_features == 40
    assert any("grows from head_dim 8 to 10" in n for n in report.notes), report.notes
    assert all(torch.equal(before[k], v) for k, v in parent.state_dict().items())
    child.save_pretrained(tmp_path)
    torch.testing.assert_close(_out(load_grown(tmp_path), kind), want, rtol=0, atol=1e-9)


@pytest.mark.parametrize(("width", "match"), [(34, "larger multiple of 4"), (32, "larger")])
def test_a_width_that_is_not_whole_growth_per_head_is_refused(width: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        widen(_parent("BERT"), MODELS["BERT"][3], width)


def test_rotary_attention_is_refused_by_name() -> None:
    config = transformers.MistralConfig(**TINY, num_key_value_heads=2, vocab_size=100)
    model = transformers.MistralForCausalLM(config).double().eval()
    with pytest.raises(MorphError, match=r"'model\.rotary_emb' rotates every head_dim coordinate"):
        widen(model, "model.layers.0.self_attn.q_proj", 48)
