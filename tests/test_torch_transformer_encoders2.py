"""ModernBERT, DeBERTa-v2 and MPNet: every transformer operation on a tiny float64 config.

Each case grows a tiny random model (d_model 32, 4 heads, 2 blocks; norm gains, biases and the
relative-position tables redrawn so that they matter), checks that the child computes the
parent's logits (float64, 1e-9) on token ids, that the parent is untouched, and that
``save_pretrained`` reloads it: with the stock ``from_pretrained`` where the child's config
describes it, else the stock load refuses the marked model_type and ``load_grown`` rebuilds it
exactly, or the config cannot describe it at all and ``load_grown`` refuses it too. Refusals
are asserted by type and message. :data:`OUTCOMES` is the table of ``docs/supported.md``
(``test_encoders2_table_matches``; ``python tests/test_torch_transformer_encoders2.py`` prints
it).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import doc_tables
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
from netmorph_core.torch.transformer_layout import describe

try:
    transformers = import_transformers()
except ImportError:  # pragma: no cover - the test extra installs it
    pytest.skip("transformers is not installed", allow_module_level=True)

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

SMALL = dict(
    vocab_size=100,
    max_position_embeddings=32,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    initializer_range=0.2,  # attention scores and relative-position terms of order one
)
#: DeBERTa-v3's attention: relative positions in 8 buckets read through the key and query
#: projections (c2p and p2c), the table normalised by a LayerNorm; no absolute positions.
DEBERTA_V3 = dict(
    position_biased_input=False,
    relative_attention=True,
    pos_att_type=["p2c", "c2p"],
    position_buckets=8,
    max_relative_positions=16,
    norm_rel_ebd="layer_norm",
    share_att_key=True,
)
#: Block 0 alternates global and sliding-window attention with block 1 (window ±2 of 9 tokens).
MODERNBERT = dict(pad_token_id=0, global_attn_every_n_layers=2, local_attention=4)
#: family → (model class, config class, config arguments, block 0's output projection).
FAMILIES: dict[str, tuple[str, str, dict, str]] = {
    "ModernBERT (masked LM)": (
        "ModernBertForMaskedLM",
        "ModernBertConfig",
        MODERNBERT,
        "model.layers.0.attn.Wo",
    ),
    "ModernBERT (classifier)": (
        "ModernBertForSequenceClassification",
        "ModernBertConfig",
        dict(**MODERNBERT, num_labels=3),
        "model.layers.0.attn.Wo",
    ),
    "ModernBERT decoder (causal LM)": (
        "ModernBertDecoderForCausalLM",
        "ModernBertDecoderConfig",
        MODERNBERT,
        "model.layers.0.attn.Wo",
    ),
    "DeBERTa-v2 (v3 attention, classifier)": (
        "DebertaV2ForSequenceClassification",
        "DebertaV2Config",
        dict(**DEBERTA_V3, num_labels=3),
        "deberta.encoder.layer.0.attention.output.dense",
    ),
    "DeBERTa-v2 (position projections, masked LM)": (
        "DebertaV2ForMaskedLM",
        "DebertaV2Config",
        dict(DEBERTA_V3, share_att_key=False, norm_rel_ebd="none", position_biased_input=True),
        "deberta.encoder.layer.0.attention.output.dense",
    ),
    "DeBERTa v1 (classifier) ¹": (
        "DebertaForSequenceClassification",
        "DebertaConfig",
        dict(relative_attention=True, pos_att_type=["p2c", "c2p"], num_labels=3),
        "deberta.encoder.layer.0.attention.output.dense",
    ),
    "DeBERTa v1 (masked LM) ¹": (
        "DebertaForMaskedLM",
        "DebertaConfig",
        dict(relative_attention=True, pos_att_type=["c2p"]),
        "deberta.encoder.layer.0.attention.output.dense",
    ),
    "MPNet (masked LM)": (
        "MPNetForMaskedLM",
        "MPNetConfig",
        {},
        "mpnet.encoder.layer.0.attention.attn.o",
    ),
    "MPNet (classifier)": (
        "MPNetForSequenceClassification",
        "MPNetConfig",
        dict(num_labels=3),
        "mpnet.encoder.layer.0.attention.attn.o",
    ),
}

Op = Callable[[torch.nn.Module, str], tuple[torch.nn.Module, object]]
#: operation → what it does to the parent (``name``: block 0's attention output projection).
OPS: dict[str, Op] = {
    "grow_ffn": lambda m, name: grow_ffn(m, 80),
    "add_heads": lambda m, name: add_heads(m, 8),
    "grow_width": lambda m, name: grow_width(m, 48),
    "grow_width x2": lambda m, name: grow_width(m, 64),
    "grow_width x2 → add_heads": lambda m, name: add_heads(grow_width(m, 64)[0], 8),
    "add_block": lambda m, name: add_block(m, 1),
    "deepen_projection": lambda m, name: deepen_projection(m, name),
}
STOCK = "exact, stock reload"
MARKED = "exact, load_grown"
SAVE_WHOLE = "exact, save whole (torch.save)"
POST_LN = "refused: normalises after the residual sum (post-LN)"
MODERNBERT_ROW = {
    "grow_ffn": STOCK,
    "add_heads": MARKED,
    "grow_width": "refused: 'model.embeddings.norm' writes the stream",
    "grow_width x2": MARKED,
    "grow_width x2 → add_heads": MARKED,
    "add_block": STOCK,
    "deepen_projection": MARKED,
}
DEBERTA_ROW = {
    "grow_ffn": STOCK,
    "add_heads": MARKED,
    "grow_width": POST_LN,
    "grow_width x2": MARKED,
    "grow_width x2 → add_heads": MARKED,
    "add_block": STOCK,
    "deepen_projection": MARKED,
}
MPNET_ROW = {
    "grow_ffn": STOCK,
    "add_heads": MARKED,
    "grow_width": POST_LN,
    "grow_width x2": MARKED,
    "grow_width x2 → add_heads": MARKED,
    "add_block": STOCK,
    "deepen_projection": MARKED,
}
#: DeBERTa v1's LayerNorm keeps its eps as ``variance_epsilon`` and computes in float32.
DEBERTA_V1_ROW = MPNET_ROW
#: (family, operation) → STOCK, MARKED, SAVE_WHOLE or "refused: <what the MorphError says>".
OUTCOMES: dict[tuple[str, str], str] = {
    **{("ModernBERT (masked LM)", op): v for op, v in MODERNBERT_ROW.items()},
    **{("ModernBERT (classifier)", op): v for op, v in MODERNBERT_ROW.items()},
    **{("ModernBERT decoder (causal LM)", op): v for op, v in MODERNBERT_ROW.items()},
    **{("DeBERTa-v2 (v3 attention, classifier)", op): v for op, v in DEBERTA_ROW.items()},
    **{("DeBERTa-v2 (position projections, masked LM)", op): v for op, v in DEBERTA_ROW.items()},
    **{("DeBERTa v1 (classifier) ¹", op): v for op, v in DEBERTA_V1_ROW.items()},
    **{("DeBERTa v1 (masked LM) ¹", op): v for op, v in DEBERTA_V1_ROW.items()},
    **{("MPNet (masked LM)", op): v for op, v in MPNET_ROW.items()},
    **{("MPNet (classifier)", op): v for op, v in MPNET_ROW.items()},
}


def _redraw(model: torch.nn.Module) -> torch.nn.Module:
    """Gains in [0.5, 1.5], biases in [−0.2, 0.2], relative-position tables in [−1, 1]."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "rel_embeddings" in name or "relative_attention_bias" in name:
                p.uniform_(-1.0, 1.0)
            elif p.dim() == 1 and "norm" in name.lower() and name.endswith("weight"):
                p.uniform_(0.5, 1.5)
            elif p.dim() == 1:
                p.uniform_(-0.2, 0.2)
    return model


