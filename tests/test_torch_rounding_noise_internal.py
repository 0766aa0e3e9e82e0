"""Layers that compute in float32 inside a float64 model: the parent's own rounding noise.

Cohere's LayerNorm and Llama's RMSNorm cast their input to float32, T5's computes its mean
square in float32: a float64 parent carries float32 rounding there, so a child whose norms see
another width deviates at that level. :func:`computes_lower` finds such layers by measurement;
the parent's own noise rounds them at float32, and ``tol="auto"`` accepts a child within 8× of
it (naming them) while still refusing one beyond.
"""

from __future__ import annotations

import pytest
import torch
from thirdparty import import_transformers
from torch import nn

from netmorph_core.torch import MorphError, grow_width, report
from netmorph_core.torch.report import NOISE_FACTOR
from netmorph_core.torch.rounding_noise import computes_lower, rounded_outputs

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


def _ids() -> torch.Tensor:
    return torch.randint(0, 100, (2, 9), generator=torch.Generator().manual_seed(1))


def _lower(module: nn.Module, x: torch.Tensor) -> bool:
    with torch.no_grad():
        return computes_lower(module, (x,), {}, module(x))


class Float32Inside(nn.Module):
    """w·x/√(mean(x²) + eps) with the mean square taken in float32 (T5's LayerNorm)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ms = x.to(torch.float32).pow(2).mean(-1, keepdim=True)
        return x * torch.rsqrt(ms + 1e-6).to(x.dtype)


class Float32Logits(nn.Module):
    """A router's logits W·x computed and returned in float32 (GLM-4-MoE's, DeepSeek-V3's)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 32, generator=torch.Generator().manual_seed(2)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x.to(torch.float32), self.weight.to(torch.float32))


