"""A layer whose parent reads its ``stride`` (Whisper's encoder reads ``conv1.stride[0]`` and
``conv2.stride[0]`` to check its input length) is replaced by ``deepen``/``morph_subnet`` with
a :class:`~netmorph_core.torch.layer_reads.Chain` whose ``stride`` is the product of its
convolutions' strides, checked against the replaced layer's; where the chain has no overall
stride, or another one, the replacement is refused by name. Float64 children are exact and
``load_grown`` rebuilds the Whisper encoder's chains exactly."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from netmorph_core.torch import MorphError, deepen, load_grown, morph_subnet  # noqa: E402
from netmorph_core.torch.layer_reads import Chain, overall_stride  # noqa: E402
from netmorph_core.torch.surgery import replace_module  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SUBNET = [(32, (1,)), (32, (3,)), (None, (1,))]
OPERATIONS = {
    "deepen": lambda m, at: deepen(m, at, seed=0),
    "morph_subnet": lambda m, at: morph_subnet(m, at, SUBNET, seed=0),
}


class ReadsStride(nn.Module):
    """Subsamples by its strided conv's stride, read in the forward."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(3, 4, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)[..., :: self.conv.stride[0]]


def _whisper() -> nn.Module:
    from thirdparty import import_transformers

    transformers = import_transformers()
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    config = transformers.WhisperConfig(
        d_model=32,
        encoder_layers=2,
        encoder_attention_heads=4,
        encoder_ffn_dim=64,
        num_mel_bins=8,
        max_source_positions=8,
        vocab_size=100,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
    )
    torch.manual_seed(0)
    return WhisperEncoder(config).double().eval()


@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.parametrize("at", ["conv1", "conv2"])
def test_whisper_encoder_convolutions_become_chains(
    operation: str, at: str, tmp_path: Path
) -> None:
    pytest.importorskip("transformers")
    parent = _whisper()
    before = {k: v.clone() for k, v in parent.state_dict().items()}
    features = torch.randn(2, 8, 16, generator=torch.Generator().manual_seed(1)).double()
    with torch.no_grad():
        want = parent(features).last_hidden_state
    child, _ = OPERATIONS[operation](parent, at)
    layer = child.get_submodule(at)
    assert type(layer) is Chain and layer.stride == parent.get_submodule(at).stride
    with torch.no_grad():
        torch.testing.assert_close(child(features).last_hidden_state, want, rtol=0, atol=1e-9)
    assert all(torch.equal(before[k], v) for k, v in parent.state_dict().items())
    child.save_pretrained(tmp_path)
    reloaded = load_grown(tmp_path)
    assert type(reloaded.get_submodule(at)) is Chain
    with torch.no_grad():
        got = reloaded(features).last_hidden_state
    torch.testing.assert_close(got, want, rtol=0, atol=1e-9)


@pytest.mark.parametrize("operation", OPERATIONS)
def test_a_strided_layer_read_by_its_parent_keeps_its_stride(operation: str) -> None:
    parent = ReadsStride().double()
    x = torch.randn(2, 3, 20, dtype=torch.float64)
    child, report = OPERATIONS[operation](parent, "conv")
    assert child.conv.stride == (2,)
    assert report.rel_dev_f64 is not None and report.rel_dev_f64 <= 1e-12
    with torch.no_grad():
        torch.testing.assert_close(child(x), parent(x), rtol=0, atol=1e-12)


def test_chains_without_an_overall_stride_are_named() -> None:
    conv = nn.Conv1d(2, 2, 3, stride=2, padding=1)
    assert overall_stride(nn.Sequential(conv, nn.GELU(), nn.Conv1d(2, 2, 5, padding=2))) == (2,)
    assert overall_stride(nn.Sequential(conv, nn.Conv1d(2, 2, 3, stride=3))) == (6,)
    with pytest.raises(ValueError, match=r"a later Conv1d pads \(1,\) with kernel \(5,\)"):
        overall_stride(nn.Sequential(conv, nn.Conv1d(2, 2, 5, padding=1)))
    with pytest.raises(ValueError, match="convolutions of one dimension"):
        overall_stride(nn.Sequential(conv, nn.Linear(2, 2)))
    assert not hasattr(Chain(nn.Linear(2, 2)), "stride")


def test_a_chain_of_another_stride_is_refused_by_name() -> None:
    model = ReadsStride().double()
    with pytest.raises(MorphError, match=r"'conv': its parent reads its stride \(2,\), and the"):
        replace_module(model, "conv", nn.Sequential(nn.Conv1d(3, 4, 3, padding=1)))
    with pytest.raises(MorphError, match="'conv': its parent reads its stride, and the layers"):
        replace_module(model, "conv", nn.Sequential(nn.Conv1d(3, 4, 3), nn.Dropout()))
    assert type(model.conv) is nn.Conv1d
