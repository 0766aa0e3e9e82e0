"""Vision encoders with layer scale (DINOv2, BEiT).

DINOv2 and BEiT: every operation on a tiny float64 config (d 32, 4 heads, 2 blocks, layer
scales and norms redrawn so that they matter) computes the parent's logits (1e-9), leaves the
parent untouched and reloads through ``save_pretrained``: the stock ``from_pretrained`` where
the config describes the child, else the stock load refuses the marked model_type and
``load_grown`` rebuilds it (encoder–decoders: ``test_torch_transformer_encdec.py``; ALBERT's
shared layers: ``test_torch_transformer_postln.py``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from thirdparty import import_transformers
from torch_exactness import lifted_stream

from netmorph_core.torch import (
    MorphError,
    add_block,
    add_heads,
    deepen_projection,
    grow_ffn,
    grow_width,
    load_grown,
    pipeline,
)

try:
    transformers = import_transformers()
except ImportError:  # pragma: no cover - the test extra installs it
    pytest.skip("transformers is not installed", allow_module_level=True)

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

VISION = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    image_size=8,
    patch_size=4,
    num_channels=3,
    num_labels=3,
)
STOCK = "stock"
MARKED = "load_grown"
Op = Callable[[torch.nn.Module], tuple[torch.nn.Module, object]]
O_PROJ = "dinov2.encoder.layer.0.attention.o_proj"
#: operation → (what it does, how the DINOv2 child reloads).
DINOV2_OPS: dict[str, tuple[Op, str]] = {
    "grow_ffn": (lambda m: grow_ffn(m, 160), STOCK),  # mlp_ratio 5
    "grow_ffn (no integer mlp_ratio)": (lambda m: grow_ffn(m, 168), MARKED),
    "add_heads": (lambda m: add_heads(m, 8), STOCK),  # explicit head_dim
    "grow_width": (lambda m: grow_width(m, 48), MARKED),  # 128 / 48 is no mlp_ratio
    "grow_width x2": (lambda m: grow_width(m, 64), STOCK),
    "grow_width → add_heads": (lambda m: add_heads(grow_width(m, 64)[0], 8), STOCK),
    "add_block": (lambda m: add_block(m, 1), STOCK),
    "add_block (zero)": (lambda m: add_block(m, 2, method="zero"), STOCK),
    "deepen_projection": (lambda m: deepen_projection(m, O_PROJ), MARKED),
}


def _redraw(model: torch.nn.Module) -> torch.nn.Module:
    """Gains (norms, layer scales) in [0.5, 1.5], biases and bias tables in [−0.2, 0.2]."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            gain = name.endswith(("norm1.weight", "norm2.weight", "layernorm.weight"))
            gain |= "lambda" in name or ("layernorm_" in name and name.endswith("weight"))
            if gain:
                p.uniform_(0.5, 1.5)
            elif p.dim() == 1 or "relative_position_bias" in name:
                p.uniform_(-0.2, 0.2)
    return model


def _dinov2(cls: str = "Dinov2ForImageClassification", **extra: object) -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.Dinov2Config(**VISION, **extra)
    return _redraw(getattr(transformers, cls)(config).eval().double())


def _beit(shared: bool = False) -> torch.nn.Module:
    """BEiT with layer scales and a relative position bias per block (``shared``: one for
    every block)."""
    torch.manual_seed(0)
    config = transformers.BeitConfig(
        **VISION,
        intermediate_size=64,
        use_relative_position_bias=not shared,
        use_shared_relative_position_bias=shared,
        layer_scale_init_value=0.1,
    )
    return _redraw(transformers.BeitForImageClassification(config).eval().double())


def _pixels() -> torch.Tensor:
    return torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(_pixels()).logits


def _reloads(child: torch.nn.Module, report: object, how: str, want: torch.Tensor, path: Path):
    child.save_pretrained(path)
    auto = transformers.AutoModelForImageClassification
    if how == STOCK:
        assert any("reloads this child exactly" in n for n in report.notes), report.notes
        reloaded = auto.from_pretrained(path, dtype=torch.float64).eval()
    else:
        assert any("cannot describe" in n for n in report.notes), report.notes
        with pytest.raises(ValueError, match="does not recognize this architecture"):
            auto.from_pretrained(path)
        reloaded = load_grown(path)
    torch.testing.assert_close(_logits(reloaded), want, rtol=0, atol=1e-9)


