"""``widen`` of a query, key or value projection under rotary position embeddings: where the
attention rotates a part of each head fixed by its own width (Phi, StableLM, GPT-NeoX, GPT-J)
or by the width of its cos/sin table (Phi-3), the new coordinates join the pass-through part
and the child is exact in float64 (real forward passes, cached generation, the parent
unchanged, the stock ``from_pretrained`` refusing the marked config and ``load_grown``
rebuilding the child exactly); where it rotates every coordinate with one table shared by all
blocks (Llama, Mistral, Cohere), or normalises the heads' coordinates (Qwen3, OLMo-2,
StableLM's ``qk_layernorm``), no exact child exists and the refusal says so."""

from __future__ import annotations

from pathlib import Path

import doc_tables
import pytest

torch = pytest.importorskip("torch")
from thirdparty import import_transformers  # noqa: E402

from netmorph_core.torch import MorphError, load_grown, widen  # noqa: E402

try:
    transformers = import_transformers()
except ImportError:
    pytest.skip("transformers is not installed", allow_module_level=True)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LM = dict(
    hidden_size=32,
    intermediate_size=64,
    num_attention_heads=4,
    num_hidden_layers=2,
    vocab_size=100,
    max_position_embeddings=64,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)
GQA = dict(LM, num_key_value_heads=2)
#: model → (class, config class, config, the projection widened, its width, rotated width):
#: 4 heads (2 key/value heads) of head_dim 8 grow to 9 (a fused layer: 12 row blocks).
EXACT = {
    "Phi (partial_rotary_factor 0.5)": (
        "PhiForCausalLM",
        "PhiConfig",
        LM,
        "model.layers.0.self_attn.q_proj",
        36,
        4,
    ),
    "StableLM (a quarter rotary, GQA keys)": (
        "StableLmForCausalLM",
        "StableLmConfig",
        GQA,
        "model.layers.1.self_attn.k_proj",
        18,
        2,
    ),
    "GPT-NeoX (partial rotary, fused [q_h; k_h; v_h])": (
        "GPTNeoXForCausalLM",
        "GPTNeoXConfig",
        LM,
        "gpt_neox.layers.0.attention.query_key_value",
        108,
        2,
    ),
    "GPT-J (rotary_dim, interleaved pairs)": (
        "GPTJForCausalLM",
        "GPTJConfig",
        dict(
            n_embd=32,
            n_head=4,
            n_layer=2,
            rotary_dim=4,
            vocab_size=100,
            n_positions=64,
            n_inner=64,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
        ),
        "transformer.h.1.attn.v_proj",
        36,
        4,
    ),
    "Phi-3 (full rotary split by the table's width, fused qkv)": (
        "Phi3ForCausalLM",
        "Phi3Config",
        GQA,
        "model.layers.0.self_attn.qkv_proj",
        72,
        8,
    ),
}
#: model → (class, config class, config, the projection widened, width, message fragment).
REFUSED = {
    "Mistral (full rotary)": (
        "MistralForCausalLM",
        "MistralConfig",
        GQA,
        "model.layers.0.self_attn.q_proj",
        36,
        r"no exact child: 'model\.rotary_emb' rotates all 8 coordinates",
    ),
    "Llama (full rotary, twice the head_dim)": (
        "LlamaForCausalLM",
        "LlamaConfig",
        GQA,
        "model.layers.1.self_attn.k_proj",
        32,
        r"a head of 16 coordinates through it, so that head would need a table of its own",
    ),
    "Cohere (full rotary, interleaved)": (
        "CohereForCausalLM",
        "CohereConfig",
        GQA,
        "model.layers.0.self_attn.v_proj",
        18,
        r"no exact child: 'model\.rotary_emb'.*add heads instead \(add_heads\)",
    ),
    "RoFormer (sinusoidal rotary table of the heads' width)": (
        "RoFormerForMaskedLM",
        "RoFormerConfig",
        dict(LM, rotary_value=True),
        "roformer.encoder.layer.1.attention.self.value",
        48,
        r"no exact child: 'roformer\.encoder\.embed_positions' rotates all 8 coordinates",
    ),
    "Qwen3 (q_norm, k_norm per head)": (
        "Qwen3ForCausalLM",
        "Qwen3Config",
        dict(GQA, head_dim=8),
        "model.layers.0.self_attn.q_proj",
        36,
        r"no exact child: model\.layers\.0\.self_attn\.q_norm normalises the heads'",
    ),
    "OLMo-2 (q_norm over the whole query)": (
        "Olmo2ForCausalLM",
        "Olmo2Config",
        GQA,
        "model.layers.0.self_attn.k_proj",
        18,
        r"no exact child: model\.layers\.0\.self_attn\.q_norm normalises",
    ),
    "StableLM (qk_layernorm)": (
        "StableLmForCausalLM",
        "StableLmConfig",
        dict(GQA, qk_layernorm=True),
        "model.layers.0.self_attn.q_proj",
        36,
        r"no exact child: model\.layers\.0\.self_attn\.q_layernorm",
    ),
}


