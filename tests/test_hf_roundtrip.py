"""Grown Hugging Face children leave the process exactly.

Every operation (the transformer operations and the layer operations deepen, widen,
morph_subnet, conv1d_to_linear) × {Llama, Qwen2, Mistral, GPT-2, BERT (masked LM), Gemma2} on
tiny configs:
``save_pretrained`` to a directory, then either the stock ``AutoModelFor….from_pretrained``
reloads the child (logits equal to the in-memory child's within float32 rounding) or — where
the config cannot describe the child — the stock load fails loudly and
:func:`~netmorph_core.torch.load_grown` rebuilds it exactly. The report's notes say which.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path

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
    morph_subnet,
    widen,
)

try:
    transformers = import_transformers()
except ImportError:  # pragma: no cover - the test extra installs it
    pytest.skip("transformers is not installed", allow_module_level=True)

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

F32_ATOL = 1e-5
GQA = dict(
    hidden_size=32,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=64,
    num_hidden_layers=2,
    vocab_size=100,
    max_position_embeddings=32,
)
#: family → (model class, config class, config arguments, Auto class).
FAMILIES = {
    "llama": ("LlamaForCausalLM", "LlamaConfig", GQA, "AutoModelForCausalLM"),
    "qwen2": ("Qwen2ForCausalLM", "Qwen2Config", dict(**GQA, tie_word_embeddings=True), None),
    "mistral": ("MistralForCausalLM", "MistralConfig", GQA, None),
    "gemma2": ("Gemma2ForCausalLM", "Gemma2Config", dict(**GQA, head_dim=8), None),
    "gpt2": (
        "GPT2LMHeadModel",
        "GPT2Config",
        dict(n_embd=32, n_head=4, n_layer=2, vocab_size=100, n_positions=16),
        None,
    ),
    "bert": (
        "BertForMaskedLM",
        "BertConfig",
        dict(
            hidden_size=32,
            num_attention_heads=4,
            intermediate_size=64,
            num_hidden_layers=2,
            vocab_size=100,
            max_position_embeddings=16,
        ),
        "AutoModelForMaskedLM",
    ),
}
LLAMA_LIKE = ("llama", "qwen2", "mistral", "gemma2")
Op = Callable[[torch.nn.Module], tuple[torch.nn.Module, object]]


def _q_proj(family: str) -> str:
    return {
        "gpt2": "transformer.h.0.mlp.c_fc",
        "bert": "bert.encoder.layer.0.attention.self.query",
    }.get(family, "model.layers.0.self_attn.q_proj")


def _ffn_in(family: str) -> str:
    return {
        "gpt2": "transformer.h.0.mlp.c_fc",
        "bert": "bert.encoder.layer.0.intermediate.dense",
    }.get(family, "model.layers.0.mlp.up_proj")


#: op name → (callable, families whose child the stock load reproduces). The layer operations
#: change one layer, which no config describes: the stock load refuses, load_grown rebuilds.
OPS: dict[str, tuple[Callable[[str], Op], tuple[str, ...]]] = {
    "grow_ffn": (lambda f: lambda m: grow_ffn(m, 160), (*LLAMA_LIKE, "gpt2", "bert")),
    "grow_ffn_one_layer": (lambda f: lambda m: grow_ffn(m, 160, layers=1), ()),
    "add_heads": (lambda f: lambda m: add_heads(m, 8), LLAMA_LIKE),
    "add_heads_6": (lambda f: lambda m: add_heads(m, 6), ("qwen2", "mistral")),
    "grow_width": (lambda f: lambda m: grow_width(m, 64 if f == "bert" else 48), LLAMA_LIKE),
    # BERT's masked-LM decoder keeps the parent's width (untied): no config describes it
    "grow_width_then_heads": (
        lambda f: lambda m: add_heads(grow_width(m, 64)[0], 8),
        (*LLAMA_LIKE, "gpt2"),
    ),
    "add_block": (lambda f: lambda m: add_block(m, 1), (*LLAMA_LIKE, "gpt2", "bert")),
    "deepen_projection": (lambda f: lambda m: deepen_projection(m, _q_proj(f)), ()),
    "deepen": (lambda f: lambda m: deepen(m, _ffn_in(f)), ()),
    "widen": (lambda f: lambda m: widen(m, _ffn_in(f), 160), ()),
    "morph_subnet": (
        lambda f: lambda m: morph_subnet(m, _ffn_in(f), [(40, None), (None, None)]),
        (),
    ),
    "conv1d_to_linear": (lambda f: lambda m: conv1d_to_linear(m), ()),
    # the head (tied to the token embedding in Qwen2, Gemma2, GPT-2 and BERT) gets its own copy
    "deepen_head": (
        lambda f: lambda m: deepen(m, "cls.predictions.decoder" if f == "bert" else "lm_head"),
        (),
    ),
}


def _parent(family: str) -> torch.nn.Module:
    model_name, config_name, args, _ = FAMILIES[family]
    torch.manual_seed(0)
    config = getattr(transformers, config_name)(**args)
    model = getattr(transformers, model_name)(config).eval()
    with torch.no_grad():  # non-trivial norms and biases
        for name, p in model.named_parameters():
            if "norm" in name.lower() or ".ln_" in name:
                p.uniform_(0.5, 1.5) if name.endswith("weight") else p.uniform_(-0.2, 0.2)
    return model


def _auto(family: str) -> type:
    return getattr(transformers, FAMILIES[family][3] or "AutoModelForCausalLM")


def _logits(model: torch.nn.Module) -> torch.Tensor:
    ids = torch.randint(0, 100, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model(ids).logits


def _save(child: torch.nn.Module, path: Path) -> None:
    child.save_pretrained(path)


CASES = [
    pytest.param(op, family, id=f"{op}-{family}")
    for op in OPS
    for family in FAMILIES
    # GPT-2 and BERT need heads·head_dim = d_model: their heads grow after the width
    if not (op.startswith("add_heads") and family in ("gpt2", "bert"))
    and (op != "conv1d_to_linear" or family == "gpt2")  # the only family with Conv1D layers
]


@pytest.mark.parametrize(("op", "family"), CASES)
def test_child_round_trips(op: str, family: str, tmp_path: Path) -> None:
    parent = _parent(family)
    make, stock_families = OPS[op]
    child, report = make(family)(parent)
    _save(child, tmp_path)
    expected = _logits(child)
    torch.testing.assert_close(expected, _logits(parent), rtol=0, atol=1e-4)
    if family in stock_families:
        assert any("reloads this child exactly" in n for n in report.notes), report.notes
        reloaded = _auto(family).from_pretrained(tmp_path).eval()
    else:
        assert any("cannot describe" in n for n in report.notes), report.notes
        with pytest.raises(ValueError, match="does not recognize this architecture"):
            _auto(family).from_pretrained(tmp_path)
        reloaded = load_grown(tmp_path)
    torch.testing.assert_close(_logits(reloaded), expected, rtol=0, atol=F32_ATOL)


def test_marked_child_pickles_and_grows_back_to_stock(tmp_path: Path) -> None:
    """A child marked for one layer's wider FFN is stock again once every layer has it."""
    parent = _parent("llama")
    child, _ = grow_ffn(parent, 96, layers=0)
    assert child.config.model_type == "netmorph-llama"
    again = pickle.loads(pickle.dumps(child))
    torch.testing.assert_close(_logits(again), _logits(child), rtol=0, atol=0)
    child, _ = grow_ffn(child, 96, layers=1)
    assert child.config.model_type == "llama"
    assert not hasattr(child.config, "netmorph")
    _save(child, tmp_path)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(_logits(reloaded), _logits(parent), rtol=0, atol=1e-4)