@pytest.mark.parametrize("op", DINOV2_OPS)
def test_dinov2_operation_is_exact_and_reloads(op: str, tmp_path: Path) -> None:
    parent = _dinov2()
    before = {k: v.clone() for k, v in parent.state_dict().items()}
    want = _logits(parent)
    grow, how = DINOV2_OPS[op]
    child, report = grow(parent)
    torch.testing.assert_close(_logits(child), want, rtol=0, atol=1e-9)
    assert all(torch.equal(before[k], v) for k, v in parent.state_dict().items())
    _reloads(child, report, how, want, tmp_path)


def test_dinov2_width_extends_the_layer_scales() -> None:
    """λ̃ = [λ; λ; 1]: the copies keep λ, the extra coordinate's gain is 1 (its writer rows
    carry mean(λ⊙W), so the coordinate stays the stream's mean)."""
    parent = _dinov2()
    child, _ = grow_width(parent, 65)
    for i in range(2):
        for rel in ("layer_scale1", "layer_scale2"):
            lam = getattr(parent.dinov2.encoder.layer[i], rel).lambda1
            got = getattr(child.dinov2.encoder.layer[i], rel).lambda1
            want = torch.cat([lam, lam, lam.new_ones(1)])
            torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(_logits(child), _logits(parent), rtol=0, atol=1e-9)


@pytest.mark.parametrize(
    "grow",
    [
        lambda m: grow_ffn(m, 160),
        lambda m: add_heads(m, 8),
        lambda m: add_block(m, 0),
        lambda m: grow_width(m, 48),
        lambda m: deepen_projection(m, "dinov2.encoder.layer.1.mlp.down_proj"),
    ],
)
def test_dinov2_swiglu_operations_are_exact(grow: Op) -> None:
    parent = _dinov2(use_swiglu_ffn=True)
    child, _ = grow(parent)
    torch.testing.assert_close(_logits(child), _logits(parent), rtol=0, atol=1e-9)


@pytest.mark.parametrize(("d_model", "how"), [(48, MARKED), (64, STOCK)])
def test_dinov2_with_registers_grow_width(d_model: int, how: str, tmp_path: Path) -> None:
    """Register tokens write the stream like the class token."""
    torch.manual_seed(0)
    config = transformers.Dinov2WithRegistersConfig(**VISION, num_register_tokens=2)
    parent = _redraw(transformers.Dinov2WithRegistersForImageClassification(config).eval())
    parent = parent.double()
    want = _logits(parent)
    child, report = grow_width(parent, d_model)
    torch.testing.assert_close(_logits(child), want, rtol=0, atol=1e-9)
    assert child.dinov2_with_registers.embeddings.register_tokens.shape == (1, 2, d_model)
    _reloads(child, report, how, want, tmp_path)


@pytest.mark.parametrize(
    "grow",
    [
        lambda m: grow_ffn(m, 160),
        lambda m: add_heads(m, 8),
        lambda m: add_block(m, 1),
        lambda m: deepen_projection(m, "encoder.layer.0.mlp.fc1"),
    ],
)
def test_dinov2_model_without_head(grow: Op) -> None:
    """Dinov2Model returns the stream: block operations are exact."""
    parent = _dinov2("Dinov2Model")
    child, _ = grow(parent)
    with torch.no_grad():
        want = parent(_pixels()).last_hidden_state
        torch.testing.assert_close(child(_pixels()).last_hidden_state, want, rtol=0, atol=1e-9)


@pytest.mark.parametrize("width", [64, 45])
def test_dinov2_model_returns_its_wider_stream(width: int) -> None:
    """grow_width of Dinov2Model: the child returns [y; …; y; 0], its pooled CLS token too."""
    parent = _dinov2("Dinov2Model")
    child, report = grow_width(parent, width)
    with torch.no_grad():
        want, got = parent(_pixels()), child(_pixels())
    for name in ("last_hidden_state", "pooler_output"):
        y = getattr(want, name)
        torch.testing.assert_close(getattr(got, name), lifted_stream(y, width), rtol=0, atol=1e-9)
    assert any("the child's is" in n for n in report.notes)


@pytest.mark.parametrize(
    "grow",
    [
        lambda m: grow_ffn(m, 160),
        lambda m: deepen_projection(m, "dinov2.encoder.layer.1.mlp.gate_proj"),
    ],
    ids=["grow_ffn", "deepen_projection"],
)
def test_dinov2_swiglu_child_the_config_cannot_describe_reloads(grow: Op, tmp_path: Path) -> None:
    """No integer mlp_ratio gives a SwiGLU size of 160 (d 32), and no config field describes a
    split gate: the config is marked, the stock load refuses it, and load_grown splits the
    checkpoint's fused [gate; up] weight (``mlp.weights_in``) back into its two halves."""
    parent = _dinov2(use_swiglu_ffn=True)
    child, report = grow(parent)
    _reloads(child, report, MARKED, _logits(parent), tmp_path)


