"""Transformer growth on Hugging Face models built from small configs with random weights.

Llama (grouped-query attention, RMSNorm, SwiGLU), GPT-2 (Conv1D, fused q|k|v, tied head),
BERT (post-LN) and ViT (patch embedding, class token). Every case: the float64 deviation of the
child from the parent on our own inputs, the parent bitwise unchanged, the float32 deviation
reported; the child's config rebuilds the child's architecture where it can describe it.
"""

from __future__ import annotations

import pytest
import torch
from thirdparty import import_transformers

from netmorph_core.torch import (
    MorphError,
    add_block,
    add_heads,
    conv1d_to_linear,
    deepen,
    deepen_projection,
    grow_ffn,
    grow_width,
    load_grown,
    remap_optimizer,
    widen,
)
from netmorph_core.torch.surgery import gather
from netmorph_core.torch.tracing import is_hf_model, node_module, trace_model

try:
    transformers = import_transformers()
except ImportError:  # pragma: no cover - the test extra installs it
    pytest.skip("transformers is not installed", allow_module_level=True)

F64_TOL = 1e-9
F32_TOL = 1e-5
#: Hugging Face's RMSNorm computes in float32 whatever the input dtype: a float64 Llama is only
#: as exact as float32 rounding of the normalised stream.
HF_RMSNORM_TOL = 1e-6


pytestmark = pytest.mark.usefixtures("one_torch_thread")


#: The size every Hugging Face config below shares: width 32, 4 heads, FFN 64, 2 layers.
SMALL = dict(hidden_size=32, num_attention_heads=4, intermediate_size=64, num_hidden_layers=2)
#: Llama and Qwen2: grouped-query attention with 2 key/value heads.
GQA = dict(**SMALL, num_key_value_heads=2, vocab_size=100, max_position_embeddings=32)
#: family → (model class, config class, config arguments); GPT-2 names its sizes its own way.
ARCHITECTURES = {
    "llama": (transformers.LlamaForCausalLM, transformers.LlamaConfig, GQA),
    "gpt2": (
        transformers.GPT2LMHeadModel,
        transformers.GPT2Config,
        dict(
            n_embd=32,
            n_head=4,
            n_layer=2,
            vocab_size=100,
            n_positions=16,
            bos_token_id=0,
            eos_token_id=0,
        ),
    ),
    "bert": (
        transformers.BertForSequenceClassification,
        transformers.BertConfig,
        dict(**SMALL, vocab_size=100, max_position_embeddings=16, num_labels=3),
    ),
    "vit": (
        transformers.ViTForImageClassification,
        transformers.ViTConfig,
        dict(**SMALL, image_size=8, patch_size=4, num_channels=3, num_labels=3),
    ),
    "qwen2": (
        transformers.Qwen2ForCausalLM,
        transformers.Qwen2Config,
        dict(**GQA, tie_word_embeddings=True),
    ),
    # Gemma: norms compute (1 + weight)·n and the head is tied; Gemma2 adds pre/post
    # feed-forward norms.
    "gemma": (transformers.GemmaForCausalLM, transformers.GemmaConfig, dict(**GQA, head_dim=8)),
    "gemma2": (transformers.Gemma2ForCausalLM, transformers.Gemma2Config, dict(**GQA, head_dim=8)),
    # RoBERTa's classifier reads the stream (no pooler); DeiT adds a distillation token.
    "roberta": (
        transformers.RobertaForSequenceClassification,
        transformers.RobertaConfig,
        dict(**SMALL, vocab_size=100, max_position_embeddings=16, num_labels=3, pad_token_id=1),
    ),
    "deit": (
        transformers.DeiTForImageClassification,
        transformers.DeiTConfig,
        dict(**SMALL, image_size=8, patch_size=4, num_channels=3, num_labels=3),
    ),
    # two classifiers outside the encoder, named in no list, read the class and the
    # distillation token
    "deit with teacher": (
        transformers.DeiTForImageClassificationWithTeacher,
        transformers.DeiTConfig,
        dict(**SMALL, image_size=8, patch_size=4, num_channels=3, num_labels=3),
    ),
}


