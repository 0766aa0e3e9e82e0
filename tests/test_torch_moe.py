"""Mixture-of-experts growth: recognition by structure, grow_ffn on every expert,
add_experts, upcycle; exact in float64, within the parent's own rounding in float32, the
parent untouched, typed refusals, and the save_pretrained → from_pretrained round trip.

Tiny configs (2 layers, d 32, 4 experts, top-2) of Mixtral, Qwen2-MoE and OLMoE, whose
transformers ≥ 5 experts are fused 3-D parameters, and :class:`moe_models.TinyMoeLM`
(ModuleList experts, a Linear router with a bias)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from moe_models import TinyMoeLM
from thirdparty import import_transformers
from torch import nn

from netmorph_core.torch import MorphError, add_experts, grow_ffn, moe, moe_find, upcycle
from netmorph_core.torch.models import LlamaStyle

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
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=32,
)
#: family → (model class, config class, extra config arguments).
FAMILIES = {
    "mixtral": ("MixtralForCausalLM", "MixtralConfig", dict(num_local_experts=4)),
    "qwen2_moe": (
        "Qwen2MoeForCausalLM",
        "Qwen2MoeConfig",
        dict(num_experts=4, moe_intermediate_size=24, shared_expert_intermediate_size=40),
    ),
    "olmoe": ("OlmoeForCausalLM", "OlmoeConfig", dict(num_experts=4, eos_token_id=1)),
}
#: dense family → (config class, model class, its upcycled model class).
DENSE = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", "MixtralForCausalLM"),
    "mistral": ("MistralConfig", "MistralForCausalLM", "MixtralForCausalLM"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", "Qwen2MoeForCausalLM"),
}
IDS = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(1))


def _hf(family: str, dtype: torch.dtype = torch.float64, **extra: object) -> nn.Module:
    model_name, config_name, args = FAMILIES[family]
    config = getattr(transformers, config_name)(
        **BASE, **args, num_experts_per_tok=2, **extra, experts_implementation="eager"
    )
    torch.manual_seed(0)
    model = getattr(transformers, model_name)(config).eval()
    with torch.no_grad():  # a router that routes, non-trivial norms
        for name, p in model.named_parameters():
            if name.endswith("mlp.gate.weight"):
                p.normal_(0.0, 0.5)
            elif "norm" in name:
                p.uniform_(0.5, 1.5)
    return model.to(dtype)


def _llama(family: str = "llama", dtype: torch.dtype = torch.float64, **extra: object) -> nn.Module:
    config_name, model_name = DENSE[family][:2]
    torch.manual_seed(0)
    config = getattr(transformers, config_name)(**BASE, **extra)
    model = getattr(transformers, model_name)(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
            elif name.endswith("bias"):
                p.uniform_(-0.2, 0.2)
    return model.to(dtype)


def _tiny(dtype: torch.dtype = torch.float64, **kw: object) -> nn.Module:
    torch.manual_seed(0)
    return TinyMoeLM(**kw).to(dtype).eval()


def _logits(model: nn.Module, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    with torch.no_grad():
        out = model(IDS)
    return (out.logits if hasattr(out, "logits") else out).to(dtype)


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: t.clone() for k, t in model.state_dict().items()}


def _unchanged(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    for k, t in before.items():
        assert torch.equal(after[k], t), k


# ---------------------------------------------------------------------------------------------
# Recognition


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_hugging_face_moe_blocks_are_found_by_structure(family: str) -> None:
    blocks = moe.find_moe(_hf(family))
    assert [b.path for b in blocks] == ["model.layers.0.mlp", "model.layers.1.mlp"]
    b = blocks[0]
    assert (b.count, b.top_k, b.fused, b.gated, b.router_bias) == (4, 2, True, True, False)
    assert b.hidden == (24 if family == "qwen2_moe" else 48)
    assert b.renormalise is (family == "mixtral")  # the others: norm_topk_prob=False
    assert [p for p, _ in b.shared] == (
        ["model.layers.0.mlp.shared_expert"] if family == "qwen2_moe" else []
    )
    assert b.shared_gate == ("model.layers.0.mlp.shared_expert_gate" if b.shared else None)


def test_module_list_experts_are_found_and_dense_models_have_none() -> None:
    (b, _) = moe.find_moe(_tiny(shared=20))
    assert (b.router, b.experts, b.fused, b.router_bias, b.top_k) == (
        "layers.0.mlp.router",
        "layers.0.mlp.experts",
        False,
        True,
        2,
    )
    assert b.experts_mlp == moe.Mlp(("w1", "w3"), "w2", 24)
    assert b.shared[0][1].hidden == 20
    assert moe.find_moe(LlamaStyle(vocab=32, dim=16, hidden=24)) == ()
    with pytest.raises(TypeError, match=r"model must be a torch\.nn\.Module"):
        moe.find_moe("model")


class _OddExperts(nn.Module):
    """Fused experts with biases (a layout the adapter does not follow)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate_up_proj = nn.Parameter(torch.zeros(4, 48, 32))
        self.down_proj = nn.Parameter(torch.zeros(4, 32, 24))
        self.has_bias = True


