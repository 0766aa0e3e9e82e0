"""The transformer operations on mixture-of-experts decoders: add_heads, grow_width, add_block
and widen on tiny Mixtral, OLMoE (q/k norms over all heads), Qwen2-MoE (shared expert and gate,
dense blocks mixed in), Qwen3-MoE, Llama 4 (transposed fused experts) and other configs.

Each case grows a parent whose norm gains are redrawn (so they matter), checks the child's
logits against the parent's (float64: 1e-9; float32 where the stock RMSNorm computes in float32
even in a float64 model: within twice the parent's own rounding), that the parent is untouched,
and that ``save_pretrained`` reloads the child: with the stock ``from_pretrained`` where its
config describes it, else the stock load refuses the marked model_type and ``load_grown``
rebuilds it exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from moe_models import SparseMoe
from thirdparty import import_transformers
from torch import nn

from netmorph_core.torch import (
    MorphError,
    add_block,
    add_experts,
    add_heads,
    grow_ffn,
    grow_width,
    load_grown,
    transformer,
    widen,
)
from netmorph_core.torch.moe_find import find_moe
from netmorph_core.torch.moe_layout import trace_moe
from netmorph_core.torch.transformer_layout import describe

try:
    transformers = import_transformers()
except ImportError:  # pragma: no cover - the test extra installs it
    pytest.skip("transformers is not installed", allow_module_level=True)

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

BASE = dict(
    vocab_size=64,
    hidden_size=32,
    intermediate_size=40,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=32,
    num_experts_per_tok=2,
    experts_implementation="eager",  # the default grouped_mm has no float64 kernel
)
#: family → (model class, config class, extra config arguments).
FAMILIES = {
    "Mixtral": ("MixtralForCausalLM", "MixtralConfig", dict(num_local_experts=4)),
    "OLMoE": ("OlmoeForCausalLM", "OlmoeConfig", dict(num_experts=4, eos_token_id=1)),
    "Qwen2-MoE": (
        "Qwen2MoeForCausalLM",
        "Qwen2MoeConfig",
        dict(
            num_experts=4,
            moe_intermediate_size=24,
            shared_expert_intermediate_size=20,
            decoder_sparse_step=2,  # block 0 dense, block 1 a mixture of experts
        ),
    ),
    "Qwen3-MoE": (
        "Qwen3MoeForCausalLM",
        "Qwen3MoeConfig",
        dict(num_experts=4, moe_intermediate_size=24, head_dim=8, mlp_only_layers=[1]),
    ),
    "GLM-4-MoE": (  # block 0 dense; sigmoid routing in float32 with a correction bias
        "Glm4MoeForCausalLM",
        "Glm4MoeConfig",
        dict(
            n_routed_experts=4,
            moe_intermediate_size=24,
            head_dim=8,
            first_k_dense_replace=1,
            n_group=1,
            topk_group=1,
        ),
    ),
    "ERNIE-4.5-MoE": (  # block 0 dense; a score-correction bias in the router
        "Ernie4_5_MoeForCausalLM",
        "Ernie4_5_MoeConfig",
        dict(num_experts=4, moe_intermediate_size=24, head_dim=8),
    ),
    "Llama-4": (  # feed_forward; transposed fused experts, a shared expert; chunked attention
        "Llama4ForCausalLM",
        "Llama4TextConfig",
        dict(
            num_local_experts=4,
            head_dim=8,
            intermediate_size_mlp=40,
            interleave_moe_layer_step=2,  # block 0 dense, block 1 a mixture of experts
            attention_chunk_size=4,
        ),
    ),
    "Granite-MoE": (  # block_sparse_moe, residual and attention multipliers
        "GraniteMoeForCausalLM",
        "GraniteMoeConfig",
        dict(num_local_experts=4, residual_multiplier=0.5, embedding_multiplier=2.0),
    ),
}
OPS = {
    "add_heads": lambda m: add_heads(m, 16, kv_heads=8),
    "add_heads (groups of 4)": lambda m: add_heads(m, 8),
    "grow_width ×2": lambda m: grow_width(m, 64),
    "grow_width 48": lambda m: grow_width(m, 48),
    "add_block": lambda m: add_block(m, 1),
    "add_block (first, zero)": lambda m: add_block(m, 0, method="zero"),
}
STOCK, MARKED = "stock", "load_grown"
#: Cases run on a float32 parent: RMSNorm computes in float32 in a float64 model, so a norm
#: over more coordinates (a width that is not a multiple; OLMoE's q_norm over 8 heads of which
#: 4 new, interleaved with the old in each group) rounds differently.
FLOAT32 = {(f, "grow_width 48") for f in FAMILIES} | {("OLMoE", "add_heads (groups of 4)")}
#: (family, operation) → how the child reloads (default: STOCK).
RELOAD = {
    # OLMoE builds q_norm and k_norm from hidden_size and one eps for every norm: after
    # add_heads they span more heads with a rescaled eps, after grow_width the stream is wider
    # than the queries they normalise
    ("OLMoE", "add_heads"): MARKED,
    ("OLMoE", "add_heads (groups of 4)"): MARKED,
    ("OLMoE", "grow_width ×2"): MARKED,
    ("OLMoE", "grow_width 48"): MARKED,
    # the stream's norms get eps·32/48, the per-head q/k norms keep theirs: two values
    ("Qwen3-MoE", "grow_width 48"): MARKED,
    # Llama 4's q/k L2 norms keep their eps beside the rescaled stream norms': two values
    ("Llama-4", "grow_width 48"): MARKED,
}
IDS = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(1))


def _parent(family: str, dtype: torch.dtype = torch.float64, **extra: object) -> nn.Module:
    model_name, config_name, args = FAMILIES[family]
    torch.manual_seed(0)
    config = getattr(transformers, config_name)(**(BASE | args | extra))
    model = getattr(transformers, model_name)(config).eval().to(dtype)
    with torch.no_grad():  # non-trivial norms
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model


def _logits(model: nn.Module, ids: torch.Tensor = IDS) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


def _reload(path: Path, how: str, dtype: torch.dtype) -> nn.Module:
    auto = transformers.AutoModelForCausalLM
    if how == STOCK:
        return auto.from_pretrained(path, dtype=dtype, experts_implementation="eager").eval()
    with pytest.raises(ValueError, match="does not recognize this architecture"):
        auto.from_pretrained(path)
    reloaded = load_grown(path).eval()
    reloaded.set_experts_implementation("eager")
    return reloaded


CASES = [pytest.param(f, op, id=f"{f}-{op}") for f in FAMILIES for op in OPS]


@pytest.mark.parametrize(("family", "op"), CASES)
def test_moe_operation(family: str, op: str, tmp_path: Path) -> None:
    f32 = (family, op) in FLOAT32
    parent = _parent(family, torch.float32 if f32 else torch.float64)
    before = {k: v.clone() for k, v in parent.state_dict().items()}
    child, report = OPS[op](parent)
    want = _logits(parent)
    torch.testing.assert_close(_logits(child), want, rtol=0, atol=1e-5 if f32 else 1e-9)
    if f32:  # within twice the parent's own float32 rounding
        assert report.noise_ratio <= 2.0, report
    how = RELOAD.get((family, op), STOCK)
    saying = "reloads this child" if how == STOCK else "cannot describe"
    assert any(saying in n for n in report.notes), report.notes
    child.save_pretrained(tmp_path)
    reloaded = _reload(tmp_path, how, parent.dtype)
    torch.testing.assert_close(_logits(reloaded), want, rtol=0, atol=1e-5 if f32 else 1e-9)
    after = parent.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("family", FAMILIES)
def test_layout_sees_attention_and_a_feed_forward_module(family: str) -> None:
    model = _parent(family)
    layout = describe(model)
    ffn = {"Granite-MoE": "block_sparse_moe", "Llama-4": "feed_forward"}.get(family, "mlp")
    assert layout.family.moe and layout.family.ffn_in == () and layout.family.ffn_out == ffn
    assert [b.prefix for b in layout.blocks] == ["model.layers.0", "model.layers.1"]
    assert (layout.blocks[0].heads, layout.blocks[0].kv_heads, layout.blocks[0].head_dim) == (
        4,
        2,
        8,
    )
    assert layout.family.norms == ("input_layernorm", "post_attention_layernorm")


def test_the_structural_trace_finds_the_parts_the_names_give() -> None:
    """Block 0's mixture of experts stands in as a dense feed-forward; the trace finds the
    attention, norms, embedding and final norm without reading a name table."""
    model = _parent("Mixtral")
    stack = trace_moe(model, "model", "layers", 32, "mlp")
    fam = describe(model).family
    assert (stack.attention, stack.qkv, stack.o, stack.norms) == (
        fam.attention,
        fam.qkv,
        fam.o,
        fam.norms,
    )
    assert (stack.ffn_in, stack.ffn_out, stack.writers, stack.final_norm) == (
        (),
        "mlp",
        ("embed_tokens",),
        "norm",
    )
    assert type(model.model.layers[0].mlp).__name__ == "MixtralSparseMoeBlock"  # untouched


@pytest.mark.parametrize(("at", "dense"), [(0, [0, 1]), (1, [0]), (2, [0])])
def test_add_block_lists_the_dense_blocks_in_the_config(at: int, dense: list[int]) -> None:
    """Qwen2-MoE with decoder_sparse_step=2 (block 0 dense): the new block copies its
    neighbour's kind, and the config names the dense blocks explicitly."""
    parent = _parent("Qwen2-MoE")
    child, _ = add_block(parent, at)
    assert child.config.num_hidden_layers == 3
    assert (child.config.mlp_only_layers, child.config.decoder_sparse_step) == (dense, 1)
    sparse = {b.path for b in find_moe(child)}
    assert [f"model.layers.{i}.mlp" in sparse for i in range(3)] == [
        i not in dense for i in range(3)
    ]
    torch.testing.assert_close(_logits(child), _logits(parent), rtol=0, atol=1e-9)