def _build(
    model: str, config: str, args: dict, dtype: torch.dtype = torch.float64
) -> torch.nn.Module:
    torch.manual_seed(0)
    built = getattr(transformers, model)(getattr(transformers, config)(**SMALL, **args))
    return _redraw(built.eval().to(dtype))


def _dtype(family: str) -> torch.dtype:
    """¹: DeBERTa v1's LayerNorm computes in float32 even in a float64 model, so its cases
    run on a float32 parent (within twice the parent's own float32 rounding)."""
    return torch.float32 if family.endswith("¹") else torch.float64


def _parent(family: str) -> torch.nn.Module:
    model, config, args, _ = FAMILIES[family]
    return _build(model, config, args, _dtype(family))


IDS = torch.randint(2, 100, (2, 9), generator=torch.Generator().manual_seed(1))


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits


def _auto(model: torch.nn.Module) -> type:
    task = type(model).__name__.rpartition("For")[2]
    return getattr(transformers, f"AutoModelFor{task}")


def _unchanged(before: dict[str, torch.Tensor], model: torch.nn.Module) -> bool:
    after = model.state_dict()
    return set(after) == set(before) and all(torch.equal(before[k], after[k]) for k in before)


CASES = [pytest.param(f, op, id=f"{f}-{op}") for f in FAMILIES for op in OPS]