def _model(family: str, dtype: torch.dtype = torch.float64) -> torch.nn.Module:
    torch.manual_seed(0)
    model_class, config_class, config_args = ARCHITECTURES[family]
    model = model_class(config_class(**config_args)).to(dtype).eval()
    with torch.no_grad():  # non-trivial norms, so that a wrong norm rescaling shows
        for name, p in model.named_parameters():
            if "norm" in name.lower() or ".ln_" in name:
                p.uniform_(0.5, 1.5) if name.endswith("weight") else p.uniform_(-0.2, 0.2)
    return model


def _inputs(family: str, dtype: torch.dtype) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    if family in ("vit", "deit", "deit with teacher"):
        return torch.randn(3, 3, 8, 8, generator=gen).to(dtype)
    return torch.randint(0, 100, (3, 9), generator=gen)


def _output(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).logits


def _rel_dev(parent: torch.nn.Module, child: torch.nn.Module, x: torch.Tensor) -> float:
    y, z = _output(parent, x), _output(child, x)
    return float((y - z).abs().max() / y.abs().max())


@pytest.fixture
def exact_rmsnorm(monkeypatch: pytest.MonkeyPatch) -> None:
    """Llama's and Qwen2's RMSNorm computed in the input's dtype (their own forward rounds to
    float32)."""

    def forward(self: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        variance = x.pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(variance + self.variance_epsilon))

    def offset_forward(self: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        return (1.0 + self.weight) * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))

    monkeypatch.setattr(transformers.models.llama.modeling_llama.LlamaRMSNorm, "forward", forward)
    monkeypatch.setattr(transformers.models.qwen2.modeling_qwen2.Qwen2RMSNorm, "forward", forward)
    for gemma in (
        transformers.models.gemma.modeling_gemma,
        transformers.models.gemma2.modeling_gemma2,
    ):
        norm = getattr(gemma, f"{gemma.__name__.rpartition('_')[2].capitalize()}RMSNorm")
        monkeypatch.setattr(norm, "forward", offset_forward)


CASES = {
    "llama": {
        "ffn": lambda m: grow_ffn(m, 68),
        "ffn_one_layer_odd": lambda m: grow_ffn(m, 67, layers=[1]),
        "heads_gqa": lambda m: add_heads(m, 8),
        "heads_new_groups": lambda m: add_heads(m, 6, kv_heads=3),
        "width_any": lambda m: grow_width(m, 45),
        "width_double": lambda m: grow_width(m, 64),
        "block": lambda m: add_block(m, 1),
        "deepen_q": lambda m: deepen_projection(m, "model.layers.0.self_attn.q_proj", width=40),
    },
    "gpt2": {
        "ffn": lambda m: grow_ffn(m, 130),
        "width_any": lambda m: grow_width(m, 45),
        "width_then_heads": lambda m: add_heads(grow_width(m, 48)[0], 6),
        "block": lambda m: add_block(m, 1),
        "deepen_c_attn": lambda m: deepen_projection(m, "transformer.h.0.attn.c_attn", width=40),
        "conv1d_to_linear": lambda m: conv1d_to_linear(m),
    },
    "bert": {
        "ffn": lambda m: grow_ffn(m, 70),
        "width_double": lambda m: grow_width(m, 64),
        "width_then_heads": lambda m: add_heads(grow_width(m, 64)[0], 8),
    },
    "qwen2": {
        "ffn": lambda m: grow_ffn(m, 68),
        "heads_gqa": lambda m: add_heads(m, 6),
        "width_any": lambda m: grow_width(m, 45),
        "block": lambda m: add_block(m, 0),
    },
    "vit": {
        "ffn": lambda m: grow_ffn(m, 70),
        "width_any": lambda m: grow_width(m, 45),
        "width_then_heads": lambda m: add_heads(grow_width(m, 48)[0], 6),
        "block": lambda m: add_block(m, 2),
    },
}
#: Llama and GPT-2 run by default; BERT and ViT with ``pytest -m thirdparty``.
FAST = ("llama", "gpt2")
PARAMS = [
    pytest.param(
        family, op, id=f"{family}-{op}", marks=() if family in FAST else pytest.mark.thirdparty
    )
    for family, ops in CASES.items()
    for op in ops
]