def test_dense_grow_ffn_points_to_the_expert_growth() -> None:
    with pytest.raises(MorphError, match="mixtures of experts: grow them with"):
        transformer.grow_ffn(_parent("Mixtral"), 64)


def _routes(model: nn.Module, ids: torch.Tensor) -> list[torch.Tensor]:
    """Every router's top-k expert indices (sorted per token) on ``ids``."""
    found: list[torch.Tensor] = []
    hooks = [
        m.register_forward_hook(lambda _m, _a, out: found.append(out[2].sort(-1).values))
        for n, m in model.named_modules()
        if n.endswith("mlp.gate")
    ]
    with torch.no_grad():
        model(ids)
    for h in hooks:
        h.remove()
    return found


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("width", [64, 48])
def test_grow_width_keeps_every_routing_choice(dtype: torch.dtype, width: int) -> None:
    """The child's router logits equal the parent's up to rounding: on 1024 tokens per block
    no top-2 choice of 4 experts changes."""
    parent = _parent("Mixtral", dtype)
    child, _ = grow_width(parent, width, tol=None)
    ids = torch.randint(0, 64, (32, 32), generator=torch.Generator().manual_seed(2))
    for old, new in zip(_routes(parent, ids), _routes(child, ids), strict=True):
        assert torch.equal(old, new)


