"""Post-LayerNorm encoders: BERT, RoBERTa, ELECTRA (embeddings narrower than the stream),
DistilBERT and ALBERT (one layer shared by every depth), every operation on a tiny float64
config.

Each case (d_model 32, 4 heads, 2 blocks, norm gains and biases redrawn so that they matter)
checks that the child computes the parent's logits (1e-9), that the parent is untouched, and
that ``save_pretrained`` reloads it: with the stock ``from_pretrained`` where the child's
config describes it, else the stock load refuses the marked model_type and ``load_grown``
rebuilds it exactly. :data:`OUTCOMES` is the post-LN table of ``docs/supported.md``
(``test_postln_table_matches``; ``python tests/test_torch_transformer_postln.py`` prints it).
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable
from pathlib import Path

import doc_tables
import pytest
import torch
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
)
from netmorph_core.torch.transformer_postln import T_MIN, _deviation, _gain

try:
    transformers = import_transformers()
except ImportError:  # pragma: no cover - the test extra installs it
    pytest.skip("transformers is not installed", allow_module_level=True)

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

LM = dict(
    vocab_size=100,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=32,
)
#: family → (model class, config class, extra config arguments, a query projection).
FAMILIES: dict[str, tuple[str, str, dict, str]] = {
    "BERT": (
        "BertForSequenceClassification",
        "BertConfig",
        dict(num_labels=3),
        "bert.encoder.layer.0.attention.self.query",
    ),
    "RoBERTa (eps 1e-5)": (
        "RobertaForSequenceClassification",
        "RobertaConfig",
        dict(num_labels=3, layer_norm_eps=1e-5),
        "roberta.encoder.layer.0.attention.self.query",
    ),
    "ELECTRA (embedding_size 16)": (
        "ElectraForSequenceClassification",
        "ElectraConfig",
        dict(num_labels=3, embedding_size=16),
        "electra.encoder.layer.0.attention.self.query",
    ),
    "DistilBERT": (
        "DistilBertForSequenceClassification",
        "DistilBertConfig",
        dict(num_labels=3, hidden_dim=64, intermediate_size=None),  # None: not passed
        "distilbert.transformer.layer.0.attention.q_lin",
    ),
    "ALBERT (embedding_size 16)": (
        "AlbertForMaskedLM",
        "AlbertConfig",
        dict(embedding_size=16, inner_group_num=2),  # 2 shared layers, each at both depths
        "albert.encoder.albert_layer_groups.0.albert_layers.0.attention.query",
    ),
}
Op = Callable[[nn.Module, str], tuple[nn.Module, object]]
OPS: dict[str, Op] = {
    "grow_ffn": lambda m, q: grow_ffn(m, 128),
    "grow_width": lambda m, q: grow_width(m, 64),
    "grow_width → add_heads": lambda m, q: add_heads(grow_width(m, 64)[0], 8),
    "add_block at 0": lambda m, q: add_block(m, 0),
    "add_block at 1": lambda m, q: add_block(m, 1),
    "add_block at 2 (end)": lambda m, q: add_block(m, 2, method="zero"),
    "deepen_projection": lambda m, q: deepen_projection(m, q),
}
STOCK = "exact, stock reload"
MARKED = "exact, load_grown"
OUTCOMES: dict[tuple[str, str], str] = {
    **{(f, "grow_ffn"): STOCK for f in FAMILIES},
    **{(f, "grow_width"): MARKED for f in FAMILIES},  # head_dim = hidden_size / heads
    # the pooler / classifier.dense reads the wider stream, its output keeps the old width
    **{(f, "grow_width → add_heads"): MARKED for f in FAMILIES},
    **{(f, op): STOCK for f in FAMILIES for op in OPS if op.startswith("add_block")},
    **{(f, "deepen_projection"): MARKED for f in FAMILIES},
    ("ELECTRA (embedding_size 16)", "add_block at 0"): "refused: through "
    "'electra.embeddings_project' after their LayerNorm",
    ("ALBERT (embedding_size 16)", "grow_width → add_heads"): STOCK,
    ("ALBERT (embedding_size 16)", "add_block at 0"): "refused: reads "
    "'albert.encoder.embedding_hidden_mapping_in' (a linear map of the embeddings' LayerNorm) "
    "at depth 0",
}


def _parent(family: str, **extra: object) -> transformers.PreTrainedModel:
    model_name, config_name, args, _ = FAMILIES[family]
    torch.manual_seed(0)
    values = {k: v for k, v in (LM | args | extra).items() if v is not None}
    config = getattr(transformers, config_name)(**values)
    model = getattr(transformers, model_name)(config).eval().double()
    with torch.no_grad():  # non-trivial norms and biases
        for name, p in model.named_parameters():
            if p.dim() == 1:
                gain = "norm" in name.lower() and name.endswith("weight")
                p.uniform_(0.5, 1.5) if gain else p.uniform_(-0.2, 0.2)
    return model


def _ids(seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 100, (2, 9), generator=torch.Generator().manual_seed(seed))


def _logits(model: nn.Module, ids: torch.Tensor | None = None) -> torch.Tensor:
    with torch.no_grad():
        return model(_ids() if ids is None else ids).logits


def _auto(model: nn.Module) -> type:
    return getattr(transformers, type(model).__name__)


CASES = [pytest.param(f, op, id=f"{f}-{op}") for f in FAMILIES for op in OPS]


@pytest.mark.parametrize(("family", "op"), CASES)
def test_postln_operation(family: str, op: str, tmp_path: Path) -> None:
    parent = _parent(family)
    before = {k: v.clone() for k, v in parent.state_dict().items()}
    expected = OUTCOMES[family, op]
    query = FAMILIES[family][3]
    if expected.startswith("refused: "):
        with pytest.raises(MorphError, match=re.escape(expected.removeprefix("refused: "))):
            OPS[op](parent, query)
    else:
        child, report = OPS[op](parent, query)
        want = _logits(parent)
        torch.testing.assert_close(_logits(child), want, rtol=0, atol=1e-9)
        child.save_pretrained(tmp_path)
        if expected == STOCK:
            assert any("reloads this child exactly" in n for n in report.notes), report.notes
            reloaded = _auto(parent).from_pretrained(tmp_path, dtype=torch.float64).eval()
        else:
            assert any("cannot describe" in n for n in report.notes), report.notes
            with pytest.raises(ValueError, match="does not recognize this architecture"):
                transformers.AutoModel.from_pretrained(tmp_path)
            reloaded = load_grown(tmp_path)
        torch.testing.assert_close(_logits(reloaded), want, rtol=0, atol=1e-9)
    assert all(torch.equal(before[k], v) for k, v in parent.state_dict().items())


def table() -> str:
    """The markdown family × operation table of :data:`OUTCOMES`."""
    return doc_tables.table(
        "post-LN", "test_torch_transformer_postln.py", "family", FAMILIES, OPS, OUTCOMES
    )


def test_postln_table_matches() -> None:
    """docs/supported.md holds the table these tests assert, unchanged."""
    doc_tables.check("post-LN", "test_torch_transformer_postln.py", table())


if __name__ == "__main__":
    print(table())


# ---------------------------------------------------------------------------------------------
# The construction of a new post-LN block


def _layer_norm(z: torch.Tensor, gain: float, eps: float) -> torch.Tensor:
    centred = z - z.mean(-1, keepdim=True)
    return gain * centred / torch.sqrt(centred.pow(2).mean(-1, keepdim=True) + eps)


@pytest.mark.parametrize("eps", [1e-12, 1e-5])
def test_deviation_formula_predicts_the_norm_chain(eps: float) -> None:
    """LN_p(gain c) → LN_a(gain c) → LN_f(gain λ) against LN_p alone, on vectors of variance t:
    the relative deviation is (B/A)·ε/(2(t + ε)) (module docstring), for the chosen c and for
    c = 1, whose deviation at ε = 1e-5 is what makes the small c necessary."""
    gen = torch.Generator().manual_seed(0)
    chosen = _gain(eps, (eps, eps), torch.float64)
    assert chosen == (1.0 if eps == 1e-12 else 2.0**-25)
    for c in {chosen, 1.0}:
        scale, _ = _deviation(c, eps, eps, eps)
        for t in (1e-3, 1e-1, 1.0, 10.0):
            s = torch.randn(4, 256, generator=gen, dtype=torch.float64)
            s = s / s.std(-1, keepdim=True, unbiased=False) * math.sqrt(t)
            want = _layer_norm(s, 1.0, eps)
            got = _layer_norm(_layer_norm(_layer_norm(s, c, eps), c, eps), scale, eps)
            rel = float(((got - want).norm(dim=-1) / want.norm(dim=-1)).max())
            c2 = c * c
            predicted = c2 * (c2 + eps) / (c2 * (c2 + eps) + eps * eps) * eps / (2 * (t + eps))
            assert rel == pytest.approx(predicted, rel=0.05, abs=2e-15), (c, t)
    assert _deviation(chosen, eps, eps, eps)[1] <= 1e-9
    assert _deviation(1.0, 1e-5, 1e-5, 1e-5)[1] > 1e-3 * 1e-3 / T_MIN


@pytest.mark.parametrize(
    ("family", "gain"), [("BERT", 1.0), ("RoBERTa (eps 1e-5)", 2.0**-25)], ids=["BERT", "RoBERTa"]
)
@pytest.mark.parametrize("at", [0, 1, 2])
def test_norm_before_the_new_block_moves_its_affine(family: str, gain: float, at: int) -> None:
    """LN_p gets gain c and bias 0, the new block's first norm gain c and bias 0, its last
    norm λ·γ_p and β_p; every other block is the parent's."""
    parent = _parent(family)
    child, report = add_block(parent, at)
    owner = "bert" if family == "BERT" else "roberta"
    old, new = getattr(parent, owner), getattr(child, owner)
    previous = "embeddings.LayerNorm" if at == 0 else f"encoder.layer.{at - 1}.output.LayerNorm"
    p_old, p_new = old.get_submodule(previous), new.get_submodule(previous)
    block = new.encoder.layer[at]
    scale = _deviation(gain, 1e-12 if family == "BERT" else 1e-5, *(p_old.eps,) * 2)[0]
    for norm in (p_new, block.attention.output.LayerNorm):
        assert torch.all(norm.weight == gain) and not norm.bias.any()
    last = block.output.LayerNorm
    torch.testing.assert_close(last.weight, p_old.weight * scale, rtol=1e-15, atol=0)
    assert torch.equal(last.bias, p_old.bias)
    assert len(new.encoder.layer) == 3 and child.config.num_hidden_layers == 3
    assert report.param_sources[f"{owner}.{previous}.weight"].parent is None
    assert any("post-LN" in n for n in report.notes)
    assert any("train badly" in n for n in report.notes) == (gain < 1)


