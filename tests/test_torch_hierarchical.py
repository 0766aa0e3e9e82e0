"""Hierarchical vision transformers (SegFormer, PVT-v2): the transformer operations per stage,
and ``widen`` through the convolutions and transposes of their exported graphs.

Each case grows a tiny float64 model of two stages (widths 16 and 32, one block each, spatial
reduction 2 in stage 0; norm gains and biases redrawn so that they matter), checks that the
child computes the parent's logits (1e-9), that the parent is untouched, and that
``save_pretrained`` reloads it: with the stock ``from_pretrained`` where the config describes the
child, else the stock load refuses the marked model_type and ``load_grown`` rebuilds it.
:data:`OUTCOMES` is the table of ``docs/supported.md`` (``python tests/test_torch_hierarchical.py``
prints it; ``test_hierarchical_table_matches`` keeps the two the same).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import doc_tables
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from thirdparty import import_transformers
from torch import nn

from netmorph_core.torch import (
    MorphError,
    add_block,
    add_heads,
    deepen_projection,
    grow_ffn,
    grow_width,
    load_grown,
    widen,
)
from netmorph_core.torch.exported_consumers import plan_exported_widening
from netmorph_core.torch.hier_layout import hierarchy

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
#: family → (model class, config class, config arguments, a query projection of stage 0).
FAMILIES: dict[str, tuple[str, str, dict, str]] = {
    "SegFormer": (
        "SegformerForImageClassification",
        "SegformerConfig",
        STAGES,
        "segformer.stages.0.blocks.0.attention.q_proj",
    ),
    "PVT-v2": (
        "PvtV2ForImageClassification",
        "PvtV2Config",
        dict(STAGES, qkv_bias=True),
        "pvt_v2.encoder.layers.0.blocks.0.attention.query",
    ),
}
STOCK = "stock"
MARKED = "load_grown"
Op = Callable[[torch.nn.Module, str], tuple[torch.nn.Module, object]]
#: operation → what it does (given the model and its stage-0 query projection).
OPS: dict[str, Op] = {
    "grow_ffn": lambda m, _: grow_ffn(m, 128, seed=0),  # mlp_ratios [8, 4]
    "grow_ffn (no integer mlp_ratio)": lambda m, _: grow_ffn(m, 70, seed=0),
    "grow_ffn stage=1": lambda m, _: grow_ffn(m, 96, stage=1, seed=0),
    "add_heads": lambda m, _: add_heads(m, 4, seed=0),
    "add_heads stage=1": lambda m, _: add_heads(m, 3, stage=1, seed=0),
    "add_block": lambda m, _: add_block(m, 1, seed=0),
    "add_block stage=0 (zero)": lambda m, _: add_block(m, 1, stage=0, method="zero", seed=0),
    "grow_width x2": lambda m, _: grow_width(m, 64, seed=0),  # the last stage
    "grow_width stage=0 x3": lambda m, _: grow_width(m, 48, stage=0, seed=0),
    "grow_width 45": lambda m, _: grow_width(m, 45, seed=0),
    "deepen_projection": lambda m, q: deepen_projection(m, q, seed=0),
}
HEADS = "heads·head_dim = d_s"
WIDTH = "is not a multiple of stage 1's width 32"
#: (family, operation) → how the child reloads, or the refusal's message fragment.
OUTCOMES: dict[tuple[str, str], str] = {
    ("SegFormer", "grow_ffn"): STOCK,
    ("SegFormer", "grow_ffn (no integer mlp_ratio)"): MARKED,
    ("SegFormer", "grow_ffn stage=1"): STOCK,
    ("SegFormer", "add_heads"): MARKED,  # head_dim is derived: hidden / heads
    ("SegFormer", "add_heads stage=1"): MARKED,
    ("SegFormer", "add_block"): MARKED,  # the stochastic-depth schedule moves
    ("SegFormer", "add_block stage=0 (zero)"): MARKED,
    ("SegFormer", "grow_width x2"): STOCK,  # heads and mlp_ratios [2, 1] follow
    ("SegFormer", "grow_width stage=0 x3"): MARKED,  # 32 hidden units: no mlp_ratio of 48
    ("SegFormer", "grow_width 45"): WIDTH,
    ("SegFormer", "deepen_projection"): MARKED,
    ("PVT-v2", "grow_ffn"): STOCK,
    ("PVT-v2", "grow_ffn (no integer mlp_ratio)"): MARKED,
    ("PVT-v2", "grow_ffn stage=1"): STOCK,
    ("PVT-v2", "add_heads"): HEADS,
    ("PVT-v2", "add_heads stage=1"): HEADS,
    ("PVT-v2", "add_block"): STOCK,
    ("PVT-v2", "add_block stage=0 (zero)"): STOCK,
    ("PVT-v2", "grow_width x2"): STOCK,
    ("PVT-v2", "grow_width stage=0 x3"): MARKED,
    ("PVT-v2", "grow_width 45"): WIDTH,
    ("PVT-v2", "deepen_projection"): MARKED,
}


def _parent(family: str, cls: str | None = None) -> torch.nn.Module:
    """The family's tiny model, norm gains in [0.5, 1.5] and biases in [−0.2, 0.2]."""
    model_cls, config_cls, args, _ = FAMILIES[family]
    torch.manual_seed(0)
    config = getattr(transformers, config_cls)(**args)
    model = getattr(transformers, cls or model_cls)(config).eval().double()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 and "norm" in name and name.endswith("weight"):
                p.uniform_(0.5, 1.5)
            elif p.dim() == 1:
                p.uniform_(-0.2, 0.2)
    return model


