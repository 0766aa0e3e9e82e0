"""widen through graph shapes: chunk/split, transposes, frozen BatchNorm, scalar gains and
shape reads; exact float64 forward passes, the parent unchanged, refusals naming the node."""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from thirdparty import import_torchvision, import_transformers  # noqa: E402
from torch import nn  # noqa: E402

from netmorph_core.torch import MorphError, widen  # noqa: E402

F64_TOL = 1e-10


def x64(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def check_exact(parent: nn.Module, at: str, width: int, x: torch.Tensor, **kw) -> nn.Module:
    """Widen ``at`` to ``width``; the child computes the parent's function, the parent keeps
    its state (parameters and buffers)."""
    before = copy.deepcopy(parent.state_dict())
    child, report = widen(parent, at, width, probe=x, seed=0, **kw)
    with torch.no_grad():
        y, z = parent(x), child(x)
    assert float((y - z).abs().max() / y.abs().max()) <= F64_TOL
    assert report.rel_dev_f64 <= F64_TOL
    after = parent.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    return child


class GatedMLP(nn.Module):
    """A fused gated MLP: one Linear computes gate and up, chunked in two."""

    def __init__(self, fn: str = "method") -> None:
        super().__init__()
        self.fc = nn.Linear(6, 16)
        self.out = nn.Linear(8, 5)
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        gate, up = h.chunk(2, -1) if self.fn == "method" else torch.chunk(h, 2, dim=-1)
        return self.out(F.silu(gate) * up)


@pytest.mark.parametrize("fn", ["method", "function"])
def test_fused_gated_mlp_chunks_grow_together(fn: str) -> None:
    torch.manual_seed(0)
    parent = GatedMLP(fn).double()
    child = check_exact(parent, "fc", 24, x64(3, 4, 6))
    assert child.fc.out_features == 24 and child.out.in_features == 12


def test_chunk_needs_a_width_every_part_can_take() -> None:
    parent = GatedMLP().double()
    with pytest.raises(MorphError, match=r"chunk.*2 parts.*multiples of 2"):
        widen(parent, "fc", 21, probe=x64(3, 6), seed=0)


class SplitMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 16)
        self.out = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.fc(x).split(8, dim=-1)
        return self.out(torch.tanh(gate) * up)


def test_split_with_sizes_in_the_code_is_refused_by_name() -> None:
    with pytest.raises(MorphError, match=r"'split'.*sizes 8 written in the code"):
        widen(SplitMLP().double(), "fc", 20, probe=x64(3, 6), seed=0)


