"""norm_kind: LayerNorm or RMSNorm decided by what the norm computes, not by its class."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from netmorph_core.torch.norm_kind import norm_kind  # noqa: E402


class BiaslessLayerNorm(nn.Module):
    """Cohere's norm: centred, a gain and no bias."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.variance_epsilon = 1e-5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centred = x - x.mean(-1, keepdim=True)
        var = centred.pow(2).mean(-1, keepdim=True)
        return self.weight * centred * torch.rsqrt(var + self.variance_epsilon)


class RMSNormWithBiasSlot(nn.Module):
    """An RMSNorm that declares ``bias = None``: the attribute does not make it a LayerNorm."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((d,), 0.5))
        self.bias = None
        self.eps = 1e-6

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)


class OffsetRMSNorm(nn.Module):
    """Gemma's (1 + w)·n with w = −1: the parent's output is zero, the probe's is not."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(-torch.ones(d))
        self.eps = 1e-6

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (1 + self.weight) * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)


@pytest.mark.parametrize(
    ("norm", "kind"),
    [
        (nn.LayerNorm(8), "layer"),
        (nn.LayerNorm(8, bias=False), "layer"),
        (nn.LayerNorm(8, elementwise_affine=False), "layer"),
        (BiaslessLayerNorm(8), "layer"),
        (nn.RMSNorm(8), "rms"),
        (RMSNormWithBiasSlot(8), "rms"),
        (OffsetRMSNorm(8), "rms"),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, nn.Module) else v,
)
def test_kind_is_read_from_the_computation(norm: nn.Module, kind: str) -> None:
    before = {k: t.clone() for k, t in norm.state_dict().items()}
    assert norm_kind(norm) == kind
    assert all(torch.equal(before[k], t) for k, t in norm.state_dict().items())


def test_kind_of_a_meta_norm_comes_from_its_class() -> None:
    with torch.device("meta"):
        assert norm_kind(nn.LayerNorm(8)) == "layer"
        assert norm_kind(nn.RMSNorm(8)) == "rms"


def test_cohere_layernorm_without_bias_is_a_layernorm() -> None:
    from thirdparty import import_transformers

    t = import_transformers()
    from netmorph_core.torch.transformer_layout import describe

    config = t.CohereConfig(
        hidden_size=32,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        num_hidden_layers=2,
        vocab_size=100,
        max_position_embeddings=32,
    )
    model = t.CohereForCausalLM(config).double()
    assert not hasattr(model.model.norm, "bias")
    assert describe(model).norm_kind == "layer"