def table() -> str:
    """The table of docs/supported.md: each model's outcome, as the tests below assert it."""
    outcomes = {}
    for name, (*_, at, width, rotated) in EXACT.items():
        layer = at.rpartition(".")[2]
        outcomes[name, "widen"] = (
            f"exact, `load_grown` (`{layer}` to {width}: the first {rotated} coordinates of "
            "each head rotated, the new one passes through)"
        )
    for name, (*_, at, width, _) in REFUSED.items():
        layer = at.rpartition(".")[2]
        outcomes[name, "widen"] = f"refused (`{layer}` to {width}): “no exact child”"
    rows = [*EXACT, *REFUSED]
    return doc_tables.table(
        "rotary widen", "test_torch_head_dim_rotary.py", "model", rows, ["widen"], outcomes
    )


def test_rotary_table_matches() -> None:
    """docs/supported.md holds the table these tests assert, unchanged."""
    doc_tables.check("rotary widen", "test_torch_head_dim_rotary.py", table())


if __name__ == "__main__":
    print(table())


def _model(class_name: str, config_name: str, config: dict) -> torch.nn.Module:
    """The float64 model, its weights redrawn of scale 0.2 (biases 0.1) so that a rotation
    of the wrong coordinates would show far above rounding."""
    torch.manual_seed(0)
    model = getattr(transformers, class_name)(getattr(transformers, config_name)(**config))
    with torch.no_grad():
        for key, p in model.named_parameters():
            if "norm" not in key.lower():
                p.normal_(0.0, 0.2 if p.dim() > 1 else 0.1)
    return model.double().eval()


def _ids() -> torch.Tensor:
    return torch.randint(3, 100, (2, 11), generator=torch.Generator().manual_seed(1))


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(_ids()).logits