@pytest.mark.parametrize(
    ("family", "at"),
    [
        ("BERT", 0),
        ("BERT", 1),
        ("RoBERTa (eps 1e-5)", 0),
        ("RoBERTa (eps 1e-5)", 1),
        ("ELECTRA (embedding_size 16)", 2),
        ("DistilBERT", 0),
    ],
)
def test_float32_add_block_rounds_like_the_parent(family: str, at: int) -> None:
    """A float32 child against the float64 parent deviates by at most twice the float32
    parent's own rounding, on inputs other than the probe (16 × 12 token ids: 1.2 at most)."""
    exact = _parent(family)
    parent = copy.deepcopy(exact).float()
    child, report = add_block(parent, at)
    assert report.noise_ratio <= 2.0, report
    for seed in (2, 3, 4):
        ids = torch.randint(0, 100, (16, 12), generator=torch.Generator().manual_seed(seed))
        want = _logits(exact, ids)
        own = float((_logits(parent, ids).double() - want).norm() / want.norm())
        got = float((_logits(child, ids).double() - want).norm() / want.norm())
        assert 0 < own and got <= 2 * own, (seed, got, own)


def test_post_ln_add_block_measured_one_module_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """The per-module measurement (the model whole: the block before the new one changes)."""
    from netmorph_core.torch import pipeline

    monkeypatch.setattr(pipeline, "WHOLE_COPY_LIMIT", 0)
    parent = _parent("RoBERTa (eps 1e-5)")
    child, report = add_block(parent, 1)
    assert report.measured_by == pipeline.STREAMED and report.rel_dev_f64 <= 1e-10
    torch.testing.assert_close(_logits(child), _logits(parent), rtol=0, atol=1e-9)