@pytest.mark.parametrize("d_model", [45, 64])
def test_beit_grow_width_keeps_layer_scales_and_pooler_norm(d_model: int) -> None:
    parent = _beit()
    before = {k: v.clone() for k, v in parent.state_dict().items()}
    child, _ = grow_width(parent, d_model)
    torch.testing.assert_close(_logits(child), _logits(parent), rtol=0, atol=1e-9)
    assert child.beit.layers[0].lambda_1.shape == (d_model,)
    assert child.beit.pooler.layernorm.weight.shape == (d_model,)
    assert all(torch.equal(before[k], v) for k, v in parent.state_dict().items())


@pytest.mark.parametrize("family", ["Beit", "Data2VecVision"])
def test_mean_pooled_norm_over_more_tokens_than_the_width(family: str) -> None:
    """65 tokens of width 32: the pooler's LayerNorm reads the patches' mean, which is found
    as the mean of the stream's tokens (not as one of many combinations of its rows)."""
    torch.manual_seed(0)
    config = getattr(transformers, f"{family}Config")(
        **dict(VISION, image_size=32), intermediate_size=64
    )
    parent = getattr(transformers, f"{family}ForImageClassification")(config).eval().double()
    assert parent.config.use_mean_pooling
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    child, report = grow_width(parent, 64, probe=x)
    assert report.rel_dev_f64 <= 1e-12
    pooler = child.get_submodule(f"{config.model_type.replace('-', '_')}.pooler.layernorm")
    assert pooler.weight.shape == (64,)


def test_beit_grow_width_x2_reloads(tmp_path: Path) -> None:
    """BEiT's attention reads ``config.head_dim`` where the config holds one (found by
    building it): the wider child's config records the head_dim and reloads stock."""
    parent = _beit()
    child, report = grow_width(parent, 64)
    _reloads(child, report, STOCK, _logits(parent), tmp_path)


@pytest.mark.parametrize("streamed", [False, True], ids=["copies", "per module"])
@pytest.mark.parametrize("shared", [False, True])
def test_beit_add_heads_grows_the_relative_position_bias(
    shared: bool, streamed: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """New heads get a zero bias column (the same for every head of a cancelling set); the
    per-module measurement measures a model whose bias is built outside the blocks whole."""
    if streamed:
        monkeypatch.setattr(pipeline, "WHOLE_COPY_LIMIT", 0)
    parent = _beit(shared)
    wide, _ = grow_width(parent, 64)
    before = {k: v.clone() for k, v in wide.state_dict().items()}
    child, report = add_heads(wide, 8)
    want = _logits(parent)
    torch.testing.assert_close(_logits(child), want, rtol=0, atol=1e-9)
    tables = [p for n, p in child.named_parameters() if n.endswith("relative_position_bias_table")]
    assert tables and all(t.shape[-1] == 8 and not t[:, 4:].any() for t in tables)
    assert all(torch.equal(before[k], v) for k, v in wide.state_dict().items())
    _reloads(child, report, STOCK, want, tmp_path)


def test_beit_shared_bias_needs_every_block() -> None:
    wide, _ = grow_width(_beit(shared=True), 64)
    before = {k: v.clone() for k, v in wide.state_dict().items()}
    with pytest.raises(MorphError, match=re.escape("inplace=True: 'beit.shared_position_bias")):
        add_heads(wide, 8, inplace=True)
    assert all(torch.equal(before[k], v) for k, v in wide.state_dict().items())
    with pytest.raises(
        MorphError, match=re.escape("'beit.shared_position_bias.relative_position_bias_table'")
    ):
        add_heads(wide, 8, layers=0)


@pytest.mark.parametrize("cls", ["Dinov2ForImageClassification", "Dinov2Model"])
def test_dinov2_float32_measured_one_module_at_a_time(
    cls: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DINOv2 casts its pixels to the patch convolution's dtype before calling it: measured in
    float64 one module at a time (as a model past the whole-copy limit is), the convolution
    receives them in float32 and computes in float64."""
    monkeypatch.setattr(pipeline, "WHOLE_COPY_LIMIT", 0)
    parent = _dinov2(cls).float()
    pixels = _pixels().float()
    child, report = grow_ffn(parent, 160, probe=(pixels,))
    assert report.measured_by == "float64 per module" and report.noise_ratio <= 2.0
    with torch.no_grad():
        want = parent(pixels)[0]
        torch.testing.assert_close(child(pixels)[0], want, rtol=0, atol=8e-6 * want.abs().max())
