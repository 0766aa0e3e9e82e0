"""ConvNeXt (Hugging Face ConvNeXt and ConvNeXt V2, torchvision, timm): the block-level
operations per stage, on blocks recognised by structure.

Each case grows a tiny float64 model of two stages (widths 8 and 16, one block each; every
per-channel parameter redrawn so that it matters: norm gains, layer scales and GRN gains in
[0.5, 1.5], biases in [−0.2, 0.2]), checks that the child computes the parent's logits
(1e-9) and that the parent is untouched, and how the child reloads: a Hugging Face child
through ``save_pretrained`` with the stock ``from_pretrained`` where the config describes it,
else the stock load refuses the marked model_type and ``load_grown`` rebuilds it; a torchvision
or timm child's ``state_dict`` loads strictly into the library's constructor given the child's
depths and widths where that constructor describes it (its MLP is fixed at 4·d), else it does
not. :data:`OUTCOMES` is the ConvNeXt table of ``docs/supported.md`` (``python
tests/test_torch_convnext.py`` prints it; ``test_convnext_table_matches`` keeps the two the
same).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import doc_tables
import pytest
import torch
from thirdparty import import_timm, import_torchvision, import_transformers
from torch import nn

from netmorph_core.torch import (
    MorphError,
    add_block,
    add_heads,
    grow_ffn,
    grow_width,
    load_grown,
)
from netmorph_core.torch.convnext import recognise

try:
    transformers = import_transformers()
    timm = import_timm()
    torchvision = import_torchvision()
except ImportError:  # pragma: no cover - the test extra installs them
    pytest.skip("transformers, timm or torchvision is not installed", allow_module_level=True)

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

HF_STAGES = dict(num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], num_labels=3)


def _hf(model: str, config: str, **extra: object) -> Callable[[list[int], list[int]], nn.Module]:
    def build(depths: list[int], widths: list[int]) -> nn.Module:
        args = dict(HF_STAGES, depths=depths, hidden_sizes=widths, **extra)
        return getattr(transformers, model)(getattr(transformers, config)(**args))

    return build


def _torchvision(depths: list[int], widths: list[int]) -> nn.Module:
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt

    nxt = [*widths[1:], None]
    setting = [CNBlockConfig(w, n, d) for w, n, d in zip(widths, nxt, depths)]
    return ConvNeXt(setting, num_classes=3)


def _timm(**extra: object) -> Callable[[list[int], list[int]], nn.Module]:
    """timm's ConvNeXt has four stages: the last two here have no blocks (only their
    downsampling norm and convolution, 16 channels)."""

    def build(depths: list[int], widths: list[int]) -> nn.Module:
        from timm.models.convnext import ConvNeXt

        dims = (*widths, 16, 16)
        return ConvNeXt(depths=(*depths, 0, 0), dims=dims, num_classes=3, **extra)

    return build


#: family → its constructor from (depths, widths).
FAMILIES: dict[str, Callable[[list[int], list[int]], nn.Module]] = {
    "HF ConvNeXt": _hf("ConvNextForImageClassification", "ConvNextConfig"),
    "HF ConvNeXt V2 (GRN)": _hf("ConvNextV2ForImageClassification", "ConvNextV2Config"),
    "torchvision ConvNeXt": _torchvision,
    "timm ConvNeXt (conv MLP)": _timm(conv_mlp=True),
    "timm ConvNeXt V2 (GRN)": _timm(use_grn=True, ls_init_value=None),
}
Op = Callable[[nn.Module], tuple[nn.Module, object]]
#: operation → what it does (hidden sizes 32 and 64).
OPS: dict[str, Op] = {
    "grow_ffn": lambda m: grow_ffn(m, 128, seed=0),
    "grow_ffn stage=0 to 40": lambda m: grow_ffn(m, 40, stage=0, seed=0),
    "add_block": lambda m: add_block(m, 1, seed=0),  # before stage 1's first block
    "add_block stage=0 (zero)": lambda m: add_block(m, 1, stage=0, method="zero", seed=0),
    "grow_width x2": lambda m: grow_width(m, 32, seed=0),  # the last stage
    "grow_width stage=0 x3": lambda m: grow_width(m, 24, stage=0, seed=0),
    "grow_width 20": lambda m: grow_width(m, 20, seed=0),
    "add_heads": lambda m: add_heads(m, 2, seed=0),
}
STOCK = "stock"
MARKED = "load_grown"
REBUILT = "constructor"
WHOLE = "whole"
GRN = "is not a multiple of the hidden size 32"
WIDTH = "is not a multiple of stage 1's width 16"
HEADS = "have no attention heads"
#: operation → outcome for (Hugging Face ConvNeXt, its V2, a plain module, its GRN variant).
_BY_OP: dict[str, tuple[str, str, str, str]] = {
    "grow_ffn": (MARKED, MARKED, WHOLE, WHOLE),
    "grow_ffn stage=0 to 40": (MARKED, GRN, WHOLE, GRN),
    "add_block": (STOCK, STOCK, REBUILT, REBUILT),
    "add_block stage=0 (zero)": (STOCK, STOCK, REBUILT, REBUILT),
    "grow_width x2": (STOCK, STOCK, REBUILT, REBUILT),
    "grow_width stage=0 x3": (STOCK, STOCK, REBUILT, REBUILT),
    "grow_width 20": (WIDTH, WIDTH, WIDTH, WIDTH),
    "add_heads": (HEADS, HEADS, HEADS, HEADS),
}
_COLUMN = {
    "HF ConvNeXt": 0,
    "HF ConvNeXt V2 (GRN)": 1,
    "torchvision ConvNeXt": 2,
    "timm ConvNeXt (conv MLP)": 2,
    "timm ConvNeXt V2 (GRN)": 3,
}
#: (family, operation) → how the child reloads, or the refusal's message fragment.
OUTCOMES: dict[tuple[str, str], str] = {
    (family, op): _BY_OP[op][_COLUMN[family]] for family in FAMILIES for op in OPS
}


def _parent(family: str, depths: tuple[int, ...] = (1, 1)) -> nn.Module:
    """The family's tiny model, per-channel parameters redrawn (module docstring)."""
    torch.manual_seed(0)
    model = FAMILIES[family](list(depths), [8, 16]).eval().double()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.numel() != max(p.shape):
                continue  # a matrix or kernel
            if "bias" in name:
                p.uniform_(-0.2, 0.2)
            else:
                p.uniform_(0.5, 1.5)
    return model