@pytest.mark.parametrize(("family", "op"), PARAMS)
def test_hf_growth_preserves_the_function(family: str, op: str, exact_rmsnorm: None) -> None:
    parent = _model(family)
    before = {k: v.clone() for k, v in parent.state_dict().items()}
    child, report = CASES[family][op](parent)
    assert all(torch.equal(v, before[k]) for k, v in parent.state_dict().items())
    dev = _rel_dev(parent, child, _inputs(family, torch.float64))
    assert dev <= F64_TOL, f"{family} {op}: float64 deviation {dev:.2e}"
    assert report.params_after >= report.params_before
    parent32 = _model(family, torch.float32)
    child32, _ = CASES[family][op](parent32)
    dev32 = _rel_dev(parent32, child32, _inputs(family, torch.float32))
    print(f"{family} {op}: float64 {dev:.1e}, float32 {dev32:.1e}")
    assert dev32 <= F32_TOL


@pytest.mark.parametrize("family", ["gemma", "gemma2"])
@pytest.mark.parametrize("d_model", [45, 64])
def test_gemma_norms_grow_width_exactly(family: str, d_model: int, exact_rmsnorm: None) -> None:
    """Gemma's norms compute (1 + w)·n: the gain rescaled is 1 + w, not w; Gemma2's pre/post
    feed-forward norms are rescaled like the others."""
    parent = _model(family)
    before = {k: v.clone() for k, v in parent.state_dict().items()}
    child, _ = grow_width(parent, d_model)
    assert all(torch.equal(v, before[k]) for k, v in parent.state_dict().items())
    assert _rel_dev(parent, child, _inputs(family, torch.float64)) <= F64_TOL
    assert child.model.layers[0].input_layernorm.weight.shape == (d_model,)


@pytest.mark.parametrize(
    ("family", "d_model"),
    [("roberta", 64), ("deit", 45), ("deit", 64), ("deit with teacher", 45)],
)
def test_stream_read_by_a_head_module_or_written_by_extra_tokens(family: str, d_model: int) -> None:
    """RoBERTa's classifier.dense reads the stream; DeiT's distillation token writes it."""
    parent = _model(family)
    before = {k: v.clone() for k, v in parent.state_dict().items()}
    child, _ = grow_width(parent, d_model)
    assert all(torch.equal(v, before[k]) for k, v in parent.state_dict().items())
    assert _rel_dev(parent, child, _inputs(family, torch.float64)) <= F64_TOL


def test_hf_llama_with_its_own_float32_rmsnorm() -> None:
    """Without the exact norm the float64 deviation is float32 rounding, not the morph's: above
    a float64 bound, within tol="auto"'s 8× of the parent's own noise, whose estimate rounds
    the norms (which compute in float32) at float32; the note says so."""
    parent = _model("llama")
    with pytest.raises(MorphError, match=r"above tol=1e-08"):
        grow_width(parent, 45, tol=1e-8)
    child, report = grow_width(parent, 45)
    assert any("compute in float32 inside the float64 model" in n for n in report.notes)
    assert _rel_dev(parent, child, _inputs("llama", torch.float64)) <= HF_RMSNORM_TOL


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_child_config_rebuilds_the_child(family: str, exact_rmsnorm: None) -> None:
    """Width ×2, heads ×2 (head_dim kept), a new block and a wider FFN: the updated config
    builds the same architecture, which loads the child's weights and computes its function."""
    parent = _model(family)
    child, _ = grow_width(parent, 64)
    child, _ = add_heads(child, 8, **({"kv_heads": 2} if family == "llama" else {}))
    child, _ = add_block(child, 1)
    child, _ = grow_ffn(child, 160)
    rebuilt = type(child)(child.config).to(torch.float64).eval()
    rebuilt.load_state_dict(child.state_dict())
    x = _inputs(family, torch.float64)
    torch.testing.assert_close(_output(rebuilt, x), _output(child, x), rtol=0, atol=1e-12)
    assert _rel_dev(parent, child, x) <= F64_TOL


