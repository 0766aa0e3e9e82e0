"""Encoder–decoder transformers: T5 (ReLU and gated-GELU feed-forward) and BART.

Every operation on a tiny float64 config (d_model 32, 4 heads, 2 + 2 blocks, vocabulary 100;
norm gains, biases and T5's relative attention bias redrawn so that they matter) computes the
parent's logits and encoder output (1e-9) on token ids and decoder ids of other tokens, leaves
the parent untouched and reloads through ``save_pretrained``: the stock ``from_pretrained``
where the config describes the child, else the stock load refuses the marked model_type and
``load_grown`` rebuilds it. What is not supported is refused by name.
"""

from __future__ import annotations

import re
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
from netmorph_core.torch.encdec_layout import describe_encoder_decoder

try:
    transformers = import_transformers()
except ImportError:  # pragma: no cover - the test extra installs it
    pytest.skip("transformers is not installed", allow_module_level=True)

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

STOCK = "stock"
MARKED = "load_grown"
Op = Callable[[torch.nn.Module], tuple[torch.nn.Module, object]]
T5 = dict(vocab_size=100, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
BART = dict(
    d_model=32,
    encoder_layers=2,
    decoder_layers=2,
    encoder_attention_heads=4,
    decoder_attention_heads=4,
    encoder_ffn_dim=64,
    decoder_ffn_dim=64,
    vocab_size=100,
    max_position_embeddings=32,
)


def _redraw(model: torch.nn.Module) -> torch.nn.Module:
    """Norm gains in [0.5, 1.5], biases and T5's relative attention bias in [−0.5, 0.5]."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.uniform_(0.5, 1.5)
            elif p.dim() == 1 or "relative_attention_bias" in name:
                p.uniform_(-0.5, 0.5)
    return model


def _t5(ff: str = "relu", cls: str = "T5ForConditionalGeneration") -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.T5Config(**T5, feed_forward_proj=ff)
    return _redraw(getattr(transformers, cls)(config).eval().double())


def _bart(cls: str = "BartForConditionalGeneration") -> torch.nn.Module:
    torch.manual_seed(0)
    return _redraw(getattr(transformers, cls)(transformers.BartConfig(**BART)).eval().double())


def _mvp() -> torch.nn.Module:
    """BART's layout; its attention reshapes its output to its ``embed_dim`` (heads·head_dim)."""
    torch.manual_seed(0)
    return _redraw(transformers.MvpForConditionalGeneration(transformers.MvpConfig(**BART)))


MODELS: dict[str, Callable[[], torch.nn.Module]] = {
    "t5 relu": _t5,
    "t5 gated-gelu": lambda: _t5("gated-gelu"),
    "bart": _bart,
    "mvp": lambda: _mvp().eval().double(),
    "marian": lambda: _redraw(
        transformers.MarianMTModel(
            transformers.MarianConfig(**BART, pad_token_id=1, decoder_start_token_id=2)
        )
        .eval()
        .double()
    ),
}


def _ids() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randint(0, 100, (2, 7), generator=gen), torch.randint(
        0, 100, (2, 5), generator=gen
    )


def _outputs(model: torch.nn.Module) -> list[torch.Tensor]:
    """The logits (or last hidden state) and, with a decoder, the encoder's output."""
    ids, decoder_ids = _ids()
    with torch.no_grad():
        if "decoder" not in dict(model.named_children()) and not hasattr(model, "model"):
            return [model(input_ids=ids).last_hidden_state]
        out = model(input_ids=ids, decoder_input_ids=decoder_ids)
    first = out.logits if hasattr(out, "logits") else out.last_hidden_state
    return [first, out.encoder_last_hidden_state]


def _same(got: list[torch.Tensor], want: list[torch.Tensor]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-9)


def _reloads(child: torch.nn.Module, report: object, how: str, want: list, path: Path) -> None:
    child.save_pretrained(path)
    auto = transformers.AutoModelForSeq2SeqLM
    if how == STOCK:
        assert any("reloads this child exactly" in n for n in report.notes), report.notes
        reloaded = auto.from_pretrained(path, dtype=torch.float64).eval()
    else:
        assert any("cannot describe" in n for n in report.notes), report.notes
        with pytest.raises(ValueError, match="does not recognize this architecture"):
            auto.from_pretrained(path)
        reloaded = load_grown(path).eval()
    _same(_outputs(reloaded), want)


#: operation → (what it does, how the T5 child reloads).
T5_OPS: dict[str, tuple[Op, str]] = {
    "grow_ffn": (lambda m: grow_ffn(m, 96), STOCK),
    "grow_ffn (decoder only)": (lambda m: grow_ffn(m, 96, layers=[2, 3]), MARKED),
    "grow_ffn (zero)": (lambda m: grow_ffn(m, 97, method="zero"), STOCK),
    "add_heads": (lambda m: add_heads(m, 6), STOCK),  # d_kv is explicit
    "add_heads (encoder only)": (lambda m: add_heads(m, 7, layers=[0, 1]), MARKED),
    "add_block (encoder)": (lambda m: add_block(m, 1), STOCK),
    "add_block (decoder end)": (lambda m: add_block(m, 4), STOCK),
    "add_block (decoder, zero)": (lambda m: add_block(m, "decoder.1", method="zero"), STOCK),
    "add_block (encoder end)": (lambda m: add_block(m, "encoder.2"), STOCK),
    "add_block (decoder 0: the bias moves)": (lambda m: add_block(m, 2), STOCK),
    "add_block (encoder 0, zero)": (lambda m: add_block(m, "encoder.0", method="zero"), STOCK),
    "deepen_projection (cross k)": (
        lambda m: deepen_projection(m, "decoder.block.1.layer.1.EncDecAttention.k"),
        MARKED,
    ),
    "deepen_projection (encoder q)": (
        lambda m: deepen_projection(m, "encoder.block.0.layer.0.SelfAttention.q", width=40),
        MARKED,
    ),
}

BART_OPS: dict[str, tuple[Op, str]] = {
    "add_block (encoder 0: post-LN)": (lambda m: add_block(m, 0), STOCK),
    "add_block (decoder 0)": (lambda m: add_block(m, "decoder.0"), STOCK),
    "add_block (decoder end)": (lambda m: add_block(m, 4), STOCK),
    "grow_ffn": (lambda m: grow_ffn(m, 96), STOCK),
    "grow_ffn (encoder only)": (lambda m: grow_ffn(m, 80, layers=[0, 1]), STOCK),
    "grow_ffn (one block)": (lambda m: grow_ffn(m, 80, layers=3), MARKED),
    "add_heads": (lambda m: add_heads(m, 8), MARKED),  # head_dim = d_model / heads in BART
    "add_heads (6: no stock config)": (lambda m: add_heads(m, 6), MARKED),
    "deepen_projection (cross out)": (
        lambda m: deepen_projection(m, "model.decoder.layers.0.encoder_attn.out_proj"),
        MARKED,
    ),
    "deepen_projection (fc1)": (
        lambda m: deepen_projection(m, "model.encoder.layers.1.fc1"),
        MARKED,
    ),
}

CASES = [
    *((m, op) for m in ("t5 relu", "t5 gated-gelu") for op in T5_OPS),
    *(("bart", op) for op in BART_OPS),
]


@pytest.mark.parametrize(("model", "op"), CASES)
def test_operation_is_exact_and_reloads(model: str, op: str, tmp_path: Path) -> None:
    parent = MODELS[model]()
    before = {k: v.clone() for k, v in parent.state_dict().items()}
    want = _outputs(parent)
    grow, how = (BART_OPS if model == "bart" else T5_OPS)[op]
    child, report = grow(parent)
    assert report.rel_dev_f64 is not None and report.rel_dev_f64 <= 1e-12
    _same(_outputs(child), want)
    assert all(torch.equal(before[k], v) for k, v in parent.state_dict().items())
    _reloads(child, report, how, want, tmp_path)


def test_t5_add_heads_grows_cross_attention_and_each_stacks_bias() -> None:
    parent = _t5("gated-gelu")
    child, _ = add_heads(parent, 6)
    for stack in (child.encoder, child.decoder):
        bias = stack.block[0].layer[0].SelfAttention.relative_attention_bias.weight
        assert bias.shape == (32, 6)
        assert torch.count_nonzero(bias[:, 4:]) == 0  # new heads: one (zero) bias column
    cross = child.decoder.block[1].layer[1].EncDecAttention
    assert (cross.n_heads, cross.inner_dim, cross.k.weight.shape) == (6, 48, (48, 32))
    assert torch.count_nonzero(cross.o.weight[:, 32:]) > 0  # cancelling pairs, not zeros
    assert child.config.num_heads == 6 and child.decoder.config.num_heads == 6


def test_t5_add_block_counts_layers_in_both_configs() -> None:
    child, report = add_block(_t5(), 3)  # global 3: before decoder block 1
    assert len(child.decoder.block) == 3 and len(child.encoder.block) == 2
    assert child.config.num_decoder_layers == 3 and child.config.num_layers == 2
    assert child.decoder.config.num_layers == 3
    assert [b.layer[0].SelfAttention.layer_idx for b in child.decoder.block] == [0, 1, 2]
    assert not child.decoder.block[1].layer[0].SelfAttention.has_relative_attention_bias
    assert report.targets == ("decoder.block.1",)


@pytest.mark.parametrize(
    ("cls", "model_ops"),
    [
        ("T5Model", [lambda m: grow_ffn(m, 96), lambda m: add_heads(m, 6)]),
        ("T5EncoderModel", [lambda m: grow_ffn(m, 96), lambda m: add_heads(m, 8)]),
        ("T5EncoderModel", [lambda m: add_block(m, 2)]),
    ],
)
def test_t5_heads_and_encoder_alone(cls: str, model_ops: list[Op]) -> None:
    parent = _t5("gated-gelu", cls)
    want = _outputs(parent)
    for grow in model_ops:
        child, _ = grow(parent)
        _same(_outputs(child), want)


def _longt5(attention: str, cls: str = "LongT5ForConditionalGeneration") -> torch.nn.Module:
    """LongT5: T5's decoder; its encoder attends locally (tokens within 2 of each other) or
    locally plus to transient global tokens (means of blocks of 4, with their own layer norm
    and relative bias table)."""
    torch.manual_seed(0)
    config = transformers.LongT5Config(
        **T5, local_radius=2, global_block_size=4, encoder_attention_type=attention
    )
    return _redraw(getattr(transformers, cls)(config).eval().double())


LONGT5_OPS: dict[str, Op] = {
    "grow_ffn": lambda m: grow_ffn(m, 96),
    "add_heads": lambda m: add_heads(m, 6),
    "grow_width": lambda m: grow_width(m, 45),
    "add_block (encoder 0: the tables move)": lambda m: add_block(m, 0),
    "add_block (encoder end)": lambda m: add_block(m, "encoder.2"),
}


@pytest.mark.parametrize("op", LONGT5_OPS)
@pytest.mark.parametrize("attention", ["local", "transient-global"])
def test_longt5_encoders_grow_as_t5s_and_reload(attention: str, op: str, tmp_path: Path) -> None:
    parent = _longt5(attention)
    before = {k: v.clone() for k, v in parent.state_dict().items()}
    want = _outputs(parent)
    child, report = LONGT5_OPS[op](parent)
    tol = 1e-6 if op == "grow_width" else 1e-12  # T5's norms: variance in float32
    assert report.rel_dev_f64 <= tol
    assert all(torch.equal(before[k], v) for k, v in parent.state_dict().items())
    kept = 1 if op == "grow_width" else 2  # the logits; the encoder's output, where it keeps d
    for got, ref in zip(_outputs(child)[:kept], want[:kept]):
        torch.testing.assert_close(got, ref, rtol=0, atol=tol * float(ref.abs().max()))
    child.save_pretrained(tmp_path)
    assert any("reloads this child exactly" in n for n in report.notes), report.notes
    again = transformers.AutoModelForSeq2SeqLM.from_pretrained(tmp_path, dtype=torch.float64)
    for got, ref in zip(_outputs(again.eval()), _outputs(child)):
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-12)


