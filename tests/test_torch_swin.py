"""Swin transformers (Hugging Face Swin and Swin-v2, torchvision's v1 and v2, timm's): the
transformer operations per block and stage.

Each case grows a tiny float64 model of two stages (widths 16 and 32, two blocks each, heads
[2, 4], windows 4×4 on 32×32 images, so stage 0's odd block attends in shifted windows; norm
gains and biases, relative position bias tables and logit scales redrawn so that they matter),
checks that the child computes the parent's output (1e-9), that the parent is untouched and,
for a Hugging Face model, that ``save_pretrained`` reloads it: with the stock
``from_pretrained`` where the config describes the child, else the stock load refuses the
marked model_type and ``load_grown`` rebuilds it. torchvision's and timm's models are plain
modules: the child's own attributes describe it. :data:`OUTCOMES` is the table of
``docs/supported.md`` (``python tests/test_torch_swin.py`` prints it;
``test_swin_table_matches`` keeps the two the same).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import doc_tables
import pytest
import torch
from thirdparty import import_timm, import_torchvision, import_transformers

from netmorph_core.torch import (
    MorphError,
    add_block,
    add_heads,
    grow_ffn,
    grow_width,
    load_grown,
    widen,
)
from netmorph_core.torch.swin_layout import find_swin, swin_layout

try:
    transformers = import_transformers()
    tv = import_torchvision()
    timm = import_timm()
except ImportError:  # pragma: no cover - the test extra installs them
    pytest.skip("transformers, torchvision or timm is not installed", allow_module_level=True)

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

HF = dict(image_size=32, patch_size=4, embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=4)
TV = dict(patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=[4, 4])


def _tv_v2() -> torch.nn.Module:
    swin = tv.models.swin_transformer
    return swin.SwinTransformer(
        **TV, block=swin.SwinTransformerBlockV2, downsample_layer=swin.PatchMergingV2
    )


#: family → a builder of the tiny model.
FAMILIES: dict[str, Callable[[], torch.nn.Module]] = {
    "Swin": lambda: transformers.SwinForImageClassification(
        transformers.SwinConfig(**HF, num_labels=3)
    ),
    "Swin-v2": lambda: transformers.Swinv2ForImageClassification(
        transformers.Swinv2Config(**HF, num_labels=3)
    ),
    "torchvision swin_t": lambda: tv.models.SwinTransformer(**TV, num_classes=3),
    "torchvision swin_v2_t": _tv_v2,
    "timm swin": lambda: timm.create_model(
        "swin_tiny_patch4_window7_224",
        img_size=32,
        window_size=4,
        embed_dim=16,
        depths=(2, 2),
        num_heads=(2, 4),
        num_classes=3,
    ),
}
STOCK = "stock"
MARKED = "load_grown"
PLAIN = "plain"
#: family → (stage 0's shifted block's query projection or fused q|k|v, its width at head_dim
#: 10).
QUERY: dict[str, tuple[str, int]] = {
    "Swin": ("swin.encoder.layers.0.blocks.1.attention.q_proj", 20),
    "Swin-v2": ("swinv2.encoder.layers.0.blocks.1.attention.self.query", 20),
    "torchvision swin_t": ("features.1.1.attn.qkv", 60),
    "torchvision swin_v2_t": ("features.1.1.attn.qkv", 60),
    "timm swin": ("layers.0.blocks.1.attn.qkv", 60),
}
Op = Callable[[torch.nn.Module, tuple[str, int]], tuple[torch.nn.Module, object]]
#: operation → what it does (given the model and its query projection).
OPS: dict[str, Op] = {
    "grow_ffn": lambda m, _: grow_ffn(m, 96, seed=0),  # stage 0's blocks (64 → 96)
    "grow_ffn layers=[0, 1]": lambda m, _: grow_ffn(m, 128, layers=[0, 1], seed=0),
    "grow_ffn stage=1": lambda m, _: grow_ffn(m, 160, stage=1, seed=0),
    "add_heads": lambda m, _: add_heads(m, 8, seed=0),
    "add_block (shifted)": lambda m, _: add_block(m, 1, seed=0),
    "add_block stage=1 end": lambda m, _: add_block(m, 2, stage=1, seed=0),
    "add_block (zero)": lambda m, _: add_block(m, 0, method="zero", seed=0),
    "grow_width x2": lambda m, _: grow_width(m, 64, seed=0),  # the last stage
    "grow_width stage=0 x3": lambda m, _: grow_width(m, 48, stage=0, seed=0),
    "grow_width 45": lambda m, _: grow_width(m, 45, seed=0),
    "widen q (head_dim 10)": lambda m, q: widen(m, q[0], q[1], seed=0),
}
HEAD_SIZE = "records no head size and passes its projections' weights to a functional"
READS = "reads qkv.bias, qkv.weight directly"
NO_WIDTH = "45 is not a multiple of stage 1's width 32"
#: Hugging Face: one global mlp_ratio (stages differ), head_dim derived as d_s / heads, and
#: after add_block the stochastic-depth schedule moves and later blocks keep their shifts.
_HF_OUTCOMES = {**{op: MARKED for op in OPS}, "grow_width 45": NO_WIDTH}
_PLAIN_OUTCOMES = {**{op: PLAIN for op in OPS}, "grow_width 45": NO_WIDTH}
#: (family, operation) → how the child reloads, or the refusal's message fragment.
OUTCOMES: dict[tuple[str, str], str] = {
    **{("Swin", op): o for op, o in _HF_OUTCOMES.items()},
    **{("Swin-v2", op): o for op, o in _HF_OUTCOMES.items()},
    **{("torchvision swin_t", op): o for op, o in _PLAIN_OUTCOMES.items()},
    **{("torchvision swin_v2_t", op): o for op, o in _PLAIN_OUTCOMES.items()},
    **{("timm swin", op): o for op, o in _PLAIN_OUTCOMES.items()},
}
OUTCOMES["torchvision swin_t", "add_heads"] = HEAD_SIZE
OUTCOMES["torchvision swin_v2_t", "add_heads"] = HEAD_SIZE
OUTCOMES["Swin-v2", "widen q (head_dim 10)"] = "is a cosine attention"
OUTCOMES["torchvision swin_t", "widen q (head_dim 10)"] = READS
OUTCOMES["torchvision swin_v2_t", "widen q (head_dim 10)"] = READS


def _parent(family: str) -> torch.nn.Module:
    """The family's tiny model: norm gains in [0.5, 1.5], other vectors in [−0.2, 0.2],
    position bias tables N(0, 0.5²), logit scales in [1, 3]."""
    torch.manual_seed(0)
    model = FAMILIES[family]().eval().double()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("relative_position_bias_table"):
                p.normal_(0.0, 0.5)
            elif name.endswith("logit_scale"):
                p.uniform_(1.0, 3.0)
            elif p.dim() == 1 and "norm" in name and name.endswith("weight"):
                p.uniform_(0.5, 1.5)
            elif p.dim() == 1:
                p.uniform_(-0.2, 0.2)
    return model


def _pixels() -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(2, 3, 32, 32, generator=gen, dtype=torch.float64)


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        out = model(_pixels())
    return getattr(out, "logits", out)


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
        reloaded = load_grown(path, dtype=torch.float64)
    torch.testing.assert_close(_logits(reloaded), want, rtol=0, atol=1e-9)


@pytest.mark.parametrize(("family", "op"), list(OUTCOMES))
def test_operation_is_exact_and_reloads(family: str, op: str, tmp_path: Path) -> None:
    parent = _parent(family)
    before = {k: v.clone() for k, v in parent.state_dict().items()}
    want = _logits(parent)
    outcome = OUTCOMES[family, op]
    if outcome not in (STOCK, MARKED, PLAIN):
        with pytest.raises(MorphError, match=outcome):
            OPS[op](parent, QUERY[family])
    else:
        child, report = OPS[op](parent, QUERY[family])
        assert not child.training
        torch.testing.assert_close(_logits(child), want, rtol=0, atol=1e-9)
        if outcome != PLAIN:
            _reloads(child, report, outcome, want, tmp_path)
    assert all(torch.equal(before[k], v) for k, v in parent.state_dict().items())


@pytest.mark.parametrize("family", FAMILIES)
def test_layout_is_found_by_structure(family: str) -> None:
    """Two stages of widths 16 and 32 with heads [2, 2] and [4, 4] of head_dim 8; stage 0's
    second block is shifted; v2 (a logit scale and a bias MLP) is post-norm."""
    sw = swin_layout(_parent(family))
    assert sw is not None
    assert [s.width for s in sw.stages] == [16, 32]
    assert [[b.heads for b in s.layout.blocks] for s in sw.stages] == [[2, 2], [4, 4]]
    assert {b.head_dim for s in sw.stages for b in s.layout.blocks} == {8}
    assert sw.stages[0].shifted == (False, True)
    v2 = "v2" in family
    assert sw.stages[0].post_norm == v2 and bool(sw.stages[0].cpb) == v2
    assert bool(sw.stages[0].table) != v2


def test_global_attention_with_a_bias_table_is_not_swin() -> None:
    """BEiT's blocks hold a relative position bias table but no window shift: not Swin."""
    config = transformers.BeitConfig(
        hidden_size=32,
        num_attention_heads=4,
        intermediate_size=64,
        num_hidden_layers=2,
        image_size=32,
        patch_size=8,
        use_relative_position_bias=True,
    )
    assert find_swin(transformers.BeitForImageClassification(config)) == []


