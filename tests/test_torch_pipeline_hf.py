"""Hugging Face layouts the transformer operations must handle exactly or refuse by name:
BEiT's per-block and shared relative position biases and layer scales (add_block), ELECTRA's
projection between its embeddings and the stream (grow_width)."""

from __future__ import annotations

import pytest
import torch
from thirdparty import import_transformers

from netmorph_core.torch import add_block, grow_ffn, grow_width, pipeline

try:
    transformers = import_transformers()
except ImportError:  # pragma: no cover - the test extra installs it
    pytest.skip("transformers is not installed", allow_module_level=True)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)


def _trained_like(model: torch.nn.Module) -> torch.nn.Module:
    """Every parameter perturbed (BEiT initialises its bias tables to zero)."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model


def beit(**options: object) -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.BeitConfig(
        **SMALL, image_size=16, patch_size=8, num_labels=3, layer_scale_init_value=0.1, **options
    )
    return _trained_like(transformers.BeitForImageClassification(config).double().eval())


def _logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).logits


@pytest.mark.parametrize("at", [0, 1, 2])
def test_beit_add_block_with_per_block_position_bias_is_exact(at: int) -> None:
    parent = beit(use_relative_position_bias=True)
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    child, report = add_block(parent, at, probe=x)
    reference = _logits(parent, x)
    assert float((_logits(child, x) - reference).abs().max()) <= 1e-10 * float(
        reference.abs().max()
    )
    assert report.rel_dev_f64 <= 1e-10 and report.modes == ("eval", "train")


def test_beit_shared_position_bias_gives_the_new_attention_zero_output_columns() -> None:
    """The shared bias differs per head, so the new block's heads cannot cancel in sets: as
    under ALiBi, "netmorph" gives them zero output columns (its feed-forward still cancels)."""
    parent = beit(use_shared_relative_position_bias=True)
    child, report = add_block(parent, 1)
    assert report.rel_dev_f64 <= 1e-10
    assert any("shared_position_bias" in n and "zero attention" in n for n in report.notes)
    assert not child.beit.layers[1].attention.o_proj.weight.any()
    assert child.beit.layers[1].mlp.fc2.weight.all()
    _, report = add_block(parent, 1, method="zero")
    assert report.rel_dev_f64 <= 1e-10


def test_electra_grow_width_grows_its_embedding_projection() -> None:
    """The embeddings (width 16) reach the stream through embeddings_project, its writer."""
    torch.manual_seed(0)
    config = transformers.ElectraConfig(
        **SMALL, vocab_size=50, embedding_size=16, max_position_embeddings=16, num_labels=3
    )
    parent = transformers.ElectraForSequenceClassification(config).double().eval()
    child, report = grow_width(parent, 64)
    assert report.rel_dev_f64 <= 1e-10
    assert child.electra.embeddings_project.weight.shape == (64, 16)
    _, report = grow_ffn(parent, 80)
    assert report.rel_dev_f64 <= 1e-10


def _hf(family: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if family == "llama":
        config = transformers.LlamaConfig(
            **SMALL, num_key_value_heads=2, vocab_size=64, max_position_embeddings=32
        )
        return transformers.LlamaForCausalLM(config).double().eval()
    if family == "gpt2":
        config = transformers.GPT2Config(
            n_embd=32,
            n_head=4,
            n_layer=2,
            n_inner=64,
            vocab_size=64,
            n_positions=16,
            attn_implementation="eager",
        )
        return transformers.GPT2LMHeadModel(config).double().eval()
    config = transformers.BertConfig(
        **SMALL, vocab_size=64, max_position_embeddings=32, num_labels=3
    )
    return transformers.BertForSequenceClassification(config).double().eval()


HF_OPS = {
    "grow_ffn": lambda m, tol: grow_ffn(m, 80, tol=tol),
    "add_block": lambda m, tol: add_block(m, 1, tol=tol),
    "grow_width": lambda m, tol: grow_width(m, 64, tol=tol),
}


@pytest.mark.parametrize("op", sorted(HF_OPS))
@pytest.mark.parametrize(
    "family",
    [
        "llama",
        pytest.param("gpt2", marks=pytest.mark.thirdparty),
        pytest.param("bert", marks=pytest.mark.thirdparty),
    ],
)
def test_per_module_measurement_of_hugging_face_models(
    family: str, op: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The per-module float64 measurement runs the stock models (attention masks, rotary
    embeddings as keyword inputs of the blocks) and agrees with the whole-copy one. HF's
    RMSNorm computes in float32, so a float64 Llama is only float32-exact (tol=None)."""
    tol, bound = (None, 1e-6) if family == "llama" else ("auto", 1e-10)
    _, whole = HF_OPS[op](_hf(family), tol)
    monkeypatch.setattr(pipeline, "WHOLE_COPY_LIMIT", 0)
    _, report = HF_OPS[op](_hf(family), tol)
    assert whole.measured_by == pipeline.COPIES and report.measured_by == pipeline.STREAMED
    # post-LN add_block changes the block before the new one too: measured whole, no region
    whole_only = family == "bert" and op == "add_block"
    assert whole_only or (report.regions and max(dev for _, dev in report.regions) <= bound)
    assert report.rel_dev_f64 <= bound and whole.rel_dev_f64 <= bound