def test_longt5_encoder_alone() -> None:
    parent = _longt5("transient-global", "LongT5EncoderModel")
    want = _outputs(parent)
    for grow in (lambda m: add_heads(m, 8), lambda m: add_block(m, 1)):
        child, _ = grow(parent)
        _same(_outputs(child), want)


def test_bart_model_without_head() -> None:
    parent = _bart("BartModel")
    want = _outputs(parent)
    for grow in (lambda m: grow_ffn(m, 96), lambda m: add_heads(m, 8, layers=[2, 3])):
        child, _ = grow(parent)
        _same(_outputs(child), want)


def test_layers_are_global_indices() -> None:
    es = describe_encoder_decoder(_bart())
    assert [s.name for s in es.stacks] == ["encoder", "decoder"] and es.total == 4
    assert es.locate(2)[0].name == "decoder" and es.locate(2)[1] == 0
    child, _ = grow_ffn(_bart(), 80, layers=[1, 2])
    assert child.model.encoder.layers[1].fc1.out_features == 80
    assert child.model.decoder.layers[0].fc1.out_features == 80
    assert child.model.encoder.layers[0].fc1.out_features == 64


@pytest.mark.parametrize(
    ("model", "grow", "error", "message"),
    [
        (
            "marian",
            lambda m: add_block(m, "decoder.0"),
            MorphError,
            "at='decoder.0': marian normalises after each residual sum (post-LN) and adds the "
            "decoder's embeddings unnormalised (no layernorm_embedding)",
        ),
        (
            "t5 relu",
            lambda m: add_heads(m, 6, layers=[0]),
            MorphError,
            "layers: T5 computes the encoder's attention biases once",
        ),
        (
            "t5 relu",
            lambda m: add_heads(m, 8, kv_heads=4),
            MorphError,
            "kv_heads=4: t5 attention is multi-head",
        ),
        (
            "bart",
            lambda m: grow_ffn(m, 96, layers=[4]),
            ValueError,
            "layers must be global block indices in [0, 4) (the encoder's 2 blocks first",
        ),
        ("t5 relu", lambda m: add_block(m, "middle.1"), ValueError, "at='middle.1' must name"),
        ("bart", lambda m: add_heads(m, 4), ValueError, "heads=4 must exceed the 4 heads"),
    ],
)
def test_refusals_name_the_reason(
    model: str, grow: Op, error: type[Exception], message: str
) -> None:
    parent = MODELS[model]()
    before = {k: v.clone() for k, v in parent.state_dict().items()}
    with pytest.raises(error, match=re.escape(message)):
        grow(parent)
    assert all(torch.equal(before[k], v) for k, v in parent.state_dict().items())