def test_add_heads_gives_each_cancelling_pair_one_bias_column() -> None:
    """Swin, 2 → 4 heads in stage 0: the parent's table columns stay, the new pair shares one
    new column, q rows and k rows; their output columns cancel."""
    parent = _parent("Swin")
    child, _ = add_heads(parent, 4, stage=0, seed=0)
    old = parent.swin.encoder.layers[0].blocks[0].attention
    att = child.swin.encoder.layers[0].blocks[0].attention
    table = att.relative_position_bias.relative_position_bias_table
    assert table.shape == (49, 4)
    assert torch.equal(table[:, :2], old.relative_position_bias.relative_position_bias_table)
    assert torch.equal(table[:, 2], table[:, 3]) and not torch.equal(table[:, 2], table[:, 0])
    assert torch.equal(att.q_proj.weight[16:24], att.q_proj.weight[24:32])
    assert torch.equal(att.k_proj.weight[16:24], att.k_proj.weight[24:32])
    torch.testing.assert_close(att.o_proj.weight[:, 16:24], -att.o_proj.weight[:, 24:32])
    assert child.swin.encoder.layers[1].blocks[0].attention.q_proj.out_features == 32


def test_add_heads_v2_grows_the_bias_mlp_and_logit_scale() -> None:
    """Swin-v2, 2 → 4 heads in stage 0: the bias MLP's last layer gets one shared row per new
    pair, the logit scale one shared entry."""
    parent = _parent("Swin-v2")
    child, _ = add_heads(parent, 4, stage=0, seed=0)
    att = child.swinv2.encoder.layers[0].blocks[1].attention.self
    last = att.continuous_position_bias_mlp[2].weight
    assert last.shape == (4, 512)
    assert torch.equal(last[2], last[3]) and not torch.equal(last[2], last[0])
    assert att.logit_scale.shape == (4, 1, 1) and torch.equal(
        att.logit_scale[2], att.logit_scale[3]
    )


