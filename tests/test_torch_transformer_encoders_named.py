"""Encoders recognised by name: CLIP's and SigLIP's image encoders, Whisper's encoder (mel
features in, two convolutions writing the stream) and DistilBERT (post-LN): the transformer
operations are exact in float64, leave the parent unchanged and reload exactly."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
from thirdparty import import_transformers  # noqa: E402
from torch_exactness import lifted_stream  # noqa: E402

from netmorph_core.torch import (  # noqa: E402
    add_block,
    add_heads,
    deepen_projection,
    grow_ffn,
    grow_width,
    load_grown,
)

try:
    transformers = import_transformers()
except ImportError:
    pytest.skip("transformers is not installed", allow_module_level=True)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2)
VISION = dict(**TINY, image_size=16, patch_size=8)
WHISPER = dict(
    d_model=32,
    encoder_ffn_dim=64,
    encoder_attention_heads=4,
    encoder_layers=2,
    decoder_layers=1,
    decoder_attention_heads=4,
    decoder_ffn_dim=64,
    num_mel_bins=8,
    max_source_positions=8,
    vocab_size=100,
)
DISTILBERT = dict(dim=32, hidden_dim=64, n_heads=4, n_layers=2, vocab_size=100, num_labels=3)
#: model → (class, config class, config, input builder, block 0's attention output projection)
MODELS: dict[str, tuple] = {
    "CLIP image classifier": (
        "CLIPForImageClassification",
        "CLIPConfig",
        dict(vision_config=VISION, text_config=dict(TINY, vocab_size=100), num_labels=3),
        lambda g: {"pixel_values": torch.randn(2, 3, 16, 16, generator=g)},
        "vision_model.encoder.layers.0.self_attn.out_proj",
    ),
    "CLIP image encoder": (
        "CLIPVisionModel",
        "CLIPVisionConfig",
        VISION,
        lambda g: {"pixel_values": torch.randn(2, 3, 16, 16, generator=g)},
        "encoder.layers.0.self_attn.out_proj",
    ),
    "CLIP image encoder with projection": (
        "CLIPVisionModelWithProjection",
        "CLIPVisionConfig",
        dict(VISION, projection_dim=16),
        lambda g: {"pixel_values": torch.randn(2, 3, 16, 16, generator=g)},
        "vision_model.encoder.layers.0.self_attn.out_proj",
    ),
    "CLIP text encoder with projection": (
        "CLIPTextModelWithProjection",
        "CLIPTextConfig",
        dict(TINY, vocab_size=100, max_position_embeddings=16, projection_dim=16),
        lambda g: {"input_ids": torch.randint(0, 100, (2, 7), generator=g)},
        "text_model.encoder.layers.0.self_attn.out_proj",
    ),
    "CLAP text encoder with projection (an MLP)": (
        "ClapTextModelWithProjection",
        "ClapTextConfig",
        dict(TINY, vocab_size=100, max_position_embeddings=40, projection_dim=16),
        lambda g: {"input_ids": torch.randint(3, 100, (2, 7), generator=g)},
        "text_model.encoder.layer.0.attention.output.dense",
    ),
    "SigLIP image encoder": (
        "SiglipVisionModel",
        "SiglipVisionConfig",
        VISION,
        lambda g: {"pixel_values": torch.randn(2, 3, 16, 16, generator=g)},
        "encoder.layers.0.self_attn.out_proj",
    ),
    "Whisper audio classifier": (
        "WhisperForAudioClassification",
        "WhisperConfig",
        WHISPER,
        lambda g: {"input_features": torch.randn(2, 8, 16, generator=g)},
        "encoder.layers.0.self_attn.out_proj",
    ),
    "DistilBERT classifier": (
        "DistilBertForSequenceClassification",
        "DistilBertConfig",
        DISTILBERT,
        lambda g: {"input_ids": torch.randint(0, 100, (2, 9), generator=g)},
        "distilbert.transformer.layer.0.attention.out_lin",
    ),
}
Op = Callable[[torch.nn.Module, str], tuple]
OPS: dict[str, Op] = {
    "grow_ffn": lambda m, name: grow_ffn(m, 80),
    "add_heads": lambda m, name: add_heads(m, 6),
    "add_block": lambda m, name: add_block(m, 1),
    "grow_width": lambda m, name: grow_width(m, 64),
    "deepen_projection": lambda m, name: deepen_projection(m, name),
}


def _parent(model: str) -> torch.nn.Module:
    class_name, config_name, config, _, _ = MODELS[model]
    torch.manual_seed(0)
    parent = getattr(transformers, class_name)(getattr(transformers, config_name)(**config))
    parent = parent.double().eval()
    with torch.no_grad():  # non-trivial norms and biases
        for name, p in parent.named_parameters():
            if p.dim() == 1:
                if "norm" in name and name.endswith("weight"):
                    p.uniform_(0.5, 1.5)
                else:
                    p.uniform_(-0.2, 0.2)
    return parent


def _out(model: torch.nn.Module, name: str) -> torch.Tensor:
    inputs = MODELS[name][3](torch.Generator().manual_seed(1))
    inputs = {k: v.double() if v.is_floating_point() else v for k, v in inputs.items()}
    with torch.no_grad():
        result = model(**inputs)
    for key in ("logits", "image_embeds", "text_embeds"):  # a head's output, else the stream
        if getattr(result, key, None) is not None:
            return getattr(result, key)
    return result.last_hidden_state


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("model", MODELS)
def test_operation_is_exact_and_reloads(model: str, op: str, tmp_path: Path) -> None:
    parent = _parent(model)
    before = {k: v.clone() for k, v in parent.state_dict().items()}
    y = _out(parent, model)
    child, report = OPS[op](parent, MODELS[model][4])
    got = _out(child, model)
    want = lifted_stream(y, got.shape[-1])  # an image encoder returns its (wider) stream
    torch.testing.assert_close(got, want, rtol=0, atol=1e-9)
    assert all(torch.equal(before[k], v) for k, v in parent.state_dict().items())
    child.save_pretrained(tmp_path)
    if any("reloads this child exactly" in n for n in report.notes):
        reloaded = type(parent).from_pretrained(tmp_path, dtype=torch.float64).eval()
    else:
        assert any("cannot describe" in n for n in report.notes), report.notes
        reloaded = load_grown(tmp_path)
    torch.testing.assert_close(_out(reloaded, model), want, rtol=0, atol=1e-9)