@pytest.mark.parametrize(
    ("model", "how"),
    [("t5 relu", STOCK), ("t5 gated-gelu", STOCK), ("bart", MARKED), ("mvp", MARKED)],
)
def test_grow_width_widens_both_stacks(model: str, how: str, tmp_path: Path) -> None:
    """D' = 2d: the stream of both stacks is [x; x], the encoder's output [y; y] (read by the
    cross-attention's keys and values); the tied head's final norm is divided by 2 (and, in
    T5, multiplied by √(D'/d) for the decoder-output scale model_dim^−½)."""
    parent = MODELS[model]()
    before = {k: v.clone() for k, v in parent.state_dict().items()}
    logits, encoded = _outputs(parent)
    child, report = grow_width(parent, 64)
    assert report.rel_dev_f64 <= 1e-12
    got_logits, got_encoded = _outputs(child)
    torch.testing.assert_close(got_logits, logits, rtol=0, atol=1e-9)
    torch.testing.assert_close(got_encoded, encoded.repeat(1, 1, 2), rtol=0, atol=1e-9)
    assert all(torch.equal(before[k], v) for k, v in parent.state_dict().items())
    assert child.config.d_model == 64
    child.save_pretrained(tmp_path)
    auto = transformers.AutoModelForSeq2SeqLM
    if how == STOCK:
        reloaded = auto.from_pretrained(tmp_path, dtype=torch.float64).eval()
    else:
        with pytest.raises(ValueError, match="does not recognize this architecture"):
            auto.from_pretrained(tmp_path)
        reloaded = load_grown(tmp_path).eval()
    torch.testing.assert_close(_outputs(reloaded)[0], logits, rtol=0, atol=1e-9)