def test_unfollowed_parts_are_refused_by_name() -> None:
    model = _hf("mixtral")
    model.model.layers[1].mlp.experts = _OddExperts().double()
    with pytest.raises(MorphError, match=r"'model\.layers\.1\.mlp\.experts' \(_OddExperts\)"):
        grow_ffn(model, 60)
    model = _tiny()
    model.layers[0].mlp.extra = nn.LayerNorm(16)
    with pytest.raises(MorphError, match=r"'layers\.0\.mlp\.extra' \(LayerNorm\)"):
        grow_ffn(model, 30)


def test_experts_as_wide_as_the_stream_are_told_by_their_output_name() -> None:
    """Experts whose hidden size is d: shapes cannot tell input from output layers, the
    layer named as an output (``w2``) is; three d × d layers named otherwise are no MLP."""
    model = _tiny(hidden=16)
    assert [b.experts_mlp for b in moe.find_moe(model)] == [
        moe_find.Mlp(("w1", "w3"), "w2", 16)
    ] * 2
    before, want = _state(model), _logits(model)
    child, _ = grow_ffn(model, 30)
    torch.testing.assert_close(_logits(child), want, rtol=0, atol=1e-9 * float(want.abs().max()))
    _unchanged(model, before)
    anonymous = nn.Module()
    for name in ("a", "b", "c"):
        setattr(anonymous, name, nn.Linear(16, 16))
    assert moe_find.mlp_layout(anonymous, 16) is None


# ---------------------------------------------------------------------------------------------
# grow_ffn on every expert


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_grow_ffn_grows_every_expert_exactly(family: str) -> None:
    parent = _hf(family)
    before = _state(parent)
    child, report = grow_ffn(parent, 60, seed=3)
    _unchanged(parent, before)
    assert parent.config._experts_implementation == "eager"  # the parent's own, restored
    torch.testing.assert_close(_logits(child), _logits(parent), rtol=0, atol=1e-12)
    assert report.rel_dev_f64 <= 1e-12
    for block in child.model.layers:
        experts = block.mlp.experts
        assert tuple(experts.gate_up_proj.shape) == (4, 120, 32)
        assert tuple(experts.down_proj.shape) == (4, 32, 60)
        assert experts.intermediate_dim == 60
        new_down = experts.down_proj[:, :, -12:]
        assert bool((new_down != 0).all()) and bool((experts.gate_up_proj != 0).all())
        torch.testing.assert_close(new_down.sum(-1), torch.zeros_like(new_down[..., 0]))
    field = "moe_intermediate_size" if family == "qwen2_moe" else "intermediate_size"
    assert getattr(child.config, field) == 60
    if family == "qwen2_moe":  # the shared expert grows in proportion, 40·60/24
        assert child.model.layers[0].mlp.shared_expert.down_proj.in_features == 100
        assert child.config.shared_expert_intermediate_size == 100
        assert child.config.intermediate_size == 48
    assert any("reloads this child exactly" in n for n in report.notes), report.notes


