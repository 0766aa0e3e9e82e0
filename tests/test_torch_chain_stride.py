"""A layer whose parent reads its ``stride`` (Whisper's encoder reads ``conv1.stride[0]`` and
``conv2.stride[0]`` to check its input length) is replaced by ``deepen``/``morph_subnet`` with
a :class:`~netmorph_core.torch.layer_reads.Chain` whose ``stride`` is the product of its
convolutions' strides, checked against the replaced layer's; where the chain has no overall
stride, or another one, the replacement is refused by name. A layer its parent hands to a
function (Hugging Face MobileNet's TensorFlow "same" padding reads the conv's kernel size,
stride and dilation) becomes a Chain answering those too. Float64 children are exact and
``load_grown`` rebuilds the chains exactly."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from netmorph_core.torch import MorphError, deepen, grow_kernel, load_grown, morph_subnet  # noqa: E402
from netmorph_core.torch.layer_reads import Chain, chain_geometry, overall_stride  # noqa: E402
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


def _tf_same_pad(x: torch.Tensor, conv: nn.Module) -> torch.Tensor:
    """TensorFlow "same" padding of ``x`` from ``conv``'s kernel size, stride and dilation."""
    pads = []
    for size, k, s, d in zip(x.shape[:1:-1], conv.kernel_size[::-1], conv.stride[::-1],
                             conv.dilation[::-1]):
        total = max((k - 1) * d + 1 - (s if size % s == 0 else size % s), 0)
        pads += [total // 2, total - total // 2]
    return torch.nn.functional.pad(x, pads)


class HandsItsConvOff(nn.Module):
    """Pads from its conv's geometry in a function it hands the conv to (Hugging Face
    MobileNet's ``apply_tf_padding(features, self.convolution)``), which no attribute read in
    its own forward shows."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(_tf_same_pad(x, self.conv))))


@pytest.mark.parametrize("operation", OPERATIONS)
def test_a_layer_handed_to_a_padding_function_keeps_its_geometry(operation: str) -> None:
    torch.manual_seed(0)
    parent = HandsItsConvOff().double().eval()
    subnet = [(8, (1, 1)), (8, (3, 3)), (None, (1, 1))]
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64)
    if operation == "deepen":
        child, report = deepen(parent, "conv", seed=0, probe=(x,))
    else:
        child, report = morph_subnet(parent, "conv", subnet, seed=0, probe=(x,))
    layer = child.conv
    assert type(layer) is Chain and report.rel_dev_f64 <= 1e-12
    assert (layer.kernel_size, layer.stride, layer.dilation) == ((3, 3), (2, 2), (1, 1))
    with torch.no_grad():
        torch.testing.assert_close(child(x), parent(x), rtol=0, atol=1e-9)


def test_a_chain_of_two_spatial_convolutions_has_no_one_kernel_size() -> None:
    chain = Chain(nn.Conv2d(2, 2, 3, padding=1), nn.Conv2d(2, 2, 3, padding=1))
    assert chain.stride == (1, 1) and not hasattr(chain, "kernel_size")
    with pytest.raises(ValueError, match=r"kernels \[\(3, 3\), \(3, 3\)\] have no one"):
        chain_geometry(chain, "kernel_size")


@pytest.mark.parametrize("operation", OPERATIONS)
def test_hugging_face_mobilenet_v2_deepens_through_its_tf_padding(
    operation: str, tmp_path: Path
) -> None:
    from thirdparty import import_transformers

    t = import_transformers()
    torch.manual_seed(0)
    config = t.MobileNetV2Config(image_size=32, depth_multiplier=0.35)
    parent = t.MobileNetV2Model(config).double().eval()
    at = "conv_stem.first_conv.convolution"
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        want = parent(x).pooler_output
    if operation == "deepen":
        child, _ = deepen(parent, at, seed=0, probe=(x,))
    else:
        width = [(16, (1, 1)), (16, (3, 3)), (None, (1, 1))]
        child, _ = morph_subnet(parent, at, width, seed=0, probe=(x,))
    assert type(child.get_submodule(at)) is Chain
    with torch.no_grad():
        torch.testing.assert_close(child(x).pooler_output, want, rtol=0, atol=1e-9)
    child.save_pretrained(tmp_path)
    with torch.no_grad():
        got = load_grown(tmp_path).double()(x).pooler_output
    torch.testing.assert_close(got, want, rtol=0, atol=1e-9)


@pytest.mark.parametrize(("kernel", "stride"), [(3, 2), (3, 1), (1, 1)])
def test_grow_kernel_of_a_layer_padded_by_its_parent_keeps_padding_zero(
    kernel: int, stride: int
) -> None:
    """The parent's TensorFlow padding grows with the kernel: the grown conv pads nothing."""
    torch.manual_seed(0)
    parent = HandsItsConvOff().double().eval()
    parent.conv = nn.Conv2d(3, 8, kernel, stride=stride).double()
    x = torch.randn(2, 3, 10, 10, dtype=torch.float64)
    child, report = grow_kernel(parent, "conv", kernel + 2, probe=(x,))
    assert child.conv.padding == (0, 0) and child.conv.kernel_size == (kernel + 2,) * 2
    assert any("padding kept at 0" in n for n in report.notes)
    with torch.no_grad():
        torch.testing.assert_close(child(x), parent(x), rtol=0, atol=1e-9)


def test_grow_kernel_of_hugging_face_mobilenet_v2_through_its_tf_padding() -> None:
    from thirdparty import import_transformers

    t = import_transformers()
    torch.manual_seed(0)
    config = t.MobileNetV2Config(image_size=32, depth_multiplier=0.35)
    parent = t.MobileNetV2Model(config).double().eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    for at in ("conv_stem.first_conv.convolution", "layer.7.conv_3x3.convolution"):
        _, report = grow_kernel(parent, at, 5, probe=(x,))
        assert report.rel_dev_f64 <= 1e-12


class Checkpointed(nn.Module):
    """Hands its conv to ``torch.utils.checkpoint`` to be called, never calling it itself: the
    conv's own padding is what pads its input."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.utils.checkpoint.checkpoint(self.conv, x, use_reentrant=False)
        return self.head(torch.relu(y))


def test_grow_kernel_of_a_layer_handed_over_to_be_called_grows_its_padding() -> None:
    torch.manual_seed(0)
    parent = Checkpointed().double().eval()
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64)
    child, report = grow_kernel(parent, "conv", 5, probe=(x,))
    assert child.conv.padding == (1, 1) and report.rel_dev_f64 <= 1e-12
    assert not any("padding kept at 0" in n for n in report.notes)