def _pixels() -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(2, 3, 32, 32, generator=gen, dtype=torch.float64)


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


@pytest.mark.parametrize(("family", "op"), list(OUTCOMES))
def test_operation_is_exact_and_reloads(family: str, op: str, tmp_path: Path) -> None:
    parent = _parent(family)
    before = {k: v.clone() for k, v in parent.state_dict().items()}
    want = _logits(parent)
    outcome = OUTCOMES[family, op]
    if outcome not in (STOCK, MARKED):
        with pytest.raises(MorphError, match=outcome):
            OPS[op](parent, FAMILIES[family][3])
    else:
        child, report = OPS[op](parent, FAMILIES[family][3])
        torch.testing.assert_close(_logits(child), want, rtol=0, atol=1e-9)
        _reloads(child, report, outcome, want, tmp_path)
    assert all(torch.equal(before[k], v) for k, v in parent.state_dict().items())


@pytest.mark.parametrize("family", FAMILIES)
def test_grow_width_copies_the_stage_stream(family: str) -> None:
    """Stage 0, 16 → 32: the patch convolution's rows and every stream norm's gain twice, the
    next stage's patch convolution reads two column blocks summing to its weight, each block
    has twice the heads (head_dim 16 kept)."""
    parent = _parent(family)
    child, _ = grow_width(parent, 32, stage=0, seed=0)
    old, new = hierarchy(parent).stages, hierarchy(child).stages
    conv, conv0 = child.get_submodule(new[0].embed), parent.get_submodule(old[0].embed)
    assert torch.equal(conv.weight, torch.cat([conv0.weight] * 2))
    norm, norm0 = child.get_submodule(new[0].norm), parent.get_submodule(old[0].norm)
    assert torch.equal(norm.weight, torch.cat([norm0.weight] * 2))
    reader, reader0 = child.get_submodule(new[1].embed), parent.get_submodule(old[1].embed)
    total = reader.weight[:, :16] + reader.weight[:, 16:]
    torch.testing.assert_close(total, reader0.weight, rtol=0, atol=1e-15)
    assert not torch.equal(reader.weight[:, :16], reader.weight[:, 16:])
    assert [b.heads for b in new[0].layout.blocks] == [2]
    assert new[0].layout.blocks[0].head_dim == 16
    assert child.config.hidden_sizes == [32, 32] and child.config.num_attention_heads == [2, 2]


def test_grow_ffn_grows_the_depthwise_conv_by_whole_groups() -> None:
    """fc1 rows, depthwise channels (one group each) and fc2 columns grow together; the new
    channels of a cancelling pair share their kernel and their fc2 columns cancel."""
    parent = _parent("SegFormer")
    child, _ = grow_ffn(parent, 96, stage=1, seed=0)
    mlp, old = child.segformer.stages[1].blocks[0].mlp, parent.segformer.stages[1].blocks[0].mlp
    conv = mlp.dwconv.dwconv
    assert conv.weight.shape == (96, 1, 3, 3)
    assert conv.groups == conv.in_channels == conv.out_channels == 96
    assert torch.equal(conv.weight[:64], old.dwconv.dwconv.weight)
    assert torch.equal(conv.weight[64], conv.weight[65])
    assert torch.equal(mlp.fc1.weight[64], mlp.fc1.weight[65])
    torch.testing.assert_close(mlp.fc2.weight[:, 64], -mlp.fc2.weight[:, 65], rtol=0, atol=0)
    assert bool((mlp.fc2.weight[:, 64:] != 0).all())
    assert child.config.mlp_ratios == [2, 3]
    assert child.segformer.stages[0].blocks[0].mlp.fc1.out_features == 32  # stage 0 unchanged


