"""MobileBERT's bottleneck blocks: every transformer operation on tiny float64 configs.

Each block reads the 32-wide stream through bottleneck projections to a 16-wide inner stream,
runs attention and three feed-forwards there and writes back through one projection, NoNorm
(elementwise x·γ + β) or LayerNorm after each residual sum. Each case checks the child's logits
against the parent's (float64, 1e-9), that the parent is untouched, and the reload: stock
``from_pretrained`` where the config describes the child, else ``load_grown``. Refusals by
type and message. :data:`OUTCOMES` is the MobileBERT table of ``docs/supported.md`` (``python
tests/test_torch_mobilebert.py`` prints it).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import doc_tables
import pytest
import torch
from thirdparty import import_transformers

from netmorph_core.torch import MorphError, add_block, add_heads, grow_ffn, grow_width, load_grown
from netmorph_core.torch.bottleneck_layout import recognise

try:
    transformers = import_transformers()
except ImportError:  # pragma: no cover - the test extra installs it
    pytest.skip("transformers is not installed", allow_module_level=True)

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

STOCK = "exact, stock reload"
MARKED = "exact, load_grown"
#: row of the table → (model class, config arguments beyond the tiny ones).
VARIANTS: dict[str, tuple[str, dict]] = {
    "classifier (NoNorm)": ("MobileBertForSequenceClassification", {}),
    "masked LM (NoNorm)": ("MobileBertForMaskedLM", {}),
    "classifier (LayerNorm)": (
        "MobileBertForSequenceClassification",
        dict(normalization_type="layer_norm"),
    ),
}
Op = Callable[[torch.nn.Module], tuple[torch.nn.Module, object]]
OPS: dict[str, Op] = {
    "grow_ffn": lambda m: grow_ffn(m, 48),
    "grow_ffn (one block)": lambda m: grow_ffn(m, 47, layers=1),
    "add_heads": lambda m: add_heads(m, 6),
    "add_heads (one block)": lambda m: add_heads(m, 5, layers=0),
    "add_block": lambda m: add_block(m, 1),
    "add_block (end)": lambda m: add_block(m, 2),
    "grow_width": lambda m: grow_width(m, 64),
}
LN_BLOCK = "refused: end in 'output.bottleneck.LayerNorm' (LayerNorm) after the residual sum"
OUTCOMES: dict[tuple[str, str], str] = {
    **{(r, op): MARKED for r in VARIANTS for op in OPS},
    **{(r, "grow_ffn"): STOCK for r in VARIANTS},
    **{(r, op): STOCK for r in VARIANTS for op in ("add_block", "add_block (end)")},
    **{(r, "grow_width"): "refused: does not grow the stream or the inner width" for r in VARIANTS},
    ("classifier (LayerNorm)", "add_block"): LN_BLOCK,
    ("classifier (LayerNorm)", "add_block (end)"): LN_BLOCK,
}


def _parent(variant: str) -> torch.nn.Module:
    cls, extra = VARIANTS[variant]
    torch.manual_seed(0)
    config = transformers.MobileBertConfig(
        vocab_size=100,
        hidden_size=32,
        embedding_size=16,
        intra_bottleneck_size=16,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=32,
        num_labels=3,
        max_position_embeddings=32,
        **extra,
    )
    model = getattr(transformers, cls)(config).eval().double()
    with torch.no_grad():  # non-trivial norms and biases
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.uniform_(0.5, 1.5) if name.endswith("LayerNorm.weight") else p.uniform_(-0.2, 0.2)
    return model


def _logits(model: torch.nn.Module) -> torch.Tensor:
    ids = torch.randint(0, 100, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("op", list(OPS))
def test_operation(op: str, variant: str, tmp_path: Path) -> None:
    parent = _parent(variant)
    before = {k: v.clone() for k, v in parent.state_dict().items()}
    expected = OUTCOMES[variant, op]
    if expected.startswith("refused: "):
        with pytest.raises(MorphError, match=re.escape(expected.removeprefix("refused: "))):
            OPS[op](parent)
    else:
        child, report = OPS[op](parent)
        want = _logits(parent)
        torch.testing.assert_close(_logits(child), want, rtol=0, atol=1e-9)
        child.save_pretrained(tmp_path)
        auto = getattr(transformers, VARIANTS[variant][0])
        if expected == STOCK:
            assert any("reloads this child exactly" in n for n in report.notes), report.notes
            reloaded = auto.from_pretrained(tmp_path, dtype=torch.float64).eval()
        else:
            assert any("cannot describe" in n for n in report.notes), report.notes
            with pytest.raises(ValueError, match="does not recognize this architecture"):
                transformers.AutoModel.from_pretrained(tmp_path)
            reloaded = load_grown(tmp_path)
        torch.testing.assert_close(_logits(reloaded), want, rtol=0, atol=1e-9)
    after = parent.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def table() -> str:
    """The markdown variant × operation table of :data:`OUTCOMES`."""
    return doc_tables.table(
        "mobilebert", "test_torch_mobilebert.py", "MobileBERT", VARIANTS, OPS, OUTCOMES
    )


def test_supported_table_matches() -> None:
    """docs/supported.md holds the table these tests assert, unchanged."""
    doc_tables.check("mobilebert", "test_torch_mobilebert.py", table())


def test_every_feed_forward_grows() -> None:
    parent = _parent("classifier (NoNorm)")
    child, report = grow_ffn(parent, 48)
    block = child.mobilebert.encoder.layer[0]
    layers = [f.intermediate.dense for f in block.ffn] + [block.intermediate.dense]
    assert [layer.out_features for layer in layers] == [48] * 4
    assert child.config.intermediate_size == 48
    assert 0 < report.new_nonzero_ratio < 1


def test_recognised_by_its_parts() -> None:
    net = recognise(_parent("classifier (NoNorm)"))
    assert net is not None
    assert net.blocks == "mobilebert.encoder.layer"
    assert (net.depth, net.d_model, net.inner) == (2, 32, 16)
    assert (net.heads, net.head_dim, len(net.ffns), net.affine_out) == (4, 4, 4, True)
    assert recognise(_parent("classifier (LayerNorm)")).affine_out is False


def test_a_block_whose_writer_has_another_shape_is_refused_by_name() -> None:
    parent = _parent("classifier (NoNorm)")
    parent.mobilebert.encoder.layer[1].output.bottleneck.dense = torch.nn.Linear(16, 30).double()
    with pytest.raises(MorphError, match=r"layer\.1\.output\.bottleneck\.dense maps 16 → 30"):
        grow_ffn(parent, 48)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda m: add_heads(m, 4), ValueError, "must exceed the current 4 heads"),
        (lambda m: add_heads(m, 8, kv_heads=2), MorphError, "attention is multi-head"),
        (lambda m: grow_ffn(m, 32), ValueError, "must exceed the feed-forward hidden size 32"),
        (lambda m: grow_ffn(m, 48, layers=2), ValueError, r"block 2 is not in \[0, 2\)"),
        (lambda m: add_block(m, 3), ValueError, r"at=3 must be in \[0, 2\]"),
    ],
)
def test_bad_arguments(call: Op, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        call(_parent("classifier (NoNorm)"))


if __name__ == "__main__":
    print(table())