@pytest.mark.parametrize("family", ["gpt2", "bert"])
def test_add_heads_the_config_cannot_derive_reloads_with_load_grown(family: str, tmp_path) -> None:
    """6 heads of head_dim 8 at d_model 32: a config that derives head_dim = hidden_size / heads
    cannot hold them; it keeps 4 heads, the attention modules record 6, the stock load refuses
    the child and load_grown rebuilds it exactly."""
    parent = _model(family)
    x = _inputs(family, torch.float64)
    child, report = add_heads(parent, 6)
    assert _rel_dev(parent, child, x) <= F64_TOL
    assert child.config.num_attention_heads == parent.config.num_attention_heads
    assert any("each attention module records its own" in n for n in report.notes), report.notes
    assert any("cannot describe" in n for n in report.notes), report.notes
    child.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="does not recognize this architecture"):
        transformers.AutoConfig.from_pretrained(tmp_path)
    torch.testing.assert_close(
        _output(load_grown(tmp_path), x), _output(child, x), rtol=0, atol=1e-12
    )


def test_add_heads_vit_config_records_the_head_dim(tmp_path) -> None:
    """ViT's attention reads ``config.head_dim`` where the config holds one (found by building
    the class): 6 heads of head_dim 8 at d_model 32 are recorded in the config, and the stock
    class reloads the child exactly."""
    parent = _model("vit")
    x = _inputs("vit", torch.float64)
    child, report = add_heads(parent, 6)
    assert _rel_dev(parent, child, x) <= F64_TOL
    assert (child.config.num_attention_heads, child.config.head_dim) == (6, 8)
    assert any("reloads this child exactly" in n for n in report.notes), report.notes
    child.save_pretrained(tmp_path)
    reloaded = type(child).from_pretrained(tmp_path, dtype=torch.float64).eval()
    torch.testing.assert_close(_output(reloaded, x), _output(child, x), rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("family", "call", "match"),
    [
        ("llama", lambda m: add_heads(m, 7), "heads=7 is not a multiple of kv_heads=2"),
        ("llama", lambda m: add_heads(m, 6, kv_heads=6), "cannot keep"),
        ("gpt2", lambda m: add_heads(grow_width(m, 64)[0], 8, kv_heads=4), "kv_heads=4"),
        pytest.param(
            "bert",
            lambda m: grow_width(m, 45),
            "d_model=45 is not a multiple of 32",
            marks=pytest.mark.thirdparty,
        ),
    ],
)
def test_hf_bad_input_is_refused_by_name(family: str, call: object, match: str) -> None:
    parent = _model(family)
    before = {k: v.clone() for k, v in parent.state_dict().items()}
    with pytest.raises(MorphError, match=match):
        call(parent)
    assert all(torch.equal(v, before[k]) for k, v in parent.state_dict().items())


def _in_child_layout(t: torch.Tensor, source: object) -> tuple[torch.Tensor, torch.Tensor]:
    """A parent tensor laid out like the child parameter (zeros at new entries) and the mask
    of the child's old entries."""
    old = torch.ones((), dtype=torch.bool).expand(t.shape)
    for axis, index in enumerate(source.index or ()):
        if index is not None:
            t = gather(t, index, axis, 0.0)
            old = gather(old.to(torch.float64), index, axis, 0.0) > 0
    return t, old.expand(t.shape)


def _lm_loss(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x, labels=x).loss