def test_segmentation_model_operations_are_exact() -> None:
    """The decode head reads every stage; its output-capturing hooks only record."""
    parent = _parent("SegFormer", "SegformerForSemanticSegmentation")
    want = _logits(parent)
    for grow in (
        lambda m: grow_ffn(m, 128, seed=0),
        lambda m: add_heads(m, 4, seed=0),
        lambda m: add_block(m, 2, seed=0),
    ):
        child, _ = grow(parent)
        torch.testing.assert_close(_logits(child), want, rtol=0, atol=1e-9)


def test_layers_are_global_block_indices() -> None:
    """depths [2, 1]: global block 1 is stage 0's second, block 2 stage 1's first."""
    torch.manual_seed(0)
    config = transformers.SegformerConfig(**dict(STAGES, depths=[2, 1]))
    parent = transformers.SegformerForImageClassification(config).eval().double()
    child, _ = grow_ffn(parent, 48, layers=[1], seed=0)
    blocks = child.segformer.stages[0].blocks
    assert [b.mlp.fc1.out_features for b in blocks] == [32, 48]
    assert child.segformer.stages[1].blocks[0].mlp.fc1.out_features == 64  # ratio 2: unchanged
    child, _ = add_block(parent, 2, seed=0)  # before stage 1's first block
    assert [len(s.blocks) for s in child.segformer.stages] == [2, 2]
    assert child.config.depths == [2, 2]
    torch.testing.assert_close(_logits(child), _logits(parent), rtol=0, atol=1e-9)
    assert [s.depth for s in hierarchy(parent).stages] == [2, 1]


def test_add_block_counts_the_stage_in_a_longer_depths_list(tmp_path: Path) -> None:
    """A config whose per-stage lists are longer than its stages (num_encoder_blocks 2, four
    depths: the stock model reads the first two): the stage's depth still grows, and the child
    reloads with the stock class."""
    torch.manual_seed(0)
    args = dict(STAGES, depths=[1, 1, 1, 1], drop_path_rate=0.0)
    config = transformers.SegformerConfig(**args)
    parent = transformers.SegformerForImageClassification(config).eval().double()
    child, report = add_block(parent, 1, seed=0)
    assert child.config.depths == [1, 2, 1, 1]
    assert any("reloads this child exactly" in n for n in report.notes), report.notes
    child.save_pretrained(tmp_path)
    reloaded = transformers.SegformerForImageClassification.from_pretrained(tmp_path)
    torch.testing.assert_close(
        _logits(reloaded.double().eval()), _logits(parent), rtol=0, atol=1e-9
    )


@pytest.mark.parametrize(
    "grow",
    [
        lambda m: grow_ffn(m, 80, seed=0),
        lambda m: add_heads(m, 4, seed=0),
        lambda m: add_block(m, 1, seed=0),
        lambda m: grow_width(m, 64, seed=0),
    ],
)
def test_glpn_parallel_stage_lists(grow, tmp_path: Path) -> None:
    """GLPN keeps SegFormer's encoder as three parallel lists (patch embeddings, block lists,
    final norms) and its attention one level down (``attention.self``, ``attention.output``);
    the depth decoder reads every stage."""
    torch.manual_seed(0)
    args = {k: v for k, v in STAGES.items() if k != "num_labels"}
    config = transformers.GLPNConfig(**args, decoder_hidden_size=16)
    parent = transformers.GLPNForDepthEstimation(config).eval().double()
    with torch.no_grad():
        want = parent(_pixels()).predicted_depth
    child, _ = grow(parent)
    child.save_pretrained(tmp_path)
    for model in (child, load_grown(tmp_path)):
        with torch.no_grad():
            got = model(_pixels()).predicted_depth
        torch.testing.assert_close(got, want, rtol=0, atol=1e-9 * float(want.abs().max()))
    assert [s.blocks for s in hierarchy(parent).stages] == [
        "glpn.encoder.block.0",
        "glpn.encoder.block.1",
    ]


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda m: grow_ffn(m, 80, layers=0, stage=0), ValueError, "not both"),
        (lambda m: grow_ffn(m, 80, stage=2), ValueError, r"distinct stage indices in \[0, 2\)"),
        (lambda m: grow_ffn(m, 80, layers=[0, 0]), ValueError, "distinct global block"),
        (lambda m: grow_ffn(m, 32), ValueError, "must exceed the feed-forward hidden size 64"),
        (lambda m: grow_ffn(m, 80, shared_width=8), ValueError, "shared_width"),
        (lambda m: add_heads(m, 2), ValueError, "must exceed the 2 heads"),
        (lambda m: add_heads(m, 4, kv_heads=2), MorphError, "multi-head"),
        (lambda m: add_block(m, 3), ValueError, r"global block index in \[0, 2\]"),
        (lambda m: add_block(m, 2, stage=1), ValueError, r"\[0, 1\] of stage 1"),
        (lambda m: grow_width(m, 16, stage=0), ValueError, "must exceed stage 0's width 16"),
        (lambda m: grow_width(m, 64, stage=2), ValueError, r"stage index in \[0, 2\)"),
    ],
)
def test_bad_arguments_are_refused_before_any_work(call, error, message) -> None:
    parent = _parent("SegFormer")
    before = {k: v.clone() for k, v in parent.state_dict().items()}
    with pytest.raises(error, match=message):
        call(parent)
    assert all(torch.equal(before[k], v) for k, v in parent.state_dict().items())