@pytest.mark.parametrize(("family", "op"), CASES)
def test_encoder_operation(family: str, op: str, tmp_path: Path) -> None:
    parent = _parent(family)
    before = {k: v.clone() for k, v in parent.state_dict().items()}
    want = _logits(parent)
    expected = OUTCOMES[family, op]
    if expected.startswith("refused: "):
        with pytest.raises(MorphError, match=re.escape(expected.removeprefix("refused: "))):
            OPS[op](parent, FAMILIES[family][3])
        assert _unchanged(before, parent)
        return
    child, report = OPS[op](parent, FAMILIES[family][3])
    f32 = _dtype(family) == torch.float32
    atol = 1e-5 if f32 else 1e-9
    torch.testing.assert_close(_logits(child), want, rtol=0, atol=atol)
    if f32:
        assert report.noise_ratio <= 2.0, report
    assert _unchanged(before, parent)
    child.save_pretrained(tmp_path)
    if expected == SAVE_WHOLE:
        assert any("save it whole" in n for n in report.notes), report.notes
        with pytest.raises(MorphError, match="no config describes"):
            load_grown(tmp_path)
        return
    if expected == STOCK:
        assert any("reloads this child exactly" in n for n in report.notes), report.notes
        reloaded = _auto(parent).from_pretrained(tmp_path, dtype=parent.dtype).eval()
    else:
        assert any("cannot describe" in n for n in report.notes), report.notes
        with pytest.raises(ValueError, match="does not recognize this architecture"):
            _auto(parent).from_pretrained(tmp_path)
        reloaded = load_grown(tmp_path)
    assert type(reloaded) is type(parent)
    torch.testing.assert_close(_logits(reloaded), want, rtol=0, atol=atol)


def table() -> str:
    """The markdown model × operation table of :data:`OUTCOMES`."""
    return doc_tables.table(
        "encoders2", "test_torch_transformer_encoders2.py", "model", FAMILIES, OPS, OUTCOMES
    )


def test_encoders2_table_matches() -> None:
    """docs/supported.md holds the table these tests assert, unchanged."""
    doc_tables.check("encoders2", "test_torch_transformer_encoders2.py", table())


def test_every_case_has_an_outcome() -> None:
    assert set(OUTCOMES) == {(f, op) for f in FAMILIES for op in OPS}


if __name__ == "__main__":
    print(table())


@pytest.mark.parametrize(
    ("family", "name", "head", "fused"),
    [
        ("ModernBERT (masked LM)", "modernbert", "head", True),
        ("ModernBERT (classifier)", "modernbert", "head", True),
        ("ModernBERT decoder (causal LM)", "modernbert-decoder", "lm_head", False),
        ("DeBERTa-v2 (v3 attention, classifier)", "deberta-v2", "classifier", False),
        ("DeBERTa-v2 (position projections, masked LM)", "deberta-v2", "cls", False),
        ("MPNet (masked LM)", "mpnet", "lm_head", False),
    ],
)
def test_layout(family: str, name: str, head: str, fused: bool) -> None:
    """ModernBERT: fused [Q; K; V] (its decoder: separate q, k, v) and [input; gate] rows,
    LayerNorm (no bias) although block 0's attention norm is an Identity; its head is ``head``
    (the decoder's ``lm_head``: dense → act → norm)."""
    layout = describe(_parent(family))
    assert (layout.family.name, layout.head, layout.norm_kind) == (name, head, "layer")
    assert len(layout.family.qkv) == (1 if fused else 3)
    assert layout.family.gate_up == name.startswith("modernbert")
    assert [(b.heads, b.kv_heads, b.head_dim) for b in layout.blocks] == [(4, 4, 8)] * 2