class CrossStage(nn.Module):
    """A CSP stage: half the expanded map skips the blocks and rejoins them by concatenation."""

    def __init__(self) -> None:
        super().__init__()
        self.expand = nn.Conv2d(3, 8, 1)
        self.block = nn.Conv2d(4, 4, 3, padding=1)
        self.transition = nn.Conv2d(8, 6, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip, through = self.expand(x).split(4, dim=1)
        return self.transition(torch.cat([skip, torch.relu(self.block(through))], dim=1))


def test_a_concatenation_with_a_split_part_counts_the_part() -> None:
    """The skip half has 4 channels (read from the probe's shapes, not from the conv that made
    the whole map): the transition's new input columns go after 4 + 4."""
    child = check_exact(CrossStage().double(), "block", 7, x64(2, 3, 5, 5))
    assert child.transition.in_channels == 11


def test_without_a_probe_the_split_part_is_refused_by_name() -> None:
    with pytest.raises(MorphError, match="whose channel count cannot be read from the graph"):
        widen(CrossStage().double(), "block", 7, seed=0)


class ConvGLU(nn.Module):
    """conv → GLU over channels (chunk along dim 1) → conv; a split along H passes through."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(4, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.a(x).chunk(2, dim=1)
        top, bottom = (value * torch.sigmoid(gate)).split(3, dim=2)
        return self.b(torch.cat([bottom, top], dim=2))


def test_conv_glu_chunk_over_channels_and_split_over_rows() -> None:
    torch.manual_seed(1)
    child = check_exact(ConvGLU().double(), "a", 12, x64(2, 3, 6, 5))
    assert child.b.in_channels == 6


class GroupedGLU(nn.Module):
    """A grouped producer (2 groups) chunked in two along the channels; ``cat`` first
    concatenates another layer's output, so the parts cannot grow alike."""

    def __init__(self, cat: bool = False) -> None:
        super().__init__()
        self.a = nn.Conv2d(4, 8, 3, padding=1, groups=2)
        self.side = nn.Conv2d(4, 2, 1)
        self.b = nn.Conv2d(5 if cat else 4, 3, 1)
        self.cat = cat

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.cat([self.a(x), self.side(x)], dim=1) if self.cat else self.a(x)
        value, gate = h.chunk(2, dim=1)
        return self.b(value * torch.sigmoid(gate))


def test_grouped_producer_chunked_grows_every_group_alike() -> None:
    torch.manual_seed(9)
    child = check_exact(GroupedGLU().double(), "a", 12, x64(2, 4, 5, 5))
    assert child.a.groups == 2 and child.b.in_channels == 6


def test_chunk_after_a_concatenation_is_refused_by_name() -> None:
    with pytest.raises(MorphError, match=r"'chunk'.*parts cannot grow consistently"):
        widen(GroupedGLU(cat=True).double(), "a", 12, probe=x64(2, 4, 5, 5), seed=0)


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm with fixed statistics and affine terms held as buffers (as in detection
    backbones)."""

    def __init__(self, n: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(n))
        self.register_buffer("bias", torch.zeros(n))
        self.register_buffer("running_mean", torch.zeros(n))
        self.register_buffer("running_var", torch.ones(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        bias = self.bias - self.running_mean * scale
        return x * scale.reshape(1, -1, 1, 1) + bias.reshape(1, -1, 1, 1)


def frozen_net() -> nn.Module:
    torch.manual_seed(2)
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), FrozenBatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 4, 3)
    ).double()
    bn = net[1]
    for name in ("weight", "bias", "running_mean"):
        getattr(bn, name).copy_(torch.randn(6))
    bn.running_var.copy_(torch.rand(6) + 0.5)
    return net


@pytest.mark.parametrize("zero_side", ["inner", "outer"])
def test_frozen_batch_norm_buffers_grow_like_batch_norm(zero_side: str) -> None:
    parent = frozen_net()
    child = check_exact(parent, "0", 9, x64(2, 3, 7, 7), zero_side=zero_side)
    bn = child[1]
    assert {n for n, _ in bn.named_buffers()} == {"weight", "bias", "running_mean", "running_var"}
    assert not list(bn.parameters())
    old = child[0].weight.new_tensor([1.0] * 9, dtype=torch.bool)
    new = torch.isin(bn.running_var, parent[1].running_var, invert=True)
    old &= ~new
    assert int(new.sum()) == 3 and bn.weight.shape == (9,)
    assert torch.equal(bn.weight[new], torch.ones(3, dtype=torch.float64))
    assert torch.equal(bn.running_mean[new], torch.zeros(3, dtype=torch.float64))


def test_torchvision_frozen_batch_norm() -> None:
    try:
        misc = import_torchvision().ops.misc
    except ImportError:  # pragma: no cover - the thirdparty extra installs it
        pytest.skip("torchvision is not installed")
    torch.manual_seed(7)
    parent = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), misc.FrozenBatchNorm2d(4), nn.GELU(), nn.Conv2d(4, 2, 1)
    ).double()
    parent[1].running_var.add_(torch.rand(4, dtype=torch.float64))
    parent[1].bias.normal_()
    child = check_exact(parent, "0", 7, x64(2, 3, 5, 5))
    assert child[1].weight.shape == (7,) and child[3].in_channels == 7


class MixerBlock(nn.Module):
    """Linear → channels to axis 1 → depthwise Conv1d over the sequence → back → Linear
    (the mixer of Mamba-like and SegFormer-like blocks)."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.proj = nn.Linear(6, 8)
        self.conv = nn.Conv1d(8, 8, 3, padding=1, groups=8)
        self.out = nn.Linear(8, 4)
        self.how = how

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj(x)
        if self.how == "transpose":
            h = self.conv(h.transpose(1, 2)).transpose(-1, -2)
        else:
            h = self.conv(h.permute(0, 2, 1)).permute(0, 2, 1)
        return self.out(F.silu(h))


@pytest.mark.parametrize("how", ["transpose", "permute"])
def test_channels_moved_to_axis_one_and_back(how: str) -> None:
    torch.manual_seed(3)
    child = check_exact(MixerBlock(how).double(), "proj", 11, x64(2, 5, 6))
    assert child.conv.groups == 11 and child.out.in_features == 11


class ChannelsToFront(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(6, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(2, 0, 1).sum(0)


def test_channels_moved_elsewhere_are_refused_by_name() -> None:
    with pytest.raises(MorphError, match=r"'permute'.*axis 0 of 3"):
        widen(ChannelsToFront().double(), "proj", 10, probe=x64(2, 5, 6), seed=0)


class Gained(nn.Module):
    """A learned scalar gain (shape () and (1,)) multiplies the widened tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 8)
        self.gain = nn.Parameter(torch.tensor(0.7))
        self.bias_gain = nn.Parameter(torch.tensor([1.3]))
        self.out = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.fc(x)) * self.gain
        return self.out(self.bias_gain * h / self.gain)


def test_scalar_gains_are_channel_independent() -> None:
    torch.manual_seed(4)
    parent = Gained().double()
    child = check_exact(parent, "fc", 12, x64(4, 6))
    assert child.gain.shape == () and child.bias_gain.shape == (1,)


class PyramidUp(nn.Module):
    """FPN-like: pool, then upsample back to the spatial size read from the widened tensor;
    ``channels``: also view it by its own channel count ("keep": (n, c, h·w) and back, "shuffle":
    a channel shuffle's (n, 2, c/2, h, w), "other": view another tensor by it, "batch": to
    (n·h·w, c, 1), whose first size is no batch)."""

    def __init__(self, channels: str = "") -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 6, 3, padding=1)
        self.b = nn.Conv2d(6, 4, 1)
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.a(x))
        n, c, h, w = y.shape
        if self.channels == "keep":
            y = y.reshape(n, c, h * w).reshape(n, c, h, w)
        elif self.channels == "shuffle":
            y = y.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, -1, h, w)
        elif self.channels == "other":
            y = y + x.repeat(1, 2, 1, 1).reshape(n, c, h, w)
        elif self.channels == "batch":  # a size read as axis 0 of another shape: n·h·w rows
            rows = y.permute(0, 2, 3, 1).reshape(-1, c).shape[0]
            y = y.reshape(rows, c, 1).reshape(n, c, h, w)
        small = F.avg_pool2d(y, 2)
        return self.b(F.interpolate(small, size=(h, w)) + y)


class TokenMLP(nn.Module):
    """PVT-v2's MLP on tokens (B, N, C): fc1, then the tokens as an image by fc1's own channel
    count, a depthwise conv, back to tokens (``flatten(2)``), fc2."""

    def __init__(self, size: int = 4) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 8)
        self.dwconv = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.fc2 = nn.Linear(8, 6)
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc1(x)
        b, _, c = x.shape
        x = x.transpose(1, 2).view(b, c, self.size, self.size)
        x = self.dwconv(x).flatten(2).transpose(1, 2)
        return self.fc2(F.gelu(x))


def test_spatial_shape_reads_are_unchanged() -> None:
    torch.manual_seed(5)
    check_exact(PyramidUp().double(), "a", 10, x64(2, 3, 8, 6))


def test_a_view_by_the_widened_channel_count_that_keeps_the_channel_axis() -> None:
    torch.manual_seed(5)
    check_exact(PyramidUp("keep").double(), "a", 10, x64(2, 3, 8, 6))
    torch.manual_seed(6)
    child = check_exact(TokenMLP().double(), "fc1", 11, x64(2, 16, 6))
    assert child.dwconv.out_channels == 11 and child.fc2.in_features == 11


def test_reading_the_channel_count_otherwise_is_refused_by_name() -> None:
    with pytest.raises(
        MorphError, match=r"getitem.*reads the shape of a widened tensor .* where it holds"
    ):
        widen(PyramidUp("shuffle").double(), "a", 10, probe=x64(2, 3, 8, 6), seed=0)
    with pytest.raises(MorphError, match=r"sizes something other than a view of the widened"):
        widen(PyramidUp("other").double(), "a", 10, probe=x64(2, 3, 8, 6), seed=0)
    with pytest.raises(MorphError, match=r"reshape.*other than to \(batch, -1\) or, by its own"):
        widen(PyramidUp("batch").double(), "a", 10, probe=x64(2, 3, 8, 6), seed=0)


class ResNeXtBlock(nn.Module):
    """1×1 conv → BN → ReLU → grouped 3×3 conv (4 groups of 2 → 3) → BN → ReLU → 1×1 conv;
    ``chunk`` puts a GLU chunk between the widened conv and the grouped one (2 groups of 2)."""

    def __init__(self, chunk: bool = False) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(3, 8, 1)
        self.bn1 = nn.BatchNorm2d(8)
        self.grouped = nn.Conv2d(4 if chunk else 8, 12, 3, padding=1, groups=2 if chunk else 4)
        self.bn2 = nn.BatchNorm2d(12)
        self.expand = nn.Conv2d(12, 5, 1)
        self.chunk = chunk

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.reduce(x)))
        if self.chunk:
            a, b = y.chunk(2, dim=1)
            y = a * torch.sigmoid(b)
        return self.expand(torch.relu(self.bn2(self.grouped(y))))


def resnext(chunk: bool = False) -> nn.Module:
    torch.manual_seed(8)
    net = ResNeXtBlock(chunk).double()
    for bn in (net.bn1, net.bn2):  # trained statistics
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
    return net.eval()


@pytest.mark.parametrize("zero_side", ["auto", "inner", "outer"])
def test_grouped_consumer_grows_by_whole_new_groups(zero_side: str) -> None:
    parent = resnext()
    x = x64(2, 3, 5, 5)
    child = check_exact(parent, "reduce", 12, x, zero_side=zero_side)
    g = child.grouped
    assert (g.in_channels, g.out_channels, g.groups) == (12, 18, 6)
    assert child.bn2.num_features == 18 and child.expand.in_channels == 18
    # train mode too: BatchNorm is per channel
    parent.train()
    child.train()
    with torch.no_grad():
        y, z = parent(x), child(x)
    assert float((y - z).abs().max() / y.abs().max()) <= F64_TOL


def test_grouped_consumer_needs_whole_groups() -> None:
    with pytest.raises(MorphError, match=r"'grouped'.*width of 8 \+ a multiple of 2 \(got 11\)"):
        widen(resnext(), "reduce", 11, probe=x64(2, 3, 5, 5), seed=0)


def test_grouped_consumer_after_a_chunk_is_refused() -> None:
    with pytest.raises(MorphError, match=r"'grouped'.*not through a concatenation or a chunk"):
        widen(resnext(chunk=True), "reduce", 12, probe=x64(2, 3, 5, 5), seed=0)


# ---------------------------------------------------------------------------------------------
# Exported graphs (a Hugging Face model is walked on its torch.export graph)


def _fused_gate_up(split: bool = False) -> nn.Module:
    """A Hugging Face model whose MLP computes gate and up with one projection (as Phi-3 and
    ModernBERT do), chunked in two; ``split`` writes the part size instead."""
    try:
        transformers = import_transformers()
    except ImportError:  # pragma: no cover - the test extra installs it
        pytest.skip("transformers is not installed")

    class FusedConfig(transformers.PretrainedConfig):
        model_type = "netmorph-fused-gate-up"

    class FusedGateUp(transformers.PreTrainedModel):
        config_class = FusedConfig

        def __init__(self, config: FusedConfig) -> None:
            super().__init__(config)
            self.gate_up, self.down = nn.Linear(6, 16), nn.Linear(8, 6)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.gate_up(x)
            gate, up = h.split(8, dim=-1) if split else h.chunk(2, dim=-1)
            return x + self.down(up * F.silu(gate))

    return FusedGateUp(FusedConfig()).double().eval()


def test_exported_fused_gate_up_chunks_grow_together() -> None:
    torch.manual_seed(6)
    child = check_exact(_fused_gate_up(), "gate_up", 28, x64(2, 5, 6))
    assert child.gate_up.out_features == 28 and child.down.in_features == 14


def test_exported_split_with_fixed_sizes_is_refused_by_name() -> None:
    with pytest.raises(MorphError, match=r"aten\.split.*sizes fixed in the graph"):
        widen(_fused_gate_up(split=True), "gate_up", 28, probe=x64(2, 5, 6), seed=0)


def test_without_a_probe_a_channels_last_transpose_asks_for_one() -> None:
    """No probe: the rank of a Linear output is unknown, transpose(1, 2) may not move its
    channels; permute names every axis and is followed."""
    with pytest.raises(MorphError, match=r"'transpose'.*unknown rank; pass probe="):
        widen(MixerBlock("transpose").double(), "proj", 11, seed=0, tol=None)
    parent = MixerBlock("permute").double()
    x = x64(2, 5, 6)
    child, _ = widen(parent, "proj", 11, seed=0, tol=None)
    with torch.no_grad():
        assert float((parent(x) - child(x)).abs().max() / parent(x).abs().max()) <= F64_TOL


class PlainConv3d(nn.Conv3d):
    """A subclass that keeps nn.Conv3d's forward (torchvision's Conv3DSimple)."""


def test_a_conv_subclass_keeping_its_forward_is_a_consumer_layer() -> None:
    parent = nn.Sequential(
        nn.Conv3d(2, 4, 3, padding=1), nn.ReLU(), PlainConv3d(4, 3, 3, padding=1)
    ).double()
    child = check_exact(parent, "0", 6, x64(2, 2, 3, 5, 5))
    assert isinstance(child[2], PlainConv3d)
    assert child[2].in_channels == 6 and child[2].weight.shape[1] == 6


def test_torchvision_mc3_inner_conv3d_widens() -> None:
    tv = import_torchvision()
    parent = tv.models.video.mc3_18().double().eval()
    child = check_exact(parent, "layer1.0.conv1.0", 70, x64(1, 3, 2, 16, 16))
    assert child.get_submodule("layer1.0.conv2.0").in_channels == 70