def test_add_block_takes_the_shift_of_its_position() -> None:
    """timm, a block at stage 0's position 1 is shifted (copied from block 1, its mask too);
    the old block 1, now 2, keeps its shift; at position 0 the new block is unshifted."""
    parent = _parent("timm swin")
    child, report = add_block(parent, 1, seed=0)
    assert [b.shift_size for b in child.layers[0].blocks] == [(0, 0), (2, 2), (2, 2)]
    assert any("keep their own shifts" in n for n in report.notes)
    child, _ = add_block(parent, 0, seed=0)
    assert [b.shift_size for b in child.layers[0].blocks] == [(0, 0), (0, 0), (2, 2)]


def test_one_block_stage_gets_a_shifted_copy(tmp_path: Path) -> None:
    """depths [1, 1]: a block at stage 0's position 1 is a copy of block 0 with half-window
    shifts (Hugging Face: as the stock model of depths [2, 1] builds it, the stochastic depth
    schedule apart, so it reloads with load_grown);
    timm's blocks keep a precomputed mask slot and are refused by name."""
    torch.manual_seed(0)
    config = transformers.SwinConfig(**dict(HF, depths=[1, 1], num_heads=[2, 2]), num_labels=3)
    parent = transformers.SwinForImageClassification(config).eval().double()
    want = _logits(parent)
    child, report = add_block(parent, 1, stage=0, seed=0)
    assert [b.shift_size for b in child.swin.encoder.layers[0].blocks] == [0, 2]
    torch.testing.assert_close(_logits(child), want, rtol=0, atol=1e-9)
    _reloads(child, report, MARKED, want, tmp_path)
    small = timm.create_model(
        "swin_tiny_patch4_window7_224", img_size=32, window_size=4, embed_dim=16, depths=(1, 1)
    )
    with pytest.raises(MorphError, match="its mask is precomputed: attn_mask"):
        add_block(small.eval().double(), 1, stage=0, seed=0)