def _generated(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy tokens and the logits of every step, computed with the key/value cache."""
    out = model.generate(
        _ids()[:1],
        max_new_tokens=5,
        do_sample=False,
        use_cache=True,
        return_dict_in_generate=True,
        output_logits=True,
    )
    return out.sequences, torch.stack(out.logits)


@pytest.mark.parametrize("name", EXACT)
def test_new_coordinates_pass_through_the_rotation(name: str, tmp_path: Path) -> None:
    class_name, config_name, config, at, width, rotated = EXACT[name]
    parent = _model(class_name, config_name, config)
    before = {k: v.clone() for k, v in parent.state_dict().items()}
    want, (tokens, steps) = _logits(parent), _generated(parent)
    child, report = widen(parent, at, width)
    assert child.get_submodule(at).out_features == width
    assert any("grows from head_dim 8 to 9" in n for n in report.notes), report.notes
    assert any(f"rotated first {rotated} coordinates" in n for n in report.notes), report.notes
    torch.testing.assert_close(_logits(child), want, rtol=0, atol=1e-9 * want.abs().max())
    got_tokens, got_steps = _generated(child)
    assert torch.equal(got_tokens, tokens)
    torch.testing.assert_close(got_steps, steps, rtol=0, atol=1e-9 * steps.abs().max())
    assert all(torch.equal(before[k], v) for k, v in parent.state_dict().items())
    child.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="does not recognize this architecture"):
        transformers.AutoConfig.from_pretrained(tmp_path)  # the marked model_type
    torch.testing.assert_close(
        _logits(load_grown(tmp_path)), want, rtol=0, atol=1e-9 * want.abs().max()
    )


def test_the_rotated_part_keeps_its_rows_and_the_new_keys_are_zero() -> None:
    """GPT-J's rotated pairs (the first rotary_dim rows of each head, interleaved) stay in
    place; the new key coordinates of each head are zero."""
    class_name, config_name, config = EXACT["GPT-J (rotary_dim, interleaved pairs)"][:3]
    parent = _model(class_name, config_name, config)
    child, _ = widen(parent, "transformer.h.0.attn.k_proj", 36)
    old = parent.transformer.h[0].attn.k_proj.weight.view(4, 8, 32)
    new = child.transformer.h[0].attn.k_proj.weight.view(4, 9, 32)
    assert torch.equal(new[:, :8], old) and torch.count_nonzero(new[:, 8:]) == 0
    assert child.transformer.h[0].attn.rotary_dim == 4


@pytest.mark.parametrize("name", REFUSED)
def test_no_exact_child_is_refused_by_name(name: str) -> None:
    class_name, config_name, config, at, width, match = REFUSED[name]
    parent = _model(class_name, config_name, config)
    before = {k: v.clone() for k, v in parent.state_dict().items()}
    with pytest.raises(MorphError, match=match):
        widen(parent, at, width)
    assert all(torch.equal(before[k], v) for k, v in parent.state_dict().items())


def test_a_float32_child_stays_within_the_parents_rounding() -> None:
    """Phi in float32: the child's deviation from the float64 parent is within twice the
    float32 parent's own (the rotated part and its table are the parent's, bit for bit)."""
    class_name, config_name, config, at, width, _ = EXACT["Phi (partial_rotary_factor 0.5)"]
    parent = _model(class_name, config_name, config)
    want = _logits(parent)
    parent32 = parent.float()
    child, _ = widen(parent32, at, width)
    assert child.get_submodule(at).weight.dtype == torch.float32
    own = (_logits(parent32).double() - want).abs().max()
    assert 0 < own < 1e-5 * want.abs().max()
    assert (_logits(child).double() - want).abs().max() <= 2 * own


def test_a_norm_of_the_stream_inside_the_attention_is_no_head_norm() -> None:
    """ALBERT's attention module holds the block's LayerNorm over the stream, which the new
    head coordinates never reach: its heads grow exactly."""
    parent = _model(
        "AlbertForMaskedLM", "AlbertConfig", dict(LM, embedding_size=16, num_hidden_layers=2)
    )
    at = "albert.encoder.albert_layer_groups.0.albert_layers.0.attention.query"
    want = _logits(parent)
    child, _ = widen(parent, at, 36)
    assert isinstance(child.get_submodule(at.replace("query", "LayerNorm")), torch.nn.LayerNorm)
    torch.testing.assert_close(_logits(child), want, rtol=0, atol=1e-9 * want.abs().max())


@pytest.mark.parametrize(
    "rope",
    [
        dict(rope_type="dynamic", factor=2.0),
        dict(rope_type="yarn", factor=2.0),
        dict(
            rope_type="longrope",
            short_factor=[1.0, 1.1],
            long_factor=[1.5, 2.0],
            original_max_position_embeddings=8,
        ),
    ],
    ids=lambda rope: rope["rope_type"],
)
def test_scaled_rope_types_keep_their_table(rope: dict, tmp_path: Path) -> None:
    """Phi with a rope type whose frequencies depend on the table's width and on the sequence
    length: the child's table is the parent's, also past max_position_embeddings (16) where
    dynamic NTK rebuilds it, and after reloading."""
    params = dict(rope, rope_theta=10000.0, partial_rotary_factor=0.5)
    config = dict(LM, max_position_embeddings=16, rope_parameters=params)
    parent = _model("PhiForCausalLM", "PhiConfig", config)
    child, _ = widen(parent, "model.layers.1.self_attn.k_proj", 36)
    child.save_pretrained(tmp_path)  # before a long forward updates a dynamic table in place
    ids = torch.randint(3, 100, (1, 40), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = parent(ids).logits
        for model in (child, load_grown(tmp_path)):
            torch.testing.assert_close(
                model(ids).logits, want, rtol=0, atol=1e-9 * want.abs().max()
            )