def test_the_default_experts_implementation_is_measured_eager_and_kept() -> None:
    """transformers' default grouped_mm has no float64 kernel: the measurement runs eager,
    the parent keeps its implementation and the child gets it."""
    config = transformers.MixtralConfig(**BASE, num_local_experts=4)
    torch.manual_seed(0)
    parent = transformers.MixtralForCausalLM(config).eval()
    implementation = parent.config._experts_implementation
    child, report = grow_ffn(parent, 60)
    assert parent.config._experts_implementation == implementation
    assert child.config._experts_implementation == implementation
    assert report.noise_ratio is not None and report.noise_ratio <= 2.0
    assert any("top-2 of 4 experts, renormalised" in n for n in report.notes), report.notes


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_grow_ffn_float32_within_the_parents_rounding(family: str) -> None:
    parent = _hf(family, torch.float32)
    child, report = grow_ffn(parent, 60)
    assert report.dtype == "float32"
    assert report.noise_ratio is not None and report.noise_ratio <= 2.0
    assert child.model.layers[0].mlp.experts.gate_up_proj.dtype == torch.float32


def test_grow_ffn_zero_method_shared_width_and_module_list_experts() -> None:
    for norm in (True, False):
        parent = _tiny(shared=20, norm_topk_prob=norm)
        before = _state(parent)
        child, report = grow_ffn(parent, 31, shared_width=27, method="zero")
        _unchanged(parent, before)
        torch.testing.assert_close(_logits(child), _logits(parent), rtol=0, atol=1e-12)
        mlp = child.layers[1].mlp
        assert all(e.w1.out_features == 31 and e.w2.in_features == 31 for e in mlp.experts)
        assert not bool(mlp.experts[2].w2.weight[:, 24:].any())
        assert mlp.shared_expert.w2.in_features == 27
    child, report = grow_ffn(_tiny(), 25)
    assert any("no partner" in n for n in report.notes)
    torch.testing.assert_close(_logits(child), _logits(_tiny()), rtol=0, atol=1e-12)


def test_grow_ffn_in_place_consumes_the_parent() -> None:
    reference = _logits(_hf("olmoe"))
    model = _hf("olmoe")
    child, report = grow_ffn(model, 60, inplace=True)
    assert child is model and model.model.layers[0].mlp.experts.down_proj.shape[2] == 60
    assert report.measured_by == "float64 per module"
    torch.testing.assert_close(_logits(child), reference, rtol=0, atol=1e-12)


def test_grow_ffn_leaves_dense_blocks_of_a_mixed_stack() -> None:
    parent = _hf("qwen2_moe", decoder_sparse_step=2)  # block 0 dense, block 1 MoE
    child, _ = grow_ffn(parent, 36)
    assert child.model.layers[0].mlp.down_proj.in_features == 48
    assert child.model.layers[1].mlp.experts.down_proj.shape[2] == 36
    torch.testing.assert_close(_logits(child), _logits(parent), rtol=0, atol=1e-12)


def test_grow_ffn_typed_errors() -> None:
    model = _hf("mixtral")
    with pytest.raises(ValueError, match="must exceed the experts' hidden size 48"):
        grow_ffn(model, 48)
    with pytest.raises(TypeError, match="width"):
        grow_ffn(model, "60")
    with pytest.raises(ValueError, match="layers"):
        grow_ffn(model, 60, layers=0)
    with pytest.raises(TypeError, match="inplace"):
        grow_ffn(model, 60, inplace=1)
    with pytest.raises(ValueError, match="no shared expert"):
        grow_ffn(model, 60, shared_width=80)
    with pytest.raises(ValueError, match="method"):
        grow_ffn(model, 60, method="random")
    with pytest.raises(ValueError, match="must exceed the shared expert's hidden size 40"):
        grow_ffn(_hf("qwen2_moe"), 60, shared_width=40)
    with pytest.raises(ValueError, match="no mixture-of-experts"):
        grow_ffn(LlamaStyle(vocab=32, dim=16, hidden=24), 30, shared_width=40)


def test_dense_models_still_grow_through_the_transformer_operation() -> None:
    parent = LlamaStyle(vocab=32, dim=16, hidden=24).double()
    child, report = grow_ffn(parent, 30, layers=1)
    assert child.layers[1].mlp.down_proj.in_features == 30
    assert child.layers[0].mlp.down_proj.in_features == 24
    assert report.rel_dev_f64 <= 1e-12