def test_widen_a_shared_expert_layer(tmp_path: Path) -> None:
    """torch.export traces the experts with the "batched_mm" implementation (no branch on the
    routing): widen follows the shared expert's hidden units."""
    parent = _parent("Qwen2-MoE")
    before = {k: v.clone() for k, v in parent.state_dict().items()}
    child, _ = widen(parent, "model.layers.1.mlp.shared_expert.up_proj", 24)
    assert child.model.layers[1].mlp.shared_expert.down_proj.in_features == 24
    torch.testing.assert_close(_logits(child), _logits(parent), rtol=0, atol=1e-9)
    child.save_pretrained(tmp_path)
    reloaded = _reload(tmp_path, MARKED, torch.float64)
    torch.testing.assert_close(_logits(reloaded), _logits(parent), rtol=0, atol=1e-9)
    assert all(torch.equal(before[k], v) for k, v in parent.state_dict().items())


def test_widen_of_attention_is_refused_as_in_dense_models() -> None:
    with pytest.raises(MorphError, match=r"no exact child: .* rotates all.*add_heads"):
        widen(_parent("Mixtral"), "model.layers.0.self_attn.q_proj", 40)


def test_default_experts_implementation_is_measured_and_kept() -> None:
    """A float32 model on the default grouped_mm experts: measured in float64 with "eager",
    the parent and child keep grouped_mm."""
    parent = _parent("Mixtral", torch.float32)
    parent.set_experts_implementation("grouped_mm")
    child, report = grow_width(parent, 64)
    assert report.noise_ratio <= 2.0, report
    assert child.config._experts_implementation == "grouped_mm"
    assert parent.config._experts_implementation == "grouped_mm"