@pytest.mark.parametrize(
    ("build", "d_model", "message"),
    [
        (
            _bart,
            48,
            "d_model=48 is not a multiple of 32: bart normalises after each residual sum (post-LN)",
        ),
        (  # Marian's class recomputes its sinusoids from d_model instead of saving them
            MODELS["marian"],
            64,
            "'model.encoder.embed_positions' (MarianSinusoidalPositionalEmbedding) adds to the "
            "stream a position table the model computes from its width (parameter 'weight', "
            "not saved with the weights)",
        ),
    ],
)
def test_grow_width_refusals(
    build: Callable[[], torch.nn.Module], d_model: int, message: str
) -> None:
    parent = build()
    before = {k: v.clone() for k, v in parent.state_dict().items()}
    with pytest.raises(MorphError, match=re.escape(message)):
        grow_width(parent, d_model)
    assert all(torch.equal(before[k], v) for k, v in parent.state_dict().items())


@pytest.mark.parametrize(
    ("build", "d_model"),
    [
        (lambda: _t5(cls="T5Model"), 64),
        (lambda: _t5(cls="T5Model"), 40),
        (lambda: _bart("BartModel"), 64),
        (lambda: _t5(cls="T5EncoderModel"), 64),
    ],
)
def test_a_model_returning_its_streams_returns_them_wider(
    build: Callable[[], torch.nn.Module], d_model: int
) -> None:
    """A model without a head returns its streams as [y; …; y; 0] (k copies, r zeros)."""
    parent = build()
    before = {k: v.clone() for k, v in parent.state_dict().items()}
    child, report = grow_width(parent, d_model)
    copies, extra = divmod(d_model, 32)
    for y, got in zip(_outputs(parent), _outputs(child), strict=True):
        want = torch.cat([y] * copies + [y.new_zeros((*y.shape[:-1], extra))], dim=-1)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6 * y.abs().max())
    assert type(child) is type(parent) and any("the child's is" in n for n in report.notes)
    assert all(torch.equal(before[k], v) for k, v in parent.state_dict().items())


