"""GPT-OSS under the transformer operations: its fused experts are transposed (a token
multiplied as x·W: ``gate_up_proj`` E × d × 2I, ``down_proj`` E × I × d), hold gate and up
interleaved ([g₀, u₀, g₁, u₁, …]) and carry biases; its router has a bias and softmaxes the
top-k logits; its attention has one sink logit per head and alternates sliding and full
layers.

Each operation on a tiny float64 GPT-OSS (norm gains, biases and sinks redrawn so they matter)
matches the parent's logits to 1e-9 relative, leaves the parent untouched and reloads through
``save_pretrained`` → the stock ``from_pretrained``; fused experts laid out in a way still not
followed are refused by name."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
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
)
from netmorph_core.torch.moe import router_floor
from netmorph_core.torch.moe_find import find_moe
from netmorph_core.torch.transformer_layout import describe, describe_by_structure

try:
    transformers = import_transformers()
except ImportError:  # pragma: no cover - the test extra installs it
    pytest.skip("transformers is not installed", allow_module_level=True)

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

IDS = torch.randint(0, 100, (2, 9), generator=torch.Generator().manual_seed(1))
OPS: dict[str, Callable[[nn.Module], tuple[nn.Module, object]]] = {
    "grow_ffn": lambda m: grow_ffn(m, 96),
    "grow_ffn (odd, zero)": lambda m: grow_ffn(m, 67, method="zero"),
    "add_heads": lambda m: add_heads(m, 8),
    "add_heads (kv 4)": lambda m: add_heads(m, 8, kv_heads=4),
    "grow_width ×2": lambda m: grow_width(m, 64),
    "grow_width 48": lambda m: grow_width(m, 48),
    "add_block": lambda m: add_block(m, 1),
    "add_block (first, zero)": lambda m: add_block(m, 0, method="zero"),
    "add_experts": lambda m: add_experts(m, 2),
}
#: Run on a float32 parent: the stock RMSNorm computes in float32 inside a float64 model, so a
#: norm over a width that is not a multiple of the parent's rounds differently.
FLOAT32 = {"grow_width 48"}


def _parent(dtype: torch.dtype = torch.float64, **extra: object) -> nn.Module:
    config = transformers.GptOssConfig(
        **(
            dict(
                hidden_size=32,
                num_attention_heads=4,
                num_key_value_heads=2,
                head_dim=8,
                num_hidden_layers=2,
                intermediate_size=64,
                vocab_size=100,
                pad_token_id=0,
                num_local_experts=4,
                num_experts_per_tok=2,
                sliding_window=4,
                experts_implementation="eager",  # the default grouped_mm has no float64 kernel
            )
            | extra
        )
    )
    torch.manual_seed(0)
    model = transformers.GptOssForCausalLM(config).eval().to(dtype)
    with torch.no_grad():  # norms, biases and sinks that matter
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
            elif name.endswith(("bias", "sinks")):
                p.normal_(0.0, 0.5)
    return model


def _logits(model: nn.Module, ids: torch.Tensor = IDS) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def test_the_fused_layout_is_recognised_by_structure() -> None:
    parent = _parent()
    blocks = find_moe(parent)
    assert [b.path for b in blocks] == ["model.layers.0.mlp", "model.layers.1.mlp"]
    b = blocks[0]
    assert (b.router, b.router_bias, b.experts, b.count, b.hidden, b.d_model) == (
        "model.layers.0.mlp.router",
        True,
        "model.layers.0.mlp.experts",
        4,
        64,
        32,
    )
    assert (b.fused, b.gated, b.transposed, b.interleaved, b.biased) == (True,) * 5
    assert (b.top_k, b.renormalise) == (2, True)  # the softmax of the top-k logits
    layout = describe(parent)
    assert layout.family.moe and layout.family.ffn_out == "mlp"
    assert (layout.blocks[0].heads, layout.blocks[0].kv_heads) == (4, 2)


@pytest.mark.parametrize("op", OPS)
def test_operation_is_exact_unchanging_and_reloads(op: str, tmp_path: Path) -> None:
    f32 = op in FLOAT32
    parent = _parent(torch.float32 if f32 else torch.float64)
    before = {k: v.clone() for k, v in parent.state_dict().items()}
    child, report = OPS[op](parent)
    want = _logits(parent)
    if f32:  # within twice the parent's own float32 rounding
        assert report.noise_ratio <= 2.0, report
        assert _rel(_logits(child), want) <= 1e-5
    else:
        assert _rel(_logits(child), want) <= 1e-9
    assert all(torch.equal(before[k], v) for k, v in parent.state_dict().items())
    assert any("reloads this child exactly" in n for n in report.notes), report.notes
    child.save_pretrained(tmp_path)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, dtype=parent.dtype, experts_implementation="eager"
    ).eval()
    assert type(reloaded) is type(child)
    for name, p in child.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], p), name
    assert _rel(_logits(reloaded), want) <= (1e-5 if f32 else 1e-9)


def test_grow_ffn_interleaves_the_new_units_after_the_parents() -> None:
    """New gate/up units are appended as [g, u] pairs after the parent's 2I columns, with zero
    biases; the parent's columns, rows and the down biases are kept; each cancelling pair's
    down rows are C and −C."""
    parent = _parent()
    child, _ = grow_ffn(parent, 96)
    for old, new in zip(parent.model.layers, child.model.layers, strict=True):
        o, n = old.mlp.experts, new.mlp.experts
        assert tuple(n.gate_up_proj.shape) == (4, 32, 192)
        assert tuple(n.down_proj.shape) == (4, 96, 32)
        assert torch.equal(n.gate_up_proj[..., :128], o.gate_up_proj)
        assert torch.equal(n.gate_up_proj_bias[:, :128], o.gate_up_proj_bias)
        assert not n.gate_up_proj_bias[:, 128:].any()
        assert torch.equal(n.down_proj[:, :64], o.down_proj)
        assert torch.equal(n.down_proj_bias, o.down_proj_bias)
        gate, up = n.gate_up_proj[..., 128::2], n.gate_up_proj[..., 129::2]
        assert torch.equal(gate[..., 0::2], gate[..., 1::2])  # a pair shares its inputs
        assert torch.equal(up[..., 0::2], up[..., 1::2])
        down = n.down_proj[:, 64:]
        assert bool(down.any()) and torch.equal(down[:, 0::2], -down[:, 1::2])
    assert child.config.intermediate_size == 96


def test_add_heads_grows_the_sinks_and_add_block_zeroes_them() -> None:
    parent = _parent()
    child, _ = add_heads(parent, 8)
    for old, new in zip(parent.model.layers, child.model.layers, strict=True):
        sinks = new.self_attn.sinks
        # two groups of four query heads: the parent's two of each group first, then new ones
        assert torch.equal(sinks[[0, 1, 4, 5]], old.self_attn.sinks)
        assert not sinks[[2, 3, 6, 7]].any()
    child, _ = add_block(parent, 1)
    fresh = child.model.layers[1]
    assert not fresh.self_attn.sinks.any()
    assert not fresh.self_attn.o_proj.bias.any()
    assert not fresh.mlp.experts.down_proj_bias.any()
    assert not fresh.mlp.experts.gate_up_proj_bias.any()
    # the new block copies the kind of the block it comes before (the full-attention one)
    assert child.config.layer_types == ["sliding_attention"] + ["full_attention"] * 2
    assert fresh.self_attn.sliding_window is None


def test_grow_width_writes_the_stream_through_the_down_biases() -> None:
    """The experts read d on gate_up_proj's middle axis and write it on down_proj's last axis
    and down_proj_bias: each grows, and the router keeps every top-k choice."""
    parent = _parent()
    child, _ = grow_width(parent, 64)
    experts = child.model.layers[0].mlp.experts
    assert tuple(experts.gate_up_proj.shape) == (4, 64, 128)
    assert tuple(experts.down_proj.shape) == (4, 64, 64)
    assert tuple(experts.down_proj_bias.shape) == (4, 64)
    assert tuple(child.model.layers[0].mlp.router.weight.shape) == (4, 64)


def test_add_experts_are_never_selected() -> None:
    parent = _parent()
    child, _ = add_experts(parent, 2)
    router = child.model.layers[0].mlp.router
    assert tuple(router.weight.shape) == (6, 32) and not router.weight[4:].any()
    assert torch.equal(router.bias[4:], torch.full((2,), -router_floor(torch.float64)).double())
    experts = child.model.layers[0].mlp.experts
    old = parent.model.layers[0].mlp.experts
    assert torch.equal(experts.down_proj_bias[4:], old.down_proj_bias[:2])
    assert (child.config.num_local_experts, child.num_experts) == (6, 6)
    chosen: list[torch.Tensor] = []
    hook = router.register_forward_hook(lambda _m, _a, out: chosen.append(out[2]))
    _logits(child, torch.randint(0, 100, (8, 32), generator=torch.Generator().manual_seed(2)))
    hook.remove()
    assert int(chosen[0].max()) < 4


def test_fused_layouts_still_not_followed_are_refused_by_name() -> None:
    """One bias without the other, or a declared layout the shapes contradict."""
    parent = _parent()
    del parent.model.layers[1].mlp.experts.down_proj_bias
    with pytest.raises(MorphError, match=r"'model\.layers\.1\.mlp\.experts' \(GptOssExperts\)"):
        grow_ffn(parent, 96)
    parent = _parent()
    parent.model.layers[0].mlp.experts.is_transposed = False
    with pytest.raises(MorphError, match=r"holds fused experts laid out as .*refused"):
        add_heads(parent, 8)


def test_the_structural_trace_sees_sinks_move_with_their_heads() -> None:
    """Traced without the name table: block 0's mixture of experts stands in as a dense
    feed-forward returning (output, None) as GPT-OSS's block unpacks it, and the sinks rotate
    with the heads, so the attention is not read as a per-head position bias."""
    parent = _parent()
    found, named = describe_by_structure(parent).family, describe(parent).family
    assert not found.alibi and found.moe
    for field in ("attention", "qkv", "o", "ffn_out", "norms", "writers", "final_norm"):
        assert getattr(found, field) == getattr(named, field), field


def test_a_child_the_config_cannot_describe_reloads_with_load_grown(tmp_path: Path) -> None:
    """add_heads on block 0 only: the blocks differ in head count (and sinks), so the config is
    marked, the stock load refuses it and load_grown rebuilds the child exactly."""
    parent = _parent()
    child, report = add_heads(parent, 8, layers=[0])
    assert any("load_grown" in n for n in report.notes), report.notes
    assert tuple(child.model.layers[0].self_attn.sinks.shape) == (8,)
    assert tuple(child.model.layers[1].self_attn.sinks.shape) == (4,)
    child.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="does not recognize this architecture"):
        transformers.AutoModelForCausalLM.from_pretrained(tmp_path)
    reloaded = load_grown(tmp_path).eval()
    reloaded.set_experts_implementation("eager")
    assert _rel(_logits(reloaded), _logits(parent)) <= 1e-9


def test_the_default_experts_implementation_is_measured_eager_and_kept() -> None:
    """A float32 GPT-OSS on transformers' default experts implementation: measured in float64
    with "eager", within the parent's own rounding; parent and child keep the default."""
    parent = _parent(torch.float32, experts_implementation=None)
    default = parent.config._experts_implementation
    assert default != "eager"
    for op in ("grow_ffn", "grow_width ×2", "add_experts"):
        child, report = OPS[op](parent)
        assert report.noise_ratio <= 2.0, (op, report)
        assert child.config._experts_implementation == default
        assert parent.config._experts_implementation == default