def test_add_block_v2_zeroes_the_branch_norms() -> None:
    """Swin-v2's new block is its neighbour with both branch norms of zero gain and bias."""
    parent = _parent("Swin-v2")
    child, _ = add_block(parent, 2, stage=1, seed=0)
    new = child.swinv2.encoder.layers[1].blocks[2]
    for norm in (new.layernorm_before, new.layernorm_after):
        assert not norm.weight.any() and not norm.bias.any()
    assert child.config.depths == [2, 3]


@pytest.mark.parametrize("family", ["Swin", "torchvision swin_t"])
def test_grow_width_follows_the_patch_merging(family: str) -> None:
    """Stage 0, 16 → 32: the merging's LayerNorm(64 → 128) repeats each neighbour's block of γ
    (k = 2), its reduction reads two column blocks per neighbour summing to the parent's; the
    blocks have twice the heads (head_dim 8 kept) and twice the table columns."""
    parent = _parent(family)
    child, _ = grow_width(parent, 32, stage=0, seed=0)
    merge = "swin.encoder.layers.0.downsample" if family == "Swin" else "features.2"
    old, new = parent.get_submodule(merge), child.get_submodule(merge)
    gain = new.norm.weight.reshape(4, 2, 16)
    assert torch.equal(gain[:, 0], old.norm.weight.reshape(4, 16))
    assert torch.equal(gain[:, 1], gain[:, 0])
    w = new.reduction.weight.reshape(32, 4, 2, 16)
    total = (w[:, :, 0] + w[:, :, 1]).reshape(32, 64)
    torch.testing.assert_close(total, old.reduction.weight, rtol=0, atol=1e-15)
    sw = swin_layout(child)
    assert [b.heads for b in sw.stages[0].layout.blocks] == [4, 4]
    assert {b.head_dim for b in sw.stages[0].layout.blocks} == {8}


def test_refusals_name_the_argument() -> None:
    parent = _parent("Swin")
    with pytest.raises(ValueError, match="must exceed the 4 heads"):
        add_heads(parent, 4, seed=0)
    with pytest.raises(MorphError, match="kv_heads=2"):
        add_heads(parent, 8, kv_heads=2, seed=0)
    with pytest.raises(ValueError, match="must exceed the MLP hidden size 128"):
        grow_ffn(parent, 100, stage=1, seed=0)
    with pytest.raises(ValueError, match="at must be a block index in"):
        add_block(parent, 3, stage=1, seed=0)


def _cell(outcome: str) -> str:
    if outcome == STOCK:
        return "exact, stock reload"
    if outcome == MARKED:
        return "exact, `load_grown`"
    if outcome == PLAIN:
        return "exact"
    return f"refused: “{outcome}”"


def table() -> str:
    """The markdown family × operation table of :data:`OUTCOMES`."""
    return doc_tables.table(
        "swin", "test_torch_swin.py", "family", FAMILIES, OPS, OUTCOMES, cell=_cell
    )


def test_swin_table_matches() -> None:
    """docs/supported.md holds the table these tests assert, unchanged."""
    doc_tables.check("swin", "test_torch_swin.py", table())


if __name__ == "__main__":
    print(table())