def _mbart() -> torch.nn.Module:
    """MBart: BART's module names, but pre-LN (each stack ends in a final ``layer_norm``)."""
    torch.manual_seed(0)
    config = transformers.MBartConfig(**BART)
    return _redraw(transformers.MBartForConditionalGeneration(config).eval().double())


MBART_OPS: dict[str, tuple[Op, str]] = {
    "add_block (encoder 0)": (lambda m: add_block(m, 0), STOCK),
    "add_block (decoder end)": (lambda m: add_block(m, "decoder.2"), STOCK),
    "add_heads": (lambda m: add_heads(m, 8), MARKED),
    "grow_ffn": (lambda m: grow_ffn(m, 72), STOCK),
}


@pytest.mark.parametrize("op", MBART_OPS)
def test_pre_ln_bart_layout_grows_blocks(op: str, tmp_path: Path) -> None:
    parent = _mbart()
    want = _outputs(parent)
    grow, how = MBART_OPS[op]
    child, report = grow(parent)
    _same(_outputs(child), want)
    _reloads(child, report, how, want, tmp_path)


def test_pre_ln_bart_layout_grow_width() -> None:
    parent = _mbart()
    logits, encoded = _outputs(parent)
    child, _ = grow_width(parent, 64)
    got_logits, got_encoded = _outputs(child)
    torch.testing.assert_close(got_logits, logits, rtol=0, atol=1e-9)
    torch.testing.assert_close(got_encoded, encoded.repeat(1, 1, 2), rtol=0, atol=1e-9)
    with pytest.raises(MorphError, match="mbart normalises with LayerNorm"):
        grow_width(parent, 40)


def _exact_rms(self: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """T5LayerNorm's formula in the input's dtype (its own forward takes mean(x²) in float32)."""
    return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)