# ---------------------------------------------------------------------------------------------
# add_experts


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("norm", [True, False])
def test_add_experts_with_a_router_bias_is_exact(dtype: torch.dtype, norm: bool) -> None:
    parent = _tiny(dtype, norm_topk_prob=norm)
    before = _state(parent)
    child, report = add_experts(parent, 3)
    _unchanged(parent, before)
    mlp = child.layers[0].mlp
    assert len(mlp.experts) == 7 and mlp.router.out_features == 7
    assert torch.equal(mlp.experts[5].w2.weight, mlp.experts[1].w2.weight)  # copies, 4 + j mod 4
    assert not bool(mlp.router.weight[4:].any())
    assert bool((mlp.router.bias[4:] == -moe.router_floor(dtype)).all())
    if dtype == torch.float64:
        torch.testing.assert_close(_logits(child), _logits(parent), rtol=0, atol=0)
        assert report.rel_dev_f64 == 0.0
    else:
        assert report.noise_ratio is not None and report.noise_ratio <= 2.0
    with torch.no_grad():  # never selected: the new experts' weights are exactly zero
        x = torch.randn(50, 16, dtype=dtype, generator=torch.Generator().manual_seed(2)) * 10
        probs = mlp.router(x).float().softmax(-1)
    assert not bool(probs[:, 4:].any())


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_add_experts_refuses_a_router_without_bias(family: str) -> None:
    with pytest.raises(MorphError, match=r"'model\.layers\.0\.mlp\.gate' has no bias.*top-k"):
        add_experts(_hf(family), 2)


def test_add_experts_typed_errors() -> None:
    with pytest.raises(MorphError, match="no mixture-of-experts"):
        add_experts(LlamaStyle(vocab=32, dim=16, hidden=24), 2)
    with pytest.raises(ValueError, match="n must be a positive int"):
        add_experts(_tiny(), 0)
    with pytest.raises(TypeError, match="n must be"):
        add_experts(_tiny(), 1.5)


# ---------------------------------------------------------------------------------------------
# upcycle


@pytest.mark.parametrize("family", sorted(DENSE))
def test_upcycle_is_exact_with_a_zero_router(family: str) -> None:
    parent = _llama(family, tie_word_embeddings=True)
    before = _state(parent)
    child, report = upcycle(parent, 4, 2)
    _unchanged(parent, before)
    target = getattr(transformers, DENSE[family][2])
    assert type(child) is target and type(child.config) is target.config_class
    assert child.config.num_experts_per_tok == 2
    assert child.lm_head.weight is child.model.embed_tokens.weight
    mlp = child.model.layers[1].mlp
    dense = parent.model.layers[1].mlp
    assert torch.equal(mlp.experts.down_proj[3], dense.down_proj.weight)
    assert torch.equal(mlp.experts.gate_up_proj[0, :48], dense.gate_proj.weight)
    if family == "qwen2":  # renormalised; the shared expert adds σ(0)·0
        assert child.config.norm_topk_prob and child.config.num_experts == 4
        assert torch.equal(mlp.shared_expert.up_proj.weight, dense.up_proj.weight)
        assert not bool(mlp.shared_expert.down_proj.weight.any())
        q_bias = child.model.layers[0].self_attn.q_proj.bias
        assert torch.equal(q_bias, parent.model.layers[0].self_attn.q_proj.bias)
    else:
        assert child.config.num_local_experts == 4
    torch.testing.assert_close(_logits(child), _logits(parent), rtol=0, atol=1e-12)
    assert report.rel_dev_f64 <= 1e-12


@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_upcycle_with_router_noise_within_the_float32_renormalisation(top_k: int) -> None:
    parent = _llama()
    child, report = upcycle(parent, 4, top_k, router_std=0.5, seed=1)
    assert bool(child.model.layers[0].mlp.gate.weight.any())
    ref = _logits(parent)
    dev = float((_logits(child) - ref).abs().max() / ref.abs().max())
    assert dev <= moe.ROUTER_ROUNDING * top_k
    assert report.rel_dev_f64 <= moe.ROUTER_ROUNDING * top_k