def test_norms_over_as_many_heads_as_q_and_k_follow_their_names() -> None:
    """Multi-head OLMoE (4 query and 4 key/value heads) growing its query heads only: its
    q_norm and k_norm both span 4 heads; its layout is named, not traced, so their names say
    which projection each normalises (float32: its RMSNorm rounds to float32 in any dtype)."""
    parent = _parent("OLMoE", torch.float32, num_key_value_heads=4)
    child, report = add_heads(parent, 8, kv_heads=4)
    torch.testing.assert_close(_logits(child), _logits(parent), rtol=0, atol=1e-5)
    assert report.noise_ratio <= 2.0, report


def test_routers_holding_statistics_or_a_linear_are_recognised() -> None:
    """ERNIE-4.5-MoE's router holds a score-correction bias beside its weight (add_experts
    refuses it by name); Hunyuan's router is a module around a Linear ``wg``."""
    ernie = _parent("ERNIE-4.5-MoE")
    (block,) = find_moe(ernie)
    assert block.router == "model.layers.1.mlp.gate"
    assert block.router_extras == ("model.layers.1.mlp.gate.moe_statics.e_score_correction_bias",)
    with pytest.raises(MorphError, match="per-expert statistics of the router"):
        add_experts(ernie, 2)
    config = transformers.HunYuanMoEV1Config(
        **(BASE | dict(num_experts=4, moe_topk=2, head_dim=8, eos_token_id=1))
    )
    hunyuan = transformers.HunYuanMoEV1ForCausalLM(config)
    assert [b.router for b in find_moe(hunyuan)] == [
        f"model.layers.{i}.mlp.gate.wg" for i in range(2)
    ]


def test_module_list_experts_with_biases_and_a_shared_expert() -> None:
    """Mixtral blocks whose feed-forward is a mixture of ModuleList experts (Linear layers),
    a Linear router with a bias and a shared expert behind a gate: grow_width and add_block
    follow every expert's Linear layers."""
    parent = _parent("Mixtral")
    torch.manual_seed(1)
    for layer in parent.model.layers:
        layer.mlp = SparseMoe(32, 24, 4, 2, router_bias=True, norm_topk_prob=True, shared=20)
    parent = parent.double()
    for name, op in (
        ("grow_width", lambda m: grow_width(m, 64)),
        ("add_block", lambda m: add_block(m, 1)),
    ):
        child, _ = op(parent)
        torch.testing.assert_close(_logits(child), _logits(parent), rtol=0, atol=1e-9, msg=name)
    wide, _ = grow_width(parent, 64)
    expert = wide.model.layers[0].mlp.experts[0]
    assert (expert.w1.in_features, expert.w2.out_features) == (64, 64)
    assert wide.model.layers[0].mlp.router.in_features == 64


def test_llama4_grow_ffn_grows_transposed_experts_and_reloads(tmp_path: Path) -> None:
    """Llama 4's experts hold (E, d, 2I) and (E, I, d) and record ``expert_dim``; its config
    lists the sparse blocks in ``moe_layers``."""
    parent = _parent("Llama-4")
    want = _logits(parent)
    child, report = grow_ffn(parent, 60)
    torch.testing.assert_close(_logits(child), want, rtol=0, atol=1e-9)
    experts = child.model.layers[1].feed_forward.experts
    assert tuple(experts.gate_up_proj.shape) == (4, 32, 120) and experts.expert_dim == 60
    assert any("reloads this child exactly" in n for n in report.notes), report.notes
    child.save_pretrained(tmp_path)
    torch.testing.assert_close(
        _logits(_reload(tmp_path, STOCK, parent.dtype)), want, rtol=0, atol=1e-9
    )
    grown, _ = add_block(parent, 1)
    assert grown.config.moe_layers == [1, 2] and len(grown.config.no_rope_layers) == 3