def test_stage_on_a_flat_model_is_refused() -> None:
    config = transformers.ViTConfig(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, image_size=8, patch_size=4
    )
    vit = transformers.ViTForImageClassification(config).eval()
    with pytest.raises(ValueError, match="stage=0: ViTForImageClassification has no stages"):
        add_block(vit, 0, stage=0)


# ---------------------------------------------------------------------------------------------
# widen in the exported graph: channels at axis 1 (N, C, …), convolutions, depthwise convs

#: (family, layer, extra channels) → the refusal's message fragment, or None: exact.
WIDEN: dict[tuple[str, str, int], str | None] = {
    ("SegFormer", "segformer.stages.0.blocks.0.mlp.fc1", 4): None,  # → dwconv → fc2
    ("SegFormer", "segformer.stages.1.blocks.0.mlp.fc1", 2): None,
    ("SegFormer", "segformer.stages.1.blocks.0.mlp.dwconv.dwconv", 64): None,  # 2 outputs/group
    ("PVT-v2", "pvt_v2.encoder.layers.0.blocks.0.mlp.dense1", 4): None,
    ("PVT-v2", "pvt_v2.encoder.layers.0.blocks.0.mlp.dwconv.dwconv", 64): None,
    ("SegFormer", "segformer.stages.0.patch_embeddings.proj", 4): (
        r"aten\.layer_norm .*patch_embeddings\.layer_norm.* normalises over the widened"
    ),
    ("PVT-v2", "pvt_v2.encoder.layers.0.blocks.0.attention.spatial_reduction", 4): (
        r"aten\.layer_norm .*attention\.layer_norm.* normalises over the widened"
    ),
    ("SegFormer", "segformer.stages.0.blocks.0.attention.q_proj", 4): None,  # head_dim 16 → 20
    ("PVT-v2", "pvt_v2.encoder.layers.0.blocks.0.attention.query", 4): (
        r"no exact child .*PvtV2SelfAttention.*heads·head_dim = d_s"
    ),
}


@pytest.mark.parametrize(("family", "at", "extra"), list(WIDEN))
@pytest.mark.parametrize("zero_side", ["inner", "outer"])
def test_widen_follows_the_mix_ffn(family: str, at: str, extra: int, zero_side: str) -> None:
    parent = _parent(family)
    before = {k: v.clone() for k, v in parent.state_dict().items()}
    width = parent.get_submodule(at).weight.shape[0] + extra
    message = WIDEN[family, at, extra]
    if message is not None:
        with pytest.raises(MorphError, match=message):
            widen(parent, at, width, zero_side=zero_side, probe=(_pixels(),), seed=0)
    else:
        child, _ = widen(parent, at, width, zero_side=zero_side, probe=(_pixels(),), seed=0)
        assert child.get_submodule(at).weight.shape[0] == width
        torch.testing.assert_close(_logits(child), _logits(parent), rtol=0, atol=1e-9)
    assert all(torch.equal(before[k], v) for k, v in parent.state_dict().items())


def test_widen_grows_the_depthwise_conv_by_whole_groups() -> None:
    """fc1 24 → 36 in stage 0: the depthwise conv gets 4 new groups (one channel each)."""
    parent = _parent("SegFormer")
    child, _ = widen(parent, "segformer.stages.0.blocks.0.mlp.fc1", 36, probe=(_pixels(),))
    conv = child.segformer.stages[0].blocks[0].mlp.dwconv.dwconv
    assert conv.weight.shape == (36, 1, 3, 3)
    assert conv.groups == conv.in_channels == conv.out_channels == 36
    assert child.segformer.stages[0].blocks[0].mlp.fc2.in_features == 36


