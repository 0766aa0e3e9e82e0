"""Hierarchical vision transformers (SegFormer, PVT-v2): the transformer operations per stage.

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

import pytest
import torch
from thirdparty import import_transformers

from netmorph_core.torch import (
    MorphError,
    add_block,
    add_heads,
    deepen_projection,
    grow_ffn,
    grow_width,
    load_grown,
)
from netmorph_core.torch.hier_layout import hierarchy

try:
    transformers = import_transformers()
except ImportError:  # pragma: no cover - the test extra installs it
    pytest.skip("transformers is not installed", allow_module_level=True)

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

DOC = Path(__file__).resolve().parent.parent / "docs" / "supported.md"
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
    "deepen_projection": lambda m, q: deepen_projection(m, q, seed=0),
}
HEADS = "heads·head_dim = d_s"
WIDTH = "grow_width does not widen a stage's stream"
#: (family, operation) → how the child reloads, or the refusal's message fragment.
OUTCOMES: dict[tuple[str, str], str] = {
    ("SegFormer", "grow_ffn"): STOCK,
    ("SegFormer", "grow_ffn (no integer mlp_ratio)"): MARKED,
    ("SegFormer", "grow_ffn stage=1"): STOCK,
    ("SegFormer", "add_heads"): MARKED,  # head_dim is derived: hidden / heads
    ("SegFormer", "add_heads stage=1"): MARKED,
    ("SegFormer", "add_block"): MARKED,  # the stochastic-depth schedule moves
    ("SegFormer", "add_block stage=0 (zero)"): MARKED,
    ("SegFormer", "deepen_projection"): MARKED,
    ("PVT-v2", "grow_ffn"): STOCK,
    ("PVT-v2", "grow_ffn (no integer mlp_ratio)"): MARKED,
    ("PVT-v2", "grow_ffn stage=1"): STOCK,
    ("PVT-v2", "add_heads"): HEADS,
    ("PVT-v2", "add_heads stage=1"): HEADS,
    ("PVT-v2", "add_block"): STOCK,
    ("PVT-v2", "add_block stage=0 (zero)"): STOCK,
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
@pytest.mark.parametrize("d_model", [45, 64])
def test_grow_width_is_refused_by_name(family: str, d_model: int) -> None:
    with pytest.raises(MorphError, match=WIDTH):
        grow_width(_parent(family), d_model)


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
    with pytest.raises(ValueError, match="stage=0: ViTForImageClassification is not a hier"):
        add_block(vit, 0, stage=0)


START = "<!-- hierarchical table: generated by tests/test_torch_hierarchical.py -->"
END = "<!-- end of hierarchical table -->"


def _cell(outcome: str) -> str:
    if outcome == STOCK:
        return "exact, stock reload"
    if outcome == MARKED:
        return "exact, `load_grown`"
    return f"refused: “{outcome}”"


def table() -> str:
    """The markdown family × operation table of :data:`OUTCOMES`."""
    lines = [
        "| family | " + " | ".join(f"`{op}`" for op in OPS) + " |",
        "| --- |" + " --- |" * len(OPS),
    ]
    for family in FAMILIES:
        cells = " | ".join(_cell(OUTCOMES[family, op]) for op in OPS)
        lines.append(f"| {family} | {cells} |")
    return "\n".join([START, *lines, END])


def test_hierarchical_table_matches() -> None:
    """docs/supported.md holds the table these tests assert, unchanged."""
    text = DOC.read_text()
    assert START in text and END in text, f"{DOC} lacks the generated hierarchical table"
    found = text[text.index(START) : text.index(END) + len(END)]
    assert found == table(), "regenerate it: python tests/test_torch_hierarchical.py"


if __name__ == "__main__":
    print(table())