def test_marked_child_refused_at_once_by_its_own_class(tmp_path: Path) -> None:
    """LlamaForCausalLM.from_pretrained (not an Auto class) of a marked child fails before it
    builds anything, naming load_grown, instead of building Llama's default 7B-sized model."""
    child, _ = grow_ffn(_parent("llama"), 96, layers=0)
    _save(child, tmp_path)
    with pytest.raises(AttributeError, match="load_grown"):
        transformers.LlamaForCausalLM.from_pretrained(tmp_path)
    reloaded = load_grown(tmp_path).eval()
    torch.testing.assert_close(_logits(reloaded), _logits(child), rtol=0, atol=1e-5)


def test_width_rescales_the_config_eps_and_gemma_scale() -> None:
    """A non-multiple width: eps·kd/D' in the config; Gemma2's embedding scale √D'."""
    llama, _ = grow_width(_parent("llama"), 48)
    assert llama.config.rms_norm_eps == pytest.approx(1e-6 * 32 / 48, rel=1e-12)
    gemma, report = grow_width(_parent("gemma2"), 48)
    assert gemma.model.embed_tokens.scalar_embed_scale == pytest.approx(48**0.5)
    assert any("embedding scale" in n for n in report.notes)


def test_load_grown_refuses_a_bad_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        load_grown(tmp_path)