class _Mixer(nn.Module):
    """Linear → (N, C, L) → ``conv`` → back to channels last → ``out``; ``move="permute"``
    moves the channels to axis 2 instead."""

    def __init__(self, conv: nn.Module, move: str = "transpose") -> None:
        super().__init__()
        self.proj, self.conv = nn.Linear(4, 6), conv
        self.out = nn.Linear(getattr(conv, "out_channels", 6), 3)
        self.move = move

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj(x)  # (N, L, 6)
        if self.move == "permute":
            return h.unsqueeze(1).permute(0, 2, 3, 1).sum()  # channels to axis 2 of 4
        return self.out(F.gelu(self.conv(h.transpose(1, 2))).transpose(1, 2))


def _src(channels: int, width: int) -> np.ndarray:
    return np.concatenate([np.arange(channels), -np.ones(width - channels, int)])


@pytest.mark.parametrize(
    ("conv", "kinds", "out"),
    [
        (nn.Conv1d(6, 5, 3, padding=1), [("conv", "conv")], None),
        (nn.Conv1d(6, 6, 3, padding=1, groups=6), [("conv", "grouped"), ("out", "linear")], 8),
        (nn.Conv1d(6, 12, 3, padding=1, groups=6), [("conv", "grouped"), ("out", "linear")], 16),
    ],
)
def test_exported_walk_follows_channels_at_axis_1(conv, kinds, out) -> None:
    plan = plan_exported_widening(_Mixer(conv), ["proj"], _src(6, 8), torch.randn(2, 5, 4))
    assert [(u.name, u.kind) for u in plan.uses] == kinds
    if out is not None:  # the depthwise conv's new groups go on as new channels
        assert plan.uses[1].flow.src.size == out
        assert plan.uses[1].flow.parent_channels == conv.out_channels


@pytest.mark.parametrize(
    ("module", "match"),
    [
        (
            _Mixer(nn.Identity(), "permute"),
            r"aten\.permute .* moves the widened channels off the last axis \(to axis 2 of 4\)",
        ),
        (
            _Mixer(nn.Conv1d(6, 6, 3, padding=1, groups=3)),
            r"grouped convolution \(groups=3, 2 input channels per group\)",
        ),
    ],
)
def test_exported_walk_refuses_channels_it_cannot_follow(module: nn.Module, match: str) -> None:
    with pytest.raises(MorphError, match=match):
        plan_exported_widening(
            module, ["proj"], np.array([0, 1, -1, 2, 3, 4, 5]), torch.randn(2, 5, 4)
        )


class _ConvThenLinear(nn.Module):
    """A convolution whose (N, C, H, W) output a Linear reads along W, or (``flat``) reads
    flattened."""

    def __init__(self, flat: bool) -> None:
        super().__init__()
        self.conv, self.out = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(100 if flat else 5, 2)
        self.flat = flat

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        return self.out(h.reshape(h.shape[0], -1) if self.flat else h)


@pytest.mark.parametrize(
    ("flat", "match"),
    [
        (False, r"Linear layer reading a tensor whose widened channels are on axis 1"),
        (True, r"reshapes the widened tensor \(2, 4, 5, 5\) to \(2, 100\), which does not"),
    ],
)
def test_exported_walk_refuses_linear_reads_of_a_conv_output(flat: bool, match: str) -> None:
    module = _ConvThenLinear(flat)
    with pytest.raises(MorphError, match=match):
        plan_exported_widening(module, ["conv"], _src(4, 6), torch.randn(2, 3, 5, 5))


def _cell(outcome: str) -> str:
    if outcome == STOCK:
        return "exact, stock reload"
    if outcome == MARKED:
        return "exact, `load_grown`"
    return f"refused: “{outcome}”"


def table() -> str:
    """The markdown family × operation table of :data:`OUTCOMES`."""
    return doc_tables.table(
        "hierarchical", "test_torch_hierarchical.py", "family", FAMILIES, OPS, OUTCOMES, cell=_cell
    )


def test_hierarchical_table_matches() -> None:
    """docs/supported.md holds the table these tests assert, unchanged."""
    doc_tables.check("hierarchical", "test_torch_hierarchical.py", table())


if __name__ == "__main__":
    print(table())