# ---------------------------------------------------------------------------------------------
# ELECTRA's embedding projection, ALBERT's shared layers


def test_electra_grow_width_grows_the_embedding_projection() -> None:
    parent = _parent("ELECTRA (embedding_size 16)")
    child, _ = grow_width(parent, 64)
    electra = child.electra
    assert electra.embeddings.word_embeddings.weight.shape == (100, 16)
    assert electra.embeddings.LayerNorm.weight.shape == (16,)
    assert electra.embeddings_project.weight.shape == (64, 16)
    w = parent.electra.embeddings_project.weight
    assert torch.equal(electra.embeddings_project.weight, torch.cat([w, w]))
    assert (child.config.embedding_size, child.config.hidden_size) == (16, 64)
    torch.testing.assert_close(_logits(child), _logits(parent), rtol=0, atol=1e-9)


def test_electra_without_projection_keeps_embedding_size_with_the_stream(tmp_path: Path) -> None:
    """embedding_size = hidden_size: no projection, the embeddings write the stream; the
    config's embedding_size follows the width (else a reload would add a projection)."""
    parent = _parent("ELECTRA (embedding_size 16)", embedding_size=32)
    child, _ = grow_width(parent, 64)
    assert child.config.embedding_size == 64 and not hasattr(child.electra, "embeddings_project")
    child.save_pretrained(tmp_path)
    torch.testing.assert_close(_logits(load_grown(tmp_path)), _logits(parent), rtol=0, atol=1e-9)