def test_a_new_block_beside_a_module_the_blocks_share_reloads_stock(tmp_path: Path) -> None:
    """GPT-1's blocks share one activation module; a block added by copying holds its own, and
    the config still describes the child."""
    config = transformers.OpenAIGPTConfig(n_embd=32, n_head=4, n_layer=2, vocab_size=100)
    torch.manual_seed(0)
    parent = transformers.OpenAIGPTLMHeadModel(config).eval()
    assert parent.transformer.h[0].mlp.act is parent.transformer.h[1].mlp.act
    child, report = add_block(parent, 1)
    assert any("reloads this child exactly" in n for n in report.notes), report.notes
    _save(child, tmp_path)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(_logits(reloaded), _logits(parent), rtol=0, atol=F32_ATOL)


def test_an_eps_field_that_chooses_the_norm_stays_unset(tmp_path: Path) -> None:
    """Cohere2-MoE builds LayerNorms where ``rms_norm_eps`` is None: the child's eps goes to
    ``layer_norm_eps``, and the stock reload builds the same norms."""
    if not hasattr(transformers, "Cohere2MoeConfig"):
        pytest.skip("this transformers has no Cohere2-MoE")
    config = transformers.Cohere2MoeConfig(**GQA, head_dim=8, experts_implementation="eager")
    assert config.rms_norm_eps is None
    torch.manual_seed(0)
    parent = transformers.Cohere2MoeForCausalLM(config).eval()
    child, report = grow_ffn(parent, 96)
    assert child.config.rms_norm_eps is None
    assert any("reloads this child exactly" in n for n in report.notes), report.notes
    _save(child, tmp_path)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, experts_implementation="eager"
    ).eval()
    assert type(reloaded.model.norm) is type(parent.model.norm)
    torch.testing.assert_close(_logits(reloaded), _logits(parent), rtol=0, atol=F32_ATOL)


def test_a_dense_block_list_follows_add_block(tmp_path: Path) -> None:
    """Flint lists its dense blocks (``mlp_only_layers``) whether or not any block is sparse:
    the list follows the new block, and the stock reload builds the same blocks."""
    if not hasattr(transformers, "FlintConfig"):
        pytest.skip("this transformers has no Flint")
    config = transformers.FlintConfig(**GQA, head_dim=8, experts_implementation="eager")
    torch.manual_seed(0)
    parent = transformers.FlintForCausalLM(config).eval()
    child, report = add_block(parent, 1)
    assert child.config.mlp_only_layers == [0, 1, 2]
    assert any("reloads this child exactly" in n for n in report.notes), report.notes
    _save(child, tmp_path)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(_logits(reloaded), _logits(parent), rtol=0, atol=F32_ATOL)