STREAMED_CASES = [
    pytest.param(f, op, id=f"{f}-{op}")
    for f in FAMILIES
    for op in ("grow_ffn", "grow_width x2 → add_heads", "add_block", "deepen_projection")
    if not OUTCOMES[f, op].startswith("refused")
    # ¹ on float64 parents (a float32 one is refused: its LayerNorm's float32 output cannot
    # be computed in float64 one module at a time), no wider or new LayerNorm in float32
    # arithmetic
    and not (f.endswith("¹") and op.startswith(("grow_width", "add_block")))
]


@pytest.mark.parametrize(("family", "op"), STREAMED_CASES)
def test_measured_one_module_at_a_time(
    family: str, op: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The per-module float64 measurement (every model above the whole-copy limit) accepts
    the same exact children: block regions on their captured inputs, and whole where the
    blocks read a table built outside them (DeBERTa's relative positions at the stream's
    width, MPNet's bias per head)."""
    monkeypatch.setattr(pipeline, "WHOLE_COPY_LIMIT", 0)
    parent = _build(*FAMILIES[family][:3])
    child, report = OPS[op](parent, FAMILIES[family][3])
    assert report.measured_by == pipeline.STREAMED
    torch.testing.assert_close(_logits(child), _logits(parent), rtol=0, atol=1e-9)


def test_mpnet_new_heads_get_zero_relative_attention_bias_columns() -> None:
    """MPNet's bias (buckets × heads) is built once outside the blocks: new heads get zero
    columns (the heads of a cancelling set see the same scores), its head count follows."""
    wide, _ = grow_width(_parent("MPNet (masked LM)"), 64)
    before = {k: v.clone() for k, v in wide.state_dict().items()}
    child, _ = add_heads(wide, 8)
    table = child.mpnet.encoder.relative_attention_bias
    old = wide.mpnet.encoder.relative_attention_bias.weight
    assert table.weight.shape == (32, 8) and table.embedding_dim == 8
    assert torch.equal(table.weight[:, :4], old) and not table.weight[:, 4:].any()
    assert child.mpnet.encoder.n_heads == 8
    torch.testing.assert_close(_logits(child), _logits(wide), rtol=0, atol=1e-9)
    assert _unchanged(before, wide)


@pytest.mark.parametrize(
    ("grow", "message"),
    [
        (lambda m: add_heads(m, 8, inplace=True), "inplace=True: 'mpnet.encoder.relative_att"),
        (lambda m: add_heads(m, 8, layers=0), "shared by every block, one column per head"),
    ],
)
def test_mpnet_shared_bias_needs_every_block(grow: Callable, message: str) -> None:
    wide, _ = grow_width(_parent("MPNet (masked LM)"), 64)
    before = {k: v.clone() for k, v in wide.state_dict().items()}
    with pytest.raises(MorphError, match=re.escape(message)):
        grow(wide)
    assert _unchanged(before, wide)


def test_deberta_position_projections_grow_per_head() -> None:
    """Without ``share_att_key`` the relative positions are read by ``pos_key_proj`` and
    ``pos_query_proj``, rows per head: the parent's heads keep theirs, the heads of each
    cancelling set share one random block (their c2p and p2c scores stay equal)."""
    parent = _parent("DeBERTa-v2 (position projections, masked LM)")
    child, _ = add_heads(parent, 8)
    for rel in ("pos_key_proj", "pos_query_proj"):
        old = getattr(parent.deberta.encoder.layer[0].attention.self, rel).weight
        new = getattr(child.deberta.encoder.layer[0].attention.self, rel).weight.view(8, 8, 32)
        assert torch.equal(new[:4], old.view(4, 8, 32))
        assert torch.equal(new[4], new[5]) and torch.equal(new[6], new[7])
        assert new[4:].abs().min() > 0 and not torch.equal(new[4], new[6])
    torch.testing.assert_close(_logits(child), _logits(parent), rtol=0, atol=1e-9)


def test_deberta_config_records_the_head_size() -> None:
    """DeBERTa's config holds head_dim as ``attention_head_size``: a wider stream keeps 8."""
    child, _ = grow_width(_parent("DeBERTa-v2 (v3 attention, classifier)"), 64)
    assert child.config.attention_head_size == 8 and child.config.hidden_size == 64
    grown, _ = add_heads(child, 8)
    assert grown.config.attention_head_size == 8 and grown.config.num_attention_heads == 8


@pytest.mark.parametrize(
    ("args", "grow", "message"),
    [
        (
            dict(conv_kernel_size=3, num_labels=3),
            lambda m: grow_width(m, 64),
            "d_model=64: 'deberta.encoder.conv' (ConvLayer) works at the stream's width",
        ),
        (
            dict(legacy=False),
            lambda m: grow_width(m, 64),
            "d_model=64: 'lm_predictions' (DebertaV2OnlyMLMHead) works at the stream's width",
        ),
        (
            dict(num_labels=3),
            lambda m: grow_width(m, 64, inplace=True),
            "inplace=True: 'deberta.encoder.rel_embeddings' is read by every block",
        ),
    ],
)
def test_deberta_parts_that_keep_the_width_are_refused_by_name(
    args: dict, grow: Callable, message: str
) -> None:
    """The convolution after block 0 and the masked-LM head that multiplies by the word
    embedding's weight are not widened: grow_width refuses them by name before any work;
    the block operations stay exact."""
    model = "DebertaV2ForMaskedLM" if "legacy" in args else "DebertaV2ForSequenceClassification"
    parent = _build(model, "DebertaV2Config", {**DEBERTA_V3, **args})
    before = {k: v.clone() for k, v in parent.state_dict().items()}
    with pytest.raises(MorphError, match=f"^{re.escape(message)}"):
        grow(parent)
    assert _unchanged(before, parent)
    child, _ = grow_ffn(parent, 80)
    torch.testing.assert_close(_logits(child), _logits(parent), rtol=0, atol=1e-9)


def test_deberta_without_relative_attention_grows_like_bert(tmp_path: Path) -> None:
    """The default DebertaV2Config (no relative attention, no position table)."""
    parent = _build("DebertaV2ForSequenceClassification", "DebertaV2Config", dict(num_labels=3))
    want = _logits(parent)
    child, _ = add_heads(grow_width(parent, 64)[0], 8)
    torch.testing.assert_close(_logits(child), want, rtol=0, atol=1e-9)
    child.save_pretrained(tmp_path)
    torch.testing.assert_close(_logits(load_grown(tmp_path)), want, rtol=0, atol=1e-9)


def test_modernbert_new_block_keeps_the_attention_pattern(tmp_path: Path) -> None:
    """A block inserted at 1 copies block 1's sliding-window attention into the config's
    ``layer_types``; inserted at 0, it copies block 0 (its Identity attention norm): the old
    block 0 keeps its Identity at position 1, which load_grown rebuilds."""
    parent = _parent("ModernBERT (masked LM)")
    want = _logits(parent)
    child, _ = add_block(parent, 1)
    types = ["full_attention", "sliding_attention", "sliding_attention"]
    assert child.config.layer_types == types
    assert [b.attention_type for b in child.model.layers] == types
    assert [b.attn.layer_idx for b in child.model.layers] == [0, 1, 2]
    first, report = add_block(parent, 0)
    assert any("cannot describe" in n for n in report.notes), report.notes
    assert first.config.layer_types == ["full_attention", *types[:2]]
    assert isinstance(first.model.layers[1].attn_norm, torch.nn.Identity)
    torch.testing.assert_close(_logits(first), want, rtol=0, atol=1e-9)
    first.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="does not recognize this architecture"):
        transformers.AutoModelForMaskedLM.from_pretrained(tmp_path)
    torch.testing.assert_close(_logits(load_grown(tmp_path)), want, rtol=0, atol=1e-9)


def test_modernbert_model_without_head() -> None:
    parent = _build("ModernBertModel", "ModernBertConfig", MODERNBERT)
    child, _ = grow_ffn(parent, 80)
    with torch.no_grad():
        want = parent(IDS).last_hidden_state
        torch.testing.assert_close(child(IDS).last_hidden_state, want, rtol=0, atol=1e-9)
    child, _ = grow_width(parent, 64)
    with torch.no_grad():
        got = child(IDS).last_hidden_state
    torch.testing.assert_close(got, lifted_stream(want, 64), rtol=0, atol=1e-9)


@pytest.mark.parametrize(
    ("model", "config", "args", "how"),
    [
        ("ModernBertForQuestionAnswering", "ModernBertConfig", MODERNBERT, MARKED),
        ("DebertaV2ForQuestionAnswering", "DebertaV2Config", DEBERTA_V3, STOCK),
        ("MPNetForQuestionAnswering", "MPNetConfig", {}, STOCK),
        ("BertForQuestionAnswering", "BertConfig", {}, STOCK),
    ],
)
def test_question_answering_head_reads_the_stream(
    model: str, config: str, args: dict, how: str, tmp_path: Path
) -> None:
    """``qa_outputs`` (start and end logits per token) reads the stream like a classifier:
    a wider stream with as many more heads reloads (ModernBERT's ``head`` keeps its width)."""
    parent = _build(model, config, args)
    with torch.no_grad():
        want = parent(IDS).start_logits
    child, report = add_heads(grow_width(parent, 64)[0], 8)
    child.save_pretrained(tmp_path)
    if how == STOCK:
        assert any("reloads this child exactly" in n for n in report.notes), report.notes
        auto = transformers.AutoModelForQuestionAnswering
        reloaded = auto.from_pretrained(tmp_path, dtype=torch.float64).eval()
    else:
        assert any("cannot describe" in n for n in report.notes), report.notes
        reloaded = load_grown(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(child(IDS).start_logits, want, rtol=0, atol=1e-9)
        torch.testing.assert_close(reloaded(IDS).start_logits, want, rtol=0, atol=1e-9)


def test_deberta_v1_talking_heads_are_refused_by_name() -> None:
    """``talking_head``: Linear(heads, heads) layers mix the heads' scores and probabilities;
    add_heads refuses them by name before any work, the other operations stay exact."""
    args = dict(talking_head=True, relative_attention=True, pos_att_type=["c2p"], num_labels=3)
    parent = _build("DebertaForSequenceClassification", "DebertaConfig", args)
    before = {k: v.clone() for k, v in parent.state_dict().items()}
    message = (
        "heads=8: 'deberta.encoder.layer.0.attention.self.head_logits_proj' mixes the 4 heads' "
        "scores (talking heads), which add_heads does not grow; refused"
    )
    with pytest.raises(MorphError, match=f"^{re.escape(message)}$"):
        add_heads(parent, 8)
    assert _unchanged(before, parent)
    child, _ = grow_ffn(parent, 80)
    torch.testing.assert_close(_logits(child), _logits(parent), rtol=0, atol=1e-9)


def test_deberta_v1_new_heads_get_zero_query_and_value_biases() -> None:
    """DeBERTa v1 adds ``q_bias`` and ``v_bias`` (heads·head_dim) to its fused per-head
    [q; k; v] projection: the parent's heads keep theirs, new heads get zero."""
    parent = _parent("DeBERTa v1 (classifier) ¹").double()
    child, _ = add_heads(parent, 8)
    for rel in ("q_bias", "v_bias"):
        old = getattr(parent.deberta.encoder.layer[1].attention.self, rel)
        new = getattr(child.deberta.encoder.layer[1].attention.self, rel)
        assert new.shape == (64,) and torch.equal(new[:32], old) and not new[32:].any()
    torch.testing.assert_close(_logits(child), _logits(parent), rtol=0, atol=1e-9)


@pytest.mark.parametrize(
    ("model", "config"),
    [("BertForMaskedLM", "BertConfig"), ("RobertaForSequenceClassification", "RobertaConfig")],
)
def test_bert_add_heads_at_the_same_width(model: str, config: str, tmp_path: Path) -> None:
    """BERT's attention splits its heads by its own ``attention_head_size`` (as MPNet's):
    8 heads of 8 at d_model 32 are exact; the config derives head_dim, so the stock load
    refuses the child and load_grown rebuilds it."""
    parent = _build(model, config, dict(num_labels=3) if "Classification" in model else {})
    want = _logits(parent)
    child, report = add_heads(parent, 8)
    torch.testing.assert_close(_logits(child), want, rtol=0, atol=1e-9)
    assert any("cannot describe" in n for n in report.notes), report.notes
    child.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="does not recognize this architecture"):
        _auto(parent).from_pretrained(tmp_path)
    torch.testing.assert_close(_logits(load_grown(tmp_path)), want, rtol=0, atol=1e-9)