@pytest.mark.parametrize("family", ["ELECTRA (embedding_size 16)", "ALBERT (embedding_size 16)"])
def test_heads_at_the_same_width_reload_with_load_grown(family: str, tmp_path: Path) -> None:
    """8 heads of head_dim 8 at width 32: the config, which derives head_dim = hidden_size /
    heads, keeps 4 heads; the attention modules record 8; load_grown rebuilds the child. After
    grow_width to 64 the config describes 8 heads again."""
    parent = _parent(family)
    child, report = add_heads(parent, 8)
    torch.testing.assert_close(_logits(child), _logits(parent), rtol=0, atol=1e-9)
    assert child.config.num_attention_heads == 4
    assert any("each attention module records its own" in n for n in report.notes), report.notes
    child.save_pretrained(tmp_path)
    torch.testing.assert_close(_logits(load_grown(tmp_path)), _logits(parent), rtol=0, atol=1e-9)
    child, _ = add_heads(grow_width(parent, 64)[0], 8)
    torch.testing.assert_close(_logits(child), _logits(parent), rtol=0, atol=1e-9)


def _calls(model: nn.Module, name: str) -> int:
    """How many times module ``name`` runs in one forward pass."""
    calls: list[int] = []
    handle = model.get_submodule(name).register_forward_hook(lambda *_: calls.append(1))
    _logits(model)
    handle.remove()
    return len(calls)


@pytest.mark.parametrize("inner", [1, 2])
def test_albert_shared_layers_grow_once_for_every_depth(inner: int, tmp_path: Path) -> None:
    """The shared layer still runs at every depth (3 here), once grown; the config keeps the
    depth and reloads it."""
    parent = _parent("ALBERT (embedding_size 16)", num_hidden_layers=3, inner_group_num=inner)
    layers = "albert.encoder.albert_layer_groups.0.albert_layers"
    child, report = grow_ffn(parent, 96)
    assert len(child.get_submodule(layers)) == inner and child.config.num_hidden_layers == 3
    assert _calls(child, f"{layers}.0") == 3
    for i in range(inner):
        assert child.get_submodule(f"{layers}.{i}.ffn").out_features == 96
    child, report = add_heads(grow_width(child, 64)[0], 8)
    want = _logits(parent)
    torch.testing.assert_close(_logits(child), want, rtol=0, atol=1e-9)
    child.save_pretrained(tmp_path)
    assert any("reloads this child exactly" in n for n in report.notes), report.notes
    reloaded = transformers.AlbertForMaskedLM.from_pretrained(tmp_path, dtype=torch.float64)
    assert reloaded.config.num_hidden_layers == 3
    torch.testing.assert_close(_logits(reloaded.eval()), want, rtol=0, atol=1e-9)