class Routed(nn.Module):
    """y = x + Σ_e softmax(router logits)_e·W_e·x, the router returning (float32 logits,
    float32 weights, indices): its float32 parts round at float32 in the parent's noise."""

    def __init__(self) -> None:
        super().__init__()
        self.router = _TupleRouter()
        self.experts = nn.Linear(32, 4 * 32, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, weights, index = self.router(x)
        out = self.experts(x).view(*x.shape[:-1], 4, 32)
        picked = out.gather(-2, index[..., None].expand(*index.shape, 32))
        return x + (weights.to(x.dtype)[..., None] * picked).sum(-2)


class _TupleRouter(Float32Logits):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:  # type: ignore[override]
        logits = super().forward(x)
        weights, index = logits.softmax(-1).topk(2, dim=-1)
        return logits, weights, index


def test_float32_parts_of_a_tuple_round_at_float32() -> None:
    model = Routed().double().eval()
    x = _x(4, 32)
    with torch.no_grad():
        plain = model(x)
        rounded = rounded_outputs(model, lambda: [model(x)])[0]
    noise = float((rounded - plain).abs().max() / plain.abs().max())
    assert 1e-10 < noise < 1e-5  # float32 rounding of the routing weights, not float64's


def _x(*shape: int, scale: float = 1.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(*shape, generator=gen, dtype=torch.float64) * scale


@pytest.mark.parametrize(
    ("module", "x", "lower"),
    [
        (nn.LayerNorm(32).double(), _x(4, 32), False),
        (nn.Linear(32, 16).double(), _x(4, 32, scale=100.0), False),
        (nn.GELU(), _x(4, 32), False),
        # an output far above its response (0.5 + x/6 at x ~ 1e-4): float64 rounding only
        (nn.Hardsigmoid(), _x(4, 32, scale=1e-4), False),
        # in place: the input already holds the output
        (nn.ReLU(inplace=True), _x(4, 32), False),
        (Float32Inside(), _x(4, 32), True),
        (Float32Logits(), _x(4, 32), True),
    ],
    ids=[
        "LayerNorm",
        "Linear",
        "GELU",
        "Hardsigmoid",
        "ReLU-inplace",
        "float32-mean-square",
        "float32-output",
    ],
)
def test_computes_lower(module: nn.Module, x: torch.Tensor, lower: bool) -> None:
    assert _lower(module, x) is lower


@pytest.mark.parametrize(
    ("model", "config", "norm"),
    [
        ("CohereForCausalLM", "CohereConfig", "model.layers.0.input_layernorm"),
        ("LlamaForCausalLM", "LlamaConfig", "model.layers.0.input_layernorm"),
    ],
)
def test_the_norms_that_cast_to_float32_are_found(model: str, config: str, norm: str) -> None:
    parent = getattr(transformers, model)(getattr(transformers, config)(**LM)).double().eval()
    ids = _ids()
    found: list[str] = []
    with torch.no_grad():
        plain = parent(ids).logits
        rounded = rounded_outputs(parent, lambda: [parent(ids).logits], found)[0]
    assert norm in found
    assert not any(n.endswith(("proj", "embed_tokens", "lm_head")) for n in found), found
    noise = float((rounded - plain).abs().max() / plain.abs().max())
    assert 1e-9 < noise < 1e-5  # float32 rounding, not float64's ~1e-16


def test_gpt2_rounds_at_float64() -> None:
    config = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=100, n_positions=32)
    parent = transformers.GPT2LMHeadModel(config).double().eval()
    ids = _ids()
    found: list[str] = []
    with torch.no_grad():
        plain = parent(ids).logits
        rounded = rounded_outputs(parent, lambda: [parent(ids).logits], found)[0]
    assert found == []
    assert float((rounded - plain).abs().max() / plain.abs().max()) < 1e-13


@pytest.mark.parametrize("model", ["Cohere", "Llama"])
def test_grow_width_within_the_float32_noise_is_accepted(model: str) -> None:
    """A width that is not a multiple: the norms' float32 mean over other widths rounds
    differently; accepted against the parent's true noise, which the note names."""
    torch.manual_seed(0)
    config = getattr(transformers, f"{model}Config")(**LM, num_key_value_heads=2)
    parent = getattr(transformers, f"{model}ForCausalLM")(config).double().eval()
    child, rep = grow_width(parent, 45)
    note = next(n for n in rep.notes if "past 1e-8" in n)
    assert "compute in float32 inside the float64 model" in note
    assert "input_layernorm" in note
    with torch.no_grad():
        want = parent(_ids()).logits
        dev = float((child(_ids()).logits - want).abs().max() / want.abs().max())
    assert 1e-8 < dev < 1e-5


def test_a_child_beyond_the_float32_noise_is_refused() -> None:
    torch.manual_seed(0)
    config = transformers.CohereConfig(**LM, num_key_value_heads=2)
    parent = transformers.CohereForCausalLM(config).double().eval()
    child = transformers.CohereForCausalLM(config).double().eval()
    child.load_state_dict(parent.state_dict())
    with torch.no_grad():  # off by 1e-3 relative in one layer: far beyond float32 rounding
        w = child.model.layers[0].mlp.down_proj.weight
        w.mul_(1 + 1e-3 * torch.sign(torch.randn_like(w)))
    m = report.measure(parent, child, (_ids(),))
    assert m.noise64 > 1e-9 and "model.layers.0.input_layernorm" in m.noise64_lower
    assert m.dev64[1] > NOISE_FACTOR * m.noise64
    with pytest.raises(MorphError, match="the parent's own float64 rounding noise is"):
        report.check_preserved("test", ("model",), "auto", torch.float64, m)


def test_t5_width_that_is_not_a_multiple_is_accepted_against_its_float32_norms() -> None:
    """T5's LayerNorm takes its mean square in float32: 32 → 45 deviates at float32 rounding,
    within 8× of the parent's own noise; the stock config reloads the child."""
    torch.manual_seed(0)
    config = transformers.T5Config(
        vocab_size=100, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4
    )
    parent = transformers.T5ForConditionalGeneration(config).double().eval()
    child, rep = grow_width(parent, 45)
    assert any("'encoder.block.0.layer.0.layer_norm'" in n for n in rep.notes), rep.notes
    ids = _ids()
    with torch.no_grad():
        want = parent(input_ids=ids, decoder_input_ids=ids[:, :5]).logits
        got = child(input_ids=ids, decoder_input_ids=ids[:, :5]).logits
    assert float((got - want).abs().max() / want.abs().max()) < 1e-6