@pytest.mark.parametrize("at", [0, 1, 2])
def test_per_layer_overrides_follow_add_block(at: int, tmp_path: Path) -> None:
    """Gemma 4's full-attention blocks take their head_dim from the config's per-layer
    overrides: the new block gets its template's, the blocks above keep theirs."""
    if not hasattr(transformers, "Gemma4UnifiedTextConfig"):
        pytest.skip("this transformers has no Gemma 4 unified")
    config = transformers.Gemma4UnifiedTextConfig(**GQA, head_dim=8)
    torch.manual_seed(0)
    parent = transformers.Gemma4UnifiedForCausalLM(config).eval()
    child, _ = add_block(parent, at)
    per_layer = [child.config.per_layer_config[i].head_dim for i in range(3)]
    assert per_layer == [layer.self_attn.head_dim for layer in child.model.layers]
    _save(child, tmp_path)
    torch.testing.assert_close(
        _logits(load_grown(tmp_path)), _logits(parent), rtol=0, atol=F32_ATOL
    )


def test_opt_word_embedding_width_follows_grow_width(tmp_path: Path) -> None:
    """OPT projects its token embeddings where ``word_embed_proj_dim`` ≠ hidden_size: the
    field follows the grown embedding, so the stock reload adds no projection."""
    config = transformers.OPTConfig(
        hidden_size=32, num_attention_heads=4, num_hidden_layers=2, ffn_dim=64, vocab_size=100
    )
    torch.manual_seed(0)
    parent = transformers.OPTForCausalLM(config).eval()
    child, report = add_heads(grow_width(parent, 64)[0], 8)
    assert child.config.word_embed_proj_dim == 64
    assert any("reloads this child exactly" in n for n in report.notes), report.notes
    _save(child, tmp_path)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(_logits(reloaded), _logits(parent), rtol=0, atol=F32_ATOL)


@pytest.mark.parametrize("d_model", [45, 64])
def test_opt_with_projections_grows_its_stream_exactly(d_model: int, tmp_path: Path) -> None:
    """With ``word_embed_proj_dim`` ≠ hidden_size, project_in writes the stream and
    project_out reads it before the tied head: the head sees project_out's output, not the
    stream's copies, so the final norm keeps its scale (it was divided by the copies: a child
    at half the parent's logits for d_model = 2d, refused by the measurement)."""
    config = transformers.OPTConfig(
        hidden_size=32,
        word_embed_proj_dim=48,
        num_attention_heads=4,
        num_hidden_layers=2,
        ffn_dim=64,
        vocab_size=100,
    )
    torch.manual_seed(0)
    parent = transformers.OPTForCausalLM(config).double().eval()
    assert parent.model.decoder.project_out is not None
    child, report = grow_width(parent, d_model, seed=0)
    assert report.rel_dev_f64 <= 1e-12
    assert child.model.decoder.project_out.in_features == d_model
    _save(child, tmp_path)
    reloaded = load_grown(tmp_path).double().eval()
    torch.testing.assert_close(_logits(reloaded), _logits(parent), rtol=0, atol=1e-12)


def test_per_layer_overrides_of_no_block_are_refused_by_add_block() -> None:
    """A config shrunk below its per-layer overrides (Gemma 4's defaults name layers 5, 11, …
    of 35; num_hidden_layers set to 2 after) describes no block with them: add_block refuses
    by name instead of failing in transformers' validation."""
    if not hasattr(transformers, "Gemma4UnifiedTextConfig"):
        pytest.skip("this transformers has no Gemma 4 unified")
    config = transformers.Gemma4UnifiedTextConfig()
    for key, value in {**GQA, "head_dim": 8, "vocab_size_per_layer_input": 100}.items():
        setattr(config, key, value)
    config.layer_types = config.layer_types[:2]
    beyond = sorted(i for i in config._heterogeneity_spec.per_layer_overrides if i >= 2)
    assert beyond, "the default config has overrides past layer 1"
    torch.manual_seed(0)
    parent = transformers.Gemma4UnifiedForCausalLM(config).eval()
    with pytest.raises(MorphError, match=rf"per_layer_config overrides layers \[{beyond[0]}, "):
        add_block(parent, 1)
