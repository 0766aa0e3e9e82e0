"""``widen`` of a query, key or value projection of a spatial-reduction attention (SegFormer,
GLPN, PVT-v2): keys and values read a strided Conv2d and LayerNorm of the stream, the per-head
algebra is a standard attention's, so every head grows its head_dim (:mod:`.head_dim`).

Tiny float64 models of two stages (widths 16 and 32, heads 1 and 2, spatial reduction 2 in
stage 0), every norm gain, norm bias and layer bias redrawn so that they matter. SegFormer is
exact under both of its attention implementations (eager and ``scaled_dot_product_attention``)
and reloads through ``load_grown``; GLPN (its scale 1/√head_dim derived from head_dim: the
queries are scaled by √(h'/h)) too; PVT-v2 reshapes its context to the stream width
(heads·head_dim = d_s), so no child of a wider head exists and each projection is refused.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from thirdparty import import_transformers

from netmorph_core.torch import MorphError, load_grown, widen

try:
    transformers = import_transformers()
except ImportError:  # pragma: no cover - the test extra installs it
    pytest.skip("transformers is not installed", allow_module_level=True)

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

STAGES = dict(
    num_encoder_blocks=2,
    depths=[1, 1],
    sr_ratios=[2, 1],
    hidden_sizes=[16, 32],
    patch_sizes=[7, 3],
    strides=[4, 2],
    num_attention_heads=[1, 2],
    mlp_ratios=[2, 2],
    num_labels=3,
)
SEG = "segformer.stages.{}.blocks.0.attention.{}_proj"
PVT = "pvt_v2.encoder.layers.{}.blocks.0.attention.{}"
GLPN = "glpn.encoder.block.{}.0.attention.self.{}"
#: (stage, new width): stage 0 (one head of 16, keys/values spatially reduced) to head_dim
#: 36; stage 1 (two heads of 16) to head_dim 20.
WIDTHS = [(0, 36), (1, 40)]


def _redrawn(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` in float64 eval mode, norm gains in [0.5, 1.5], every bias in [−0.2, 0.2]."""
    model = model.eval().double()
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() != 1:
                continue
            draw = torch.rand(p.shape, generator=gen, dtype=p.dtype)
            gain = "norm" in name and name.endswith("weight")
            p.copy_(draw + 0.5 if gain else 0.4 * draw - 0.2)
    return model


def _segformer(implementation: str) -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.SegformerConfig(num_channels=3, decoder_hidden_size=32, **STAGES)
    config._attn_implementation = implementation
    return _redrawn(transformers.SegformerForSemanticSegmentation(config))


def _pvt() -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.PvtV2Config(qkv_bias=True, **STAGES)
    return _redrawn(transformers.PvtV2ForImageClassification(config))


def _glpn() -> torch.nn.Module:
    torch.manual_seed(0)
    args = {k: v for k, v in STAGES.items() if k != "num_labels"}
    config = transformers.GLPNConfig(decoder_hidden_size=16, **args)
    return _redrawn(transformers.GLPNForDepthEstimation(config))


