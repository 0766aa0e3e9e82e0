"""Multi-head latent attention (DeepSeek-V2/V3) found by structure.

Tiny DeepSeek-V3 (queries through a normalised low-rank latent, ``q_a_proj`` → ``q_b_proj``)
and DeepSeek-V2 (queries from ``q_proj``) decoders, both with a dense first block and
mixture-of-experts blocks with a shared expert, and MiniCPM3 (dense; each branch scaled by the
constant scale_depth/√layers, the logits divided by hidden_size/dim_model_base): every
transformer operation computes the parent's logits (float64, 1e-9), leaves the parent
untouched, and its child reloads with the stock class. The per-head layout check refuses a
geometry the rows do not hold.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

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
)
from netmorph_core.torch.transformer import _logit_base
from netmorph_core.torch.transformer_latent import LatentGeometry, heads_carry_bias
from netmorph_core.torch.transformer_layout import describe

try:
    transformers = import_transformers()
except ImportError:  # pragma: no cover - the test extra installs it
    pytest.skip("transformers is not installed", allow_module_level=True)

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

SIZES = dict(
    hidden_size=32,
    num_attention_heads=4,
    num_key_value_heads=4,
    num_hidden_layers=2,
    intermediate_size=64,
    vocab_size=100,
    pad_token_id=0,
    moe_intermediate_size=16,
    n_routed_experts=4,
    num_experts_per_tok=2,
    n_shared_experts=1,
    first_k_dense_replace=1,
    kv_lora_rank=16,
    qk_nope_head_dim=8,
    qk_rope_head_dim=4,
    v_head_dim=6,
    experts_implementation="eager",
)
DENSE = (
    "hidden_size",
    "num_attention_heads",
    "num_key_value_heads",
    "num_hidden_layers",
    "intermediate_size",
    "vocab_size",
    "pad_token_id",
    "kv_lora_rank",
    "qk_nope_head_dim",
    "qk_rope_head_dim",
    "v_head_dim",
)
MODELS: dict[str, Callable[[], nn.Module]] = {
    "deepseek-v3": lambda: transformers.DeepseekV3ForCausalLM(
        transformers.DeepseekV3Config(**SIZES, q_lora_rank=24, n_group=1, topk_group=1)
    ),
    "deepseek-v2": lambda: transformers.DeepseekV2ForCausalLM(
        transformers.DeepseekV2Config(**SIZES, q_lora_rank=None)
    ),
    # dense, each branch times scale_depth/√layers, the logits divided by hidden/dim_model_base
    "minicpm3": lambda: transformers.MiniCPM3ForCausalLM(
        transformers.MiniCPM3Config(
            **{k: v for k, v in SIZES.items() if k in DENSE},
            q_lora_rank=24,
            scale_depth=1.4,
            dim_model_base=256,
        )
    ),
}
OPS: dict[str, Callable[[nn.Module], tuple[nn.Module, object]]] = {
    "grow_ffn": lambda m: grow_ffn(m, 72),
    "add_heads": lambda m: add_heads(m, 6),
    "add_heads zero": lambda m: add_heads(m, 5, method="zero"),
    "grow_width": lambda m: grow_width(m, 45),
    "grow_width x2": lambda m: grow_width(m, 64),
    "add_block": lambda m: add_block(m, 1),
    "add_block (end)": lambda m: add_block(m, 2, method="zero"),
    "deepen_projection": lambda m: deepen_projection(m, "model.layers.0.self_attn.o_proj"),
}


@pytest.fixture(autouse=True)
def exact_rmsnorm(monkeypatch: pytest.MonkeyPatch) -> None:
    """DeepSeek's RMSNorm computed in the input's dtype (its own forward rounds to float32)."""

    def forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
        variance = x.pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(variance + self.variance_epsilon))

    models = transformers.models
    for norm in (
        models.deepseek_v3.modeling_deepseek_v3.DeepseekV3RMSNorm,
        models.deepseek_v2.modeling_deepseek_v2.DeepseekV2RMSNorm,
        models.minicpm3.modeling_minicpm3.MiniCPM3RMSNorm,
    ):
        monkeypatch.setattr(norm, "forward", forward)


def _model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return MODELS[name]().double().eval()


def _ids() -> torch.Tensor:
    return torch.randint(0, 100, (2, 9), generator=torch.Generator().manual_seed(1))


def _logits(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(_ids()).logits


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("name", MODELS)
def test_every_operation_is_exact(name: str, op: str) -> None:
    parent = _model(name)
    before = {k: v.clone() for k, v in parent.state_dict().items()}
    want = _logits(parent)
    child, _ = OPS[op](parent)
    got = _logits(child)
    # DeepSeek-V3's router computes its logits in float32: a wider stream sums them in
    # another order, one float32 rounding (1.2e-7) of the routing weights
    tol = 1e-6 if (name, op) == ("deepseek-v3", "grow_width") else 1e-9
    torch.testing.assert_close(got, want, rtol=0, atol=tol * float(want.abs().max()))
    assert all(torch.equal(before[k], v) for k, v in parent.state_dict().items())


@pytest.mark.parametrize(
    ("name", "latent", "readers"),
    [
        ("deepseek-v3", ("self_attn.q_b_proj", "self_attn.kv_b_proj"), "self_attn.q_a_proj"),
        ("deepseek-v2", ("self_attn.q_proj", "self_attn.kv_b_proj"), "self_attn.q_proj"),
        ("minicpm3", ("self_attn.q_b_proj", "self_attn.kv_b_proj"), "self_attn.q_a_proj"),
    ],
)
def test_the_latent_layout_is_found(name: str, latent: tuple[str, str], readers: str) -> None:
    layout = describe(_model(name))
    assert layout.family.qkv_layout == "latent"
    assert layout.family.latent == latent
    assert layout.family.qkv == (readers, "self_attn.kv_a_proj_with_mqa")
    assert (layout.blocks[0].heads, layout.blocks[0].head_dim) == (4, 6)
    assert not layout.family.alibi


@pytest.mark.parametrize("op", ["add_heads", "grow_width x2", "add_block", "grow_ffn"])
def test_children_reload_with_the_stock_class(op: str, tmp_path: Path) -> None:
    parent = _model("deepseek-v3")
    child, _ = OPS[op](parent)
    child.save_pretrained(tmp_path)
    again = (
        type(child)
        .from_pretrained(tmp_path, dtype=torch.float64, experts_implementation="eager")
        .eval()
    )
    want = _logits(child)
    torch.testing.assert_close(_logits(again), want, rtol=0, atol=1e-12 * float(want.abs().max()))


def test_key_value_heads_other_than_heads_are_refused() -> None:
    with pytest.raises(MorphError, match="reads the one key/value latent"):
        add_heads(_model("deepseek-v3"), 6, kv_heads=3)


def _hooked(model: nn.Module, transform: dict[str, Callable]) -> bool:
    """Whether ``model`` run with ``transform`` (recorded names "L:<layer in block 0>",
    "<name>:in" on an input) gives its own logits."""
    block = model.model.layers[0]
    handles = []
    for key, fn in transform.items():
        rel = key.removeprefix("L:").removesuffix(":in")
        module = block.get_submodule(rel)
        if key.endswith(":in"):
            handles.append(module.register_forward_pre_hook(lambda m, a, f=fn: (f(a[0]),)))
        else:
            handles.append(module.register_forward_hook(lambda m, a, y, f=fn: f(y)))
    try:
        got = _logits(model)
    finally:
        for h in handles:
            h.remove()
    want = _logits(model)
    return bool((got - want).abs().max() <= 1e-12 * want.abs().max())


def test_a_geometry_the_rows_do_not_hold_is_refused() -> None:
    model = _model("deepseek-v3")
    right = LatentGeometry(4, 8, 4, 6, "self_attn.q_b_proj", "self_attn.kv_b_proj")
    o = "L:self_attn.o_proj"
    assert heads_carry_bias(lambda t: _hooked(model, t), right, "L:", o, "attn") is False
    wrong = LatentGeometry(2, 16, 8, 12, "self_attn.q_b_proj", "self_attn.kv_b_proj")
    with pytest.raises(MorphError, match="does not compute softmax"):
        heads_carry_bias(lambda t: _hooked(model, t), wrong, "L:", o, "attn")


def test_a_logits_base_that_no_whole_number_keeps_is_refused() -> None:
    config = SimpleNamespace(dim_model_base=100)
    assert _logit_base(config, 32, 64) == 200
    with pytest.raises(MorphError, match="hidden_size / dim_model_base"):
        _logit_base(config, 32, 45)