@pytest.mark.parametrize(
    "grow",
    [
        lambda m: grow_ffn(m, 130),
        lambda m: add_block(m, 1),
        lambda m: widen(m, "transformer.h.1.mlp.c_fc", 150, seed=0),
        lambda m: deepen(m, "transformer.h.1.mlp.c_fc", width=48, seed=0),
    ],
    ids=["ffn", "block", "widen_conv1d", "deepen_conv1d"],
)
def test_gpt2_loss_gradients_and_adam_moments_carried(grow: object) -> None:
    """Staged training's check on GPT-2: after growth the loss, the gradients of every old
    entry and their Adam moments equal the parent's (new entries start at zero), and one Adam
    step moves every old entry as it moves the parent's (Conv1D: W stored (in, out), also
    widened in that layout by ``widen``)."""
    parent = _model("gpt2")
    x = _inputs("gpt2", torch.float64)
    opt = torch.optim.Adam(parent.parameters(), lr=1e-3)
    for _ in range(2):
        opt.zero_grad()
        _lm_loss(parent, x).backward()
        opt.step()
    child, report = grow(parent)
    new_opt = remap_optimizer(opt, parent, child, report=report)
    losses = []
    for model in (parent, child):
        model.zero_grad()
        losses.append(_lm_loss(model, x))
        losses[-1].backward()
    assert abs(float((losses[0] - losses[1]).detach())) <= 1e-5
    parents = dict(parent.named_parameters())
    stepped = {}
    for name, p in child.named_parameters():
        source = report.param_sources[name]
        if source.parent is None:
            assert name not in new_opt.state.get(p, {}) and not new_opt.state.get(p)
            continue
        q = parents[source.parent]
        grad, old = _in_child_layout(q.grad, source)
        torch.testing.assert_close(p.grad[old], grad[old], rtol=0, atol=1e-5)
        for key in ("exp_avg", "exp_avg_sq"):
            moment, _ = _in_child_layout(opt.state[q][key], source)
            torch.testing.assert_close(new_opt.state[p][key], moment, rtol=0, atol=0)
        stepped[name] = (p, q, old, source)
    opt.step()
    new_opt.step()
    for p, q, old, source in stepped.values():
        value, _ = _in_child_layout(q.detach(), source)
        torch.testing.assert_close(p.detach()[old], value[old], rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "family",
    [
        "gpt2",
        pytest.param("llama", marks=pytest.mark.thirdparty),
        pytest.param("bert", marks=pytest.mark.thirdparty),
        pytest.param("vit", marks=pytest.mark.thirdparty),
    ],
)
def test_trace_hf_models(family: str) -> None:
    """torch.fx cannot trace these; trace_model exports them and the graph computes the same
    logits, with each linear call attributed to its module."""
    model = _model(family, torch.float32)
    x = _inputs(family, torch.float32)
    assert is_hf_model(model)
    gm = trace_model(model, (x,))
    torch.testing.assert_close(gm(x)["logits"], _output(model, x))
    owners = {node_module(n) for n in gm.graph.nodes if n.op == "call_function"}
    expected = {
        "llama": "model.layers.0.self_attn.q_proj",
        "gpt2": "transformer.h.0.attn.c_attn",
        "bert": "bert.encoder.layer.0.attention.self.query",
        "vit": "vit.layers.0.attention.q_proj",
    }[family]
    assert expected in owners
    with pytest.raises(ValueError, match="example_inputs is required"):
        trace_model(model)


def test_gpt2_conv1d_reaches_the_generic_deepen() -> None:
    """``deepen`` morphs GPT-2's Conv1D c_fc as the linear layer it is, and the same layer
    after conv1d_to_linear, exactly."""
    parent = _model("gpt2")
    x = _inputs("gpt2", torch.float64)
    child, report = deepen(parent, "transformer.h.0.mlp.c_fc", width=160, probe=x, seed=0)
    assert _rel_dev(parent, child, x) <= F64_TOL and report.rel_dev_f64 <= F64_TOL
    linear, _ = conv1d_to_linear(parent)
    assert isinstance(linear.transformer.h[0].mlp.c_fc, torch.nn.Linear)
    child, report = deepen(linear, "transformer.h.0.mlp.c_fc", width=160, probe=x, seed=0)
    assert _rel_dev(parent, child, x) <= F64_TOL and report.rel_dev_f64 <= F64_TOL