def _depth(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(_pixels()).predicted_depth


def _pixels() -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(2, 3, 32, 32, generator=gen, dtype=torch.float64)


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(_pixels()).logits


def _assert_same(got: torch.Tensor, want: torch.Tensor) -> None:
    """``got`` equals ``want`` to 1e-9 of its largest magnitude."""
    assert got.shape == want.shape
    assert float((got - want).abs().max()) <= 1e-9 * float(want.abs().max())


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _unchanged(model: torch.nn.Module, before: dict[str, torch.Tensor]) -> bool:
    after = model.state_dict()
    return after.keys() == before.keys() and all(torch.equal(before[k], after[k]) for k in after)


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
@pytest.mark.parametrize(("stage", "width"), WIDTHS)
@pytest.mark.parametrize("role", ["q", "k", "v"])
def test_segformer_projection_grows_head_dim_exactly(
    implementation: str, stage: int, width: int, role: str
) -> None:
    parent = _segformer(implementation)
    assert parent.config._attn_implementation == implementation
    before, want = _state(parent), _logits(parent)
    child, report = widen(parent, SEG.format(stage, role), width, seed=0)
    _assert_same(_logits(child), want)
    heads = (1, 2)[stage]
    attention = child.segformer.stages[stage].blocks[0].attention
    assert attention.head_dim == width // heads
    for rel in ("q_proj", "k_proj", "v_proj"):
        assert getattr(attention, rel).weight.shape == (width, (16, 32)[stage])
    assert attention.o_proj.weight.shape == ((16, 32)[stage], width)
    assert any(f"from head_dim 16 to {width // heads}" in n for n in report.notes)
    assert _unchanged(parent, before)


def test_segformer_child_reloads(tmp_path: Path) -> None:
    """The config derives head_dim = hidden / heads, so it cannot describe the child: the stock
    load refuses the marked model type and ``load_grown`` rebuilds the child exactly."""
    parent = _segformer("eager")
    child, report = widen(parent, SEG.format(0, "k"), 36, seed=0)
    assert any("cannot describe" in n for n in report.notes), report.notes
    child.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="does not recognize this architecture"):
        transformers.AutoModelForSemanticSegmentation.from_pretrained(tmp_path)
    _assert_same(_logits(load_grown(tmp_path).double().eval()), _logits(parent))


@pytest.mark.parametrize(("stage", "width"), WIDTHS)
@pytest.mark.parametrize("role", ["query", "key", "value"])
def test_glpn_projection_grows_head_dim_exactly(stage: int, width: int, role: str) -> None:
    parent = _glpn()
    before, want = _state(parent), _depth(parent)
    child, report = widen(parent, GLPN.format(stage, role), width, seed=0)
    _assert_same(_depth(child), want)
    attention = child.glpn.encoder.block[stage][0].attention.self
    heads = (1, 2)[stage]
    assert attention.attention_head_size == width // heads
    assert attention.all_head_size == width
    assert any(f"the queries ×√({width // heads}/16)" in n for n in report.notes), report.notes
    assert _unchanged(parent, before)


def test_glpn_child_reloads(tmp_path: Path) -> None:
    parent = _glpn()
    child, _ = widen(parent, GLPN.format(1, "value"), 40, seed=0)
    child.save_pretrained(tmp_path)
    _assert_same(_depth(load_grown(tmp_path).double().eval()), _depth(parent))


@pytest.mark.parametrize(("stage", "width"), WIDTHS)
@pytest.mark.parametrize("role", ["query", "key", "value"])
def test_pvt_v2_projection_is_refused_by_name(stage: int, width: int, role: str) -> None:
    """PVT-v2's forward reshapes the heads' context to the stream width: no wider head runs."""
    parent = _pvt()
    before = _state(parent)
    at = PVT.format(stage, role)
    with pytest.raises(MorphError, match=r"heads·head_dim = d_s") as refusal:
        widen(parent, at, width, seed=0)
    assert f"widening {at!r}: no exact child" in str(refusal.value)
    assert "PvtV2SelfAttention" in str(refusal.value)
    assert _unchanged(parent, before)


@pytest.mark.parametrize(
    ("family", "at", "width"),
    [
        ("SegFormer", SEG.format(1, "q"), 33),  # two heads: 33 is no whole number of heads
        ("SegFormer", SEG.format(1, "v"), 32),  # not wider
        ("SegFormer", SEG.format(0, "k"), 16),
        ("PVT-v2", PVT.format(1, "key"), 41),
    ],
)
def test_width_of_no_whole_heads_is_refused(family: str, at: str, width: int) -> None:
    parent = _segformer("eager") if family == "SegFormer" else _pvt()
    before = _state(parent)
    with pytest.raises(ValueError, match=rf"width={width}: {at!r} holds \d heads of head_dim 16"):
        widen(parent, at, width, seed=0)
    assert _unchanged(parent, before)