def test_upcycle_float32_within_the_parents_rounding() -> None:
    child, report = upcycle(_llama(dtype=torch.float32), 4, 2, router_std=0.1)
    assert report.noise_ratio is not None and report.noise_ratio <= 2.0
    assert child.model.layers[0].mlp.experts.down_proj.dtype == torch.float32


def test_upcycle_typed_errors() -> None:
    parent = _llama()
    with pytest.raises(ValueError, match="n_experts ≥ 2"):
        upcycle(parent, 1, 1)
    with pytest.raises(ValueError, match="top_k ≤ n_experts"):
        upcycle(parent, 2, 3)
    with pytest.raises(TypeError, match="top_k"):
        upcycle(parent, 4, "2")
    with pytest.raises(ValueError, match="router_std"):
        upcycle(parent, 4, 2, router_std=-1.0)
    with pytest.raises(TypeError, match="router_std"):
        upcycle(parent, 4, 2, router_std="0.1")
    with pytest.raises(MorphError, match="mlp_bias=True"):
        upcycle(_llama(mlp_bias=True), 4, 2)
    with pytest.raises(MorphError, match="LlamaStyle"):
        upcycle(LlamaStyle(vocab=32, dim=16, hidden=24), 4, 2)
    with pytest.raises(MorphError, match="model_type 'mixtral'"):
        upcycle(_hf("mixtral"), 4, 2)
    parent = _llama()
    parent.model.layers[0].scale = nn.Parameter(torch.ones(32, dtype=torch.float64))
    with pytest.raises(MorphError, match=r"'model\.layers\.0\.scale'.*no place"):
        upcycle(parent, 4, 2)
    parent = _llama()
    parent.model.layers[1].mlp.down_proj.bias = nn.Parameter(torch.zeros(32, dtype=torch.float64))
    with pytest.raises(MorphError, match=r"'model\.layers\.1\.mlp\.down_proj' has a bias"):
        upcycle(parent, 4, 2)


# ---------------------------------------------------------------------------------------------
# Round trip


ROUND_TRIPS = {
    **{f"grow_ffn-{f}": (lambda f=f: grow_ffn(_hf(f, torch.float32), 60)) for f in FAMILIES},
    "upcycle-llama": lambda: upcycle(_llama(dtype=torch.float32), 4, 2, router_std=0.2),
    "upcycle-mistral": lambda: upcycle(_llama("mistral", torch.float32), 3, 1, router_std=0.2),
    "upcycle-qwen2": lambda: upcycle(_llama("qwen2", torch.float32), 4, 2, router_std=0.2),
}


@pytest.mark.parametrize("case", sorted(ROUND_TRIPS))
def test_children_round_trip_through_save_pretrained(case: str, tmp_path: Path) -> None:
    child, report = ROUND_TRIPS[case]()
    assert any("reloads this child exactly" in n for n in report.notes), report.notes
    child.save_pretrained(tmp_path)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, experts_implementation="eager"
    ).eval()
    assert type(reloaded) is type(child)
    for name, p in child.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], p), name
    torch.testing.assert_close(
        _logits(reloaded, torch.float32), _logits(child, torch.float32), rtol=0, atol=1e-6
    )


def test_measured_one_module_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """The per-module float64 measurement (large models): each MoE block is a region checked
    alone on the inputs it receives in the parent."""
    from netmorph_core.torch import pipeline

    monkeypatch.setattr(pipeline, "WHOLE_COPY_LIMIT", 0)
    child, report = grow_ffn(_hf("mixtral", torch.float32), 60)
    assert report.measured_by == pipeline.STREAMED
    assert [r for r, _ in report.regions] == ["model.layers.0.mlp", "model.layers.1.mlp"]
    assert report.noise_ratio is not None and report.noise_ratio <= 2.0
    parent = _llama()
    child, report = upcycle(parent, 4, 2, router_std=0.1)
    assert report.measured_by == pipeline.STREAMED
    assert all(dev <= 2 * moe.ROUTER_ROUNDING for _, dev in report.regions)
    torch.testing.assert_close(_logits(child), _logits(parent), rtol=0, atol=1e-6)
    _, report = add_experts(_tiny(), 2)
    assert report.measured_by == pipeline.STREAMED and report.rel_dev_f64 == 0.0