def _pixels() -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(2, 3, 64, 64, generator=gen, dtype=torch.float64)


def _logits(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        out = model(_pixels())
    return out if isinstance(out, torch.Tensor) else out.logits


def _shape(child: nn.Module) -> tuple[list[int], list[int]]:
    """The child's depths and stage widths."""
    net = recognise(child)
    assert net is not None
    return [s.depth for s in net.stages], [s.width for s in net.stages]


def _reloads(
    family: str, child: nn.Module, report: object, how: str, want: torch.Tensor, path: Path
) -> None:
    if how in (REBUILT, WHOLE):
        rebuilt = FAMILIES[family](*_shape(child)).double().eval()
        if how == WHOLE:
            with pytest.raises(RuntimeError, match="size mismatch"):
                rebuilt.load_state_dict(child.state_dict())
            return
        rebuilt.load_state_dict(child.state_dict())
        torch.testing.assert_close(_logits(rebuilt), want, rtol=0, atol=1e-9)
        return
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
    if outcome not in (STOCK, MARKED, REBUILT, WHOLE):
        with pytest.raises(MorphError, match=outcome):
            OPS[op](parent)
    else:
        child, report = OPS[op](parent)
        assert report.exact
        torch.testing.assert_close(_logits(child), want, rtol=0, atol=1e-9)
        _reloads(family, child, report, outcome, want, tmp_path)
    assert all(torch.equal(before[k], v) for k, v in parent.state_dict().items())


def test_grow_width_copies_the_stage_stream() -> None:
    """Stage 0, 8 → 16 (torchvision): the stem convolution's rows, its norm's gain, every
    block's depthwise kernels, norm gain and layer scale twice; the hidden units two copies
    (pw1's row blocks each sum to W₁ over their column blocks, pw2's column blocks to W₂);
    the downsampling norm's gain twice and its convolution reads two column blocks summing to
    its weight."""
    parent = _parent("torchvision ConvNeXt")
    child, _ = grow_width(parent, 16, stage=0, seed=0)
    stem, stem0 = child.features[0], parent.features[0]
    assert torch.equal(stem[0].weight, torch.cat([stem0[0].weight] * 2))
    assert torch.equal(stem[1].weight, torch.cat([stem0[1].weight] * 2))
    block, block0 = child.features[1][0], parent.features[1][0]
    assert torch.equal(block.block[0].weight, torch.cat([block0.block[0].weight] * 2))
    assert block.block[0].groups == 16
    assert torch.equal(block.layer_scale, torch.cat([block0.layer_scale] * 2))
    w1, w10 = block.block[3].weight, block0.block[3].weight
    assert w1.shape == (64, 16)
    for a in (0, 32):
        torch.testing.assert_close(w1[a : a + 32, :8] + w1[a : a + 32, 8:], w10, rtol=0, atol=1e-15)
    assert not torch.equal(w1[:32, :8], w1[32:, :8])
    w2, w20 = block.block[5].weight, block0.block[5].weight
    for c in (0, 8):
        torch.testing.assert_close(w2[c : c + 8, :32] + w2[c : c + 8, 32:], w20, rtol=0, atol=1e-15)
    down, down0 = child.features[2], parent.features[2]
    assert torch.equal(down[0].weight, torch.cat([down0[0].weight] * 2))
    total = down[1].weight[:, :8] + down[1].weight[:, 8:]
    torch.testing.assert_close(total, down0[1].weight, rtol=0, atol=1e-15)


def test_grow_ffn_new_units_cancel_in_pairs() -> None:
    """HF ConvNeXt stage 1, 64 → 68 hidden units: two pairs of shared pw1 rows whose pw2
    columns are C and −C; stage 0 unchanged."""
    parent = _parent("HF ConvNeXt")
    child, _ = grow_ffn(parent, 68, stage=1, seed=0)
    layer = child.convnext.encoder.stages[1].layers[0]
    old = parent.convnext.encoder.stages[1].layers[0]
    assert torch.equal(layer.pwconv1.weight[:64], old.pwconv1.weight)
    for u in (64, 66):
        assert torch.equal(layer.pwconv1.weight[u], layer.pwconv1.weight[u + 1])
        assert torch.equal(layer.pwconv2.weight[:, u], -layer.pwconv2.weight[:, u + 1])
    assert bool((layer.pwconv2.weight[:, 64:] != 0).all())
    assert child.convnext.encoder.stages[0].layers[0].pwconv1.out_features == 32


def test_grow_ffn_copies_grn_units() -> None:
    """ConvNeXt V2, 32 → 64 hidden units in stage 0: pw1 rows, biases and GRN parameters
    twice, pw2's two column blocks summing to its weight."""
    parent = _parent("HF ConvNeXt V2 (GRN)")
    child, _ = grow_ffn(parent, 64, stage=0, seed=0)
    layer = child.convnextv2.encoder.stages[0].layers[0]
    old = parent.convnextv2.encoder.stages[0].layers[0]
    assert torch.equal(layer.pwconv1.weight, torch.cat([old.pwconv1.weight] * 2))
    assert torch.equal(layer.grn.weight, torch.cat([old.grn.weight] * 2, dim=-1))
    w2 = layer.pwconv2.weight
    torch.testing.assert_close(w2[:, :32] + w2[:, 32:], old.pwconv2.weight, rtol=0, atol=1e-15)


def test_add_block_at_the_end_and_layers_are_global() -> None:
    """timm, depths [2, 1]: a block after the last one; grow_ffn of global block 1 (stage 0's
    second) only."""
    parent = _parent("timm ConvNeXt (conv MLP)", depths=(2, 1))
    want = _logits(parent)
    child, _ = add_block(parent, 3, seed=0)
    assert [len(s.blocks) for s in child.stages] == [2, 2, 0, 0]
    torch.testing.assert_close(_logits(child), want, rtol=0, atol=1e-9)
    child, _ = grow_ffn(parent, 48, layers=[1], seed=0)
    assert [b.mlp.fc1.out_channels for b in child.stages[0].blocks] == [32, 48]
    assert child.stages[1].blocks[0].mlp.fc1.out_channels == 64
    torch.testing.assert_close(_logits(child), want, rtol=0, atol=1e-9)


def test_backbone_last_stage_width_is_refused() -> None:
    """A bare ConvNextModel returns the last stage's map: widening it would change the output's
    shape; an earlier stage grows exactly."""
    torch.manual_seed(0)
    config = transformers.ConvNextConfig(**HF_STAGES)
    parent = transformers.ConvNextModel(config).eval().double()
    with pytest.raises(MorphError, match="the model's output carries it"):
        grow_width(parent, 32)
    child, report = grow_width(parent, 16, stage=0, seed=0)
    assert report.exact
    with torch.no_grad():
        want = parent(_pixels()).last_hidden_state
        torch.testing.assert_close(child(_pixels()).last_hidden_state, want, rtol=0, atol=1e-9)


def test_grow_width_behind_a_two_conv_stem() -> None:
    """timm's overlapping stem (conv, GELU, conv, LayerNorm): only its last conv and norm write
    stage 0's stream; the first conv is untouched."""
    from timm.models.convnext import ConvNeXt

    torch.manual_seed(0)
    parent = ConvNeXt(
        depths=(1, 1, 0, 0), dims=(8, 16, 16, 16), num_classes=3, stem_type="overlap_act"
    )
    parent = parent.eval().double()
    child, report = grow_width(parent, 16, stage=0, seed=0)
    assert report.exact
    assert torch.equal(child.stem[0].weight, parent.stem[0].weight)
    assert child.stem[2].out_channels == 16
    torch.testing.assert_close(_logits(child), _logits(parent), rtol=0, atol=1e-9)


class _OddBlock(nn.Module):
    """A ConvNeXt block's parts whose forward doubles the branch."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(d, d, 3, padding=1, groups=d)
        self.norm = nn.LayerNorm(d)
        self.pw1 = nn.Linear(d, 4 * d)
        self.act = nn.GELU()
        self.pw2 = nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(self.dwconv(x).permute(0, 2, 3, 1))
        return x + 2 * self.pw2(self.act(self.pw1(h))).permute(0, 3, 1, 2)


def test_block_with_an_unknown_forward_is_refused() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 4, 4), nn.Sequential(_OddBlock(8), _OddBlock(8)))
    with pytest.raises(MorphError, match="its forward is not"):
        grow_ffn(model, 64)


def test_bad_arguments() -> None:
    parent = _parent("HF ConvNeXt")
    with pytest.raises(ValueError, match="must exceed the MLP hidden size 64"):
        grow_ffn(parent, 64)
    with pytest.raises(ValueError, match="stage must be distinct stage indices"):
        grow_ffn(parent, 128, stage=2)
    with pytest.raises(ValueError, match="must exceed stage 1's width 16"):
        grow_width(parent, 16)
    with pytest.raises(ValueError, match=r"at must be a block index in \[0, 1\] of stage 0"):
        add_block(parent, 2, stage=0)


def _cell(outcome: str) -> str:
    if outcome == STOCK:
        return "exact, stock reload"
    if outcome == MARKED:
        return "exact, `load_grown`"
    if outcome == REBUILT:
        return "exact, `state_dict` loads into the constructor"
    if outcome == WHOLE:
        return "exact (MLP 4·d fixed by the constructor: save whole)"
    return f"refused: “{outcome}”"


def table() -> str:
    """The markdown family × operation table of :data:`OUTCOMES`."""
    return doc_tables.table(
        "convnext", "test_torch_convnext.py", "family", FAMILIES, OPS, OUTCOMES, cell=_cell
    )


def test_convnext_table_matches() -> None:
    """docs/supported.md holds the table these tests assert, unchanged."""
    doc_tables.check("convnext", "test_torch_convnext.py", table())


if __name__ == "__main__":
    print(table())