def test_albert_sequence_classifier_reads_the_pooler() -> None:
    """The pooler reads the stream (its columns grow), the classifier reads the pooler."""
    torch.manual_seed(0)
    config = transformers.AlbertConfig(**LM, embedding_size=16, num_labels=3)
    parent = transformers.AlbertForSequenceClassification(config).eval().double()
    child, _ = grow_width(parent, 64)
    assert child.albert.pooler.weight.shape == (32, 64)
    assert child.classifier.weight.shape == (3, 32)
    torch.testing.assert_close(_logits(child), _logits(parent), rtol=0, atol=1e-9)


def test_albert_several_groups_are_refused_by_name() -> None:
    parent = _parent("ALBERT (embedding_size 16)", num_hidden_layers=4, num_hidden_groups=2)
    before = {k: v.clone() for k, v in parent.state_dict().items()}
    with pytest.raises(MorphError, match=re.escape("has 2 layer groups in 'albert.encoder.albert")):
        grow_ffn(parent, 128)
    assert all(torch.equal(before[k], v) for k, v in parent.state_dict().items())


class _Shared(nn.Module):
    """A block (two linear layers) that one ModuleList holds and the forward runs twice."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 8)
        self.stack = nn.Sequential(nn.ModuleList([nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8))]))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        for _ in range(2):
            x = x + self.stack[0][0](x)
        return x


def test_another_shared_block_is_refused_by_name() -> None:
    with pytest.raises(MorphError, match=re.escape("'stack.0.0' runs 2 times in one forward")):
        grow_ffn(_Shared(), 16)


class _Adapters(nn.Module):
    """A list of blocks of which the forward runs one (Zamba2's per-call adapters)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 8)
        self.adapters = nn.ModuleList(
            nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8)) for _ in range(3)
        )

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        return x + self.adapters[0](x)


def test_a_list_whose_last_block_never_runs_is_refused_by_name() -> None:
    with pytest.raises(MorphError, match=re.escape("'adapters.2' does not run in a forward")):
        grow_ffn(_Adapters(), 16)


@pytest.mark.parametrize(
    "model_name",
    [
        "BertForPreTraining",
        "BertForNextSentencePrediction",
        "ElectraForPreTraining",
        "ElectraForMaskedLM",
        "AlbertForPreTraining",
        "DistilBertForMaskedLM",
        "DistilBertForQuestionAnswering",
    ],
)
def test_heads_reading_the_stream_or_the_pooler(model_name: str) -> None:
    """grow_width widens the head layer that reads the stream (masked-LM transform,
    discriminator, pre-classifier, QA outputs) and leaves a classifier of the pooler alone."""
    family = next(f for f, spec in FAMILIES.items() if spec[1][:4] == model_name[:4])
    config_name, args = FAMILIES[family][1], FAMILIES[family][2]
    values = {k: v for k, v in (LM | args).items() if v is not None and k != "num_labels"}
    torch.manual_seed(0)
    config = getattr(transformers, config_name)(**values)
    parent = getattr(transformers, model_name)(config).eval().double()
    child, report = grow_width(parent, 64)
    assert report.rel_dev_f64 <= 1e-12, report
    with torch.no_grad():
        for want, got in zip(parent(_ids()).values(), child(_ids()).values()):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-9)


def test_a_head_reading_the_stream_beside_a_pooler_grows() -> None:
    """LayoutLM's token classifier reads the stream itself although the model keeps its
    pooler (which reads the first token): both grow their input columns."""
    config = transformers.LayoutLMConfig(**LM, num_labels=3)
    torch.manual_seed(0)
    parent = transformers.LayoutLMForTokenClassification(config).eval().double()
    child, report = grow_width(parent, 64)
    assert report.rel_dev_f64 <= 1e-12
    assert child.classifier.in_features == 64 and child.layoutlm.pooler.dense.in_features == 64
    torch.testing.assert_close(_logits(child), _logits(parent), rtol=0, atol=1e-9)