def test_grow_width_with_extra_coordinates_where_the_norm_computes_in_float64(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """D' = d + 13: the extra coordinates are zero in the stream and the encoder's output."""
    from transformers.models.t5.modeling_t5 import T5LayerNorm

    monkeypatch.setattr(T5LayerNorm, "forward", _exact_rms)
    parent = _t5("gated-gelu")
    logits, encoded = _outputs(parent)
    child, report = grow_width(parent, 45)
    assert report.rel_dev_f64 <= 1e-12
    got_logits, got_encoded = _outputs(child)
    torch.testing.assert_close(got_logits, logits, rtol=0, atol=1e-9)
    torch.testing.assert_close(got_encoded[..., :32], encoded, rtol=0, atol=1e-9)
    assert torch.count_nonzero(got_encoded[..., 32:]) == 0
    assert child.config.layer_norm_epsilon == pytest.approx(1e-6 * 32 / 45)


def test_t5_add_block_at_a_stacks_position_0_moves_the_bias_table() -> None:
    """Block 0 computes the stack's relative bias for every block: a new block 0 takes the
    parent's table (and computes the same bias), the old block 0 gives it up."""
    parent = _t5()
    table = parent.decoder.block[0].layer[0].SelfAttention.relative_attention_bias.weight
    child, report = add_block(parent, "decoder.0")
    first, second = (child.decoder.block[i].layer[0].SelfAttention for i in (0, 1))
    assert first.has_relative_attention_bias and not second.has_relative_attention_bias
    assert not hasattr(second, "relative_attention_bias")
    assert torch.equal(first.relative_attention_bias.weight, table)
    assert first.relative_attention_bias.weight is not table
    name = "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
    assert report.param_sources[name].parent == name
    _same(_outputs(child), _outputs(parent))


@pytest.mark.parametrize(
    "build",
    [
        lambda: _t5(cls="T5ForSequenceClassification"),
        lambda: _bart("BartForSequenceClassification"),
    ],
)
def test_sequence_classification_heads(
    build: Callable[[], torch.nn.Module], tmp_path: Path
) -> None:
    """The head reads the decoder's stream at the end-of-sequence token (the default probe
    ends every row in it): classification_head.dense is the stream's reader."""
    parent = build()
    ids, decoder_ids = _ids()
    ids[:, -1] = parent.config.eos_token_id

    def logits(model: torch.nn.Module) -> torch.Tensor:
        with torch.no_grad():
            return model(input_ids=ids, decoder_input_ids=decoder_ids[:, :1].expand(2, 7)).logits

    want = logits(parent)
    for grow in (lambda m: grow_ffn(m, 96), lambda m: add_heads(m, 8)):
        torch.testing.assert_close(logits(grow(parent)[0]), want, rtol=0, atol=1e-9)
    child, report = grow_width(parent, 64)
    torch.testing.assert_close(logits(child), want, rtol=0, atol=1e-9)
    assert any("load_grown" in n for n in report.notes), report.notes
    child.save_pretrained(tmp_path)
    torch.testing.assert_close(logits(load_grown(tmp_path).eval()), want, rtol=0, atol=1e-9)


def test_an_encoder_decoder_in_another_layout_is_refused_naming_its_cross_attention() -> None:
    """NLLB-MoE's blocks hold ``ffn`` (experts or a dense MLP), not BART's fc1/fc2."""
    torch.manual_seed(0)
    config = transformers.NllbMoeConfig(**BART, num_experts=2, sparse_step=2)
    parent = transformers.NllbMoeForConditionalGeneration(config).eval().double()
    before = {k: v.clone() for k, v in parent.state_dict().items()}
    for grow in (lambda m: grow_ffn(m, 96), lambda m: add_block(m, 1)):
        with pytest.raises(
            MorphError,
            match=r"NllbMoeForConditionalGeneration is an encoder–decoder model "
            r"\('model\.decoder\.layers\.0\.cross_attention' attends to the encoder's output.*"
            "neither as T5's nor as BART's",
        ):
            grow(parent)
    assert all(torch.equal(before[k], v) for k, v in parent.state_dict().items())


@pytest.mark.parametrize("d_model", [64, 45])
def test_t5_token_classifier_reads_the_encoders_final_norm(d_model: int, tmp_path: Path) -> None:
    """An encoder without a decoder under a head (T5's token classifier): the head reads the
    encoder's final norm, and the model returns no stream."""
    torch.manual_seed(0)
    parent = _redraw(
        transformers.T5ForTokenClassification(transformers.T5Config(**T5, num_labels=3))
        .eval()
        .double()
    )
    ids, _ = _ids()
    with torch.no_grad():
        want = parent(input_ids=ids).logits
    child, report = grow_width(parent, d_model)
    assert not any("returns a residual stream" in n for n in report.notes)
    child.save_pretrained(tmp_path)
    reloaded = (
        load_grown(tmp_path)
        if child.config.model_type.startswith("netmorph")
        else transformers.T5ForTokenClassification.from_pretrained(tmp_path, dtype=torch.float64)
    )
    for model in (child, reloaded.eval()):
        with torch.no_grad():  # T5's norms compute their variance in float32
            torch.testing.assert_close(model(input_ids=ids).logits, want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("at", [1, "decoder.1"])
def test_a_language_models_config_counts_the_new_block(at: object, tmp_path: Path) -> None:
    """Florence-2 holds a BART as its language model, whose own config counts each stack's
    layers: add_block writes the new count there, so the child reloads with the stock class."""
    if not hasattr(transformers, "Florence2ForConditionalGeneration"):
        pytest.skip("this transformers has no Florence-2")
    vision = dict(embed_dim=[16, 32, 48, 64], depths=[1, 1, 1, 1], num_heads=[1, 2, 3, 4])
    config = transformers.Florence2Config(
        text_config=dict(BART, vocab_size=200, max_position_embeddings=64),
        vision_config=dict(vision, projection_dim=32),
    )
    torch.manual_seed(0)
    parent = transformers.Florence2ForConditionalGeneration(config).eval().double()
    ids = torch.randint(0, 100, (1, 8), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = parent(input_ids=ids).logits
    child, report = add_block(parent, at, probe=(ids,))
    assert any("reloads this child exactly" in n for n in report.notes), report.notes
    child.save_pretrained(tmp_path)
    reloaded = transformers.Florence2ForConditionalGeneration.from_pretrained(
        tmp_path, dtype=torch.float64
    ).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, want, rtol=0, atol=1e-9)
