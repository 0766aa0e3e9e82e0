"""widen on real modules: consumers found with torch.fx, exact forward passes."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from netmorph_core.torch import MorphError, PActivation, widen  # noqa: E402
from netmorph_core.torch.models import TransformerMLP, cifar_net, small_resnet  # noqa: E402

F64_TOL = 1e-9


def rel_dev(parent: nn.Module, child: nn.Module, x: torch.Tensor, train: bool = False) -> float:
    parent.train(train)
    child.train(train)
    with torch.no_grad():
        y, z = parent(x), child(x)
    parent.eval()
    child.eval()
    return float((y - z).abs().max() / y.abs().max())


def pair(act: nn.Module, *, c_out: int = 8) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), act, nn.Conv2d(4, c_out, 3, padding=1)
    ).double()


def x4(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


def test_relu_pair_zeroes_the_consumer_columns() -> None:
    torch.manual_seed(0)
    parent = pair(nn.ReLU())
    x = x4(2, 3, 6, 6)
    child, report = widen(parent, "0", 7, probe=x, seed=0)
    assert rel_dev(parent, child, x) <= F64_TOL and report.rel_dev_f64 <= F64_TOL
    assert child[0].out_channels == 7 and child[2].in_channels == 7
    src = report.param_sources["0.weight"].index[0]
    assert sorted(src[src >= 0].tolist()) == [0, 1, 2, 3] and (src < 0).sum() == 3
    old = src >= 0
    assert torch.equal(child[0].weight[old], parent[0].weight[src[old]])
    assert torch.equal(child[2].weight[:, old], parent[2].weight[:, src[old]])
    assert not child[2].weight[:, ~old].any()  # "outer": ReLU would leave zeroed rows dead
    assert child[0].weight[~old].abs().min() > 0
    assert any("zero gradient at 0" in note for note in report.notes)


def test_tanh_pair_zeroes_the_smaller_side() -> None:
    torch.manual_seed(1)
    parent = pair(nn.Tanh(), c_out=8)  # new rows: 3·9 + 1 = 28 per channel < 8·9 columns
    x = x4(2, 3, 6, 6)
    child, report = widen(parent, "0", 6, probe=x, seed=0)
    new = report.param_sources["0.weight"].index[0] < 0
    assert not child[0].weight[new].any() and not child[0].bias[new].any()
    assert child[2].weight[:, new].abs().min() > 0
    assert rel_dev(parent, child, x) <= F64_TOL
    child, report = widen(parent, "0", 6, zero_side="outer", probe=x, seed=0)
    new = report.param_sources["0.weight"].index[0] < 0
    assert not child[2].weight[:, new].any()
    assert rel_dev(parent, child, x) <= F64_TOL


def test_sigmoid_forces_the_outer_side() -> None:
    torch.manual_seed(2)
    parent = pair(nn.Sigmoid())
    x = x4(2, 3, 6, 6)
    with pytest.raises(ValueError, match=r"zero_side='inner' is not exact.*Sigmoid"):
        widen(parent, "0", 6, zero_side="inner", probe=x)
    child, report = widen(parent, "0", 6, probe=x, seed=0)
    assert any("does not keep zero channels" in note for note in report.notes)
    assert rel_dev(parent, child, x) <= F64_TOL


def test_batch_norm_and_prelu_get_new_channels() -> None:
    torch.manual_seed(3)
    parent = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.PReLU(4), nn.Conv2d(4, 5, 1)
    ).double()
    with torch.no_grad():
        parent[1].running_mean.uniform_(-1, 1)
        parent[1].running_var.uniform_(0.5, 2)
        parent[1].weight.uniform_(0.5, 2)
        parent[1].bias.uniform_(-1, 1)
    x = x4(2, 3, 5, 5)
    child, report = widen(parent, "0", 6, zero_side="inner", probe=x, seed=0)
    new = report.param_sources["1.weight"].index[0] < 0
    bn = child[1]
    assert bn.num_features == 6 and child[2].num_parameters == 6
    assert torch.equal(bn.running_mean[new], torch.zeros(2, dtype=torch.float64))
    assert torch.equal(bn.running_var[new], torch.ones(2, dtype=torch.float64))
    assert torch.equal(bn.weight[new].detach(), torch.ones(2, dtype=torch.float64))
    assert not bn.bias[new].any()
    assert rel_dev(parent, child, x) <= F64_TOL
    assert report.train_mode_holds and report.train_rel_dev_f64 <= F64_TOL
    assert rel_dev(parent, child, x, train=True) <= F64_TOL


def test_flatten_to_linear_uses_column_blocks() -> None:
    torch.manual_seed(4)
    parent = cifar_net("cifar_base", image_size=8, width_divisor=4).double()
    x = x4(2, 3, 8, 8)
    child, report = widen(parent, "features.12", 24, probe=x, seed=0)  # (1:16) before the head
    fc = child.classifier[1]
    assert fc.in_features == 24 and parent.classifier[1].in_features == 16  # 1×1 spatial
    assert rel_dev(parent, child, x) <= F64_TOL
    parent = cifar_net("cifar_base", image_size=16, width_divisor=4).double()
    x = x4(2, 3, 16, 16)
    child, report = widen(parent, "features.12", 20, probe=x, seed=0)
    cols = report.param_sources["classifier.1.weight"].index[1]
    src = report.param_sources["features.12.weight"].index[0]
    block = 4  # 2×2 spatial positions per channel
    for j, s in enumerate(src):
        expected = np.arange(s * block, (s + 1) * block) if s >= 0 else np.full(block, -1)
        np.testing.assert_array_equal(cols[j * block : (j + 1) * block], expected)
    assert rel_dev(parent, child, x) <= F64_TOL


class Functional(nn.Module):
    """Consumers reached through functional calls, view(size(0), -1), means and a concat."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(3, 5, 3, padding=1)
        self.c = nn.Conv2d(9, 6, 1)
        self.fc = nn.Linear(9 * 4, 3)
        self.head = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.gelu(self.a(x)) * 0.5
        both = torch.cat([a, torch.tanh(self.b(x))], dim=1)
        y = F.avg_pool2d(both, 2)
        y = self.fc(y.view(y.size(0), -1))
        z = self.head(self.c(both).mean(dim=(2, 3)))
        return torch.cat([y, z], 1)


@pytest.mark.parametrize("at", ["a", "b"])
def test_concat_offsets_and_functional_consumers(at: str) -> None:
    torch.manual_seed(5)
    parent = Functional().double()
    x = x4(2, 3, 4, 4)
    child, report = widen(parent, at, 8, probe=x, seed=0)
    assert rel_dev(parent, child, x) <= F64_TOL
    cols = report.param_sources["c.weight"].index[1]
    offset = 0 if at == "a" else 4
    other = np.arange(5, 9) if at == "a" else np.arange(0, 4)
    kept = cols[cols >= 0]
    assert set(other) <= set(kept.tolist()) and len(cols) == 9 - (4 if at == "a" else 5) + 8
    assert set(kept.tolist()) == set(range(9)) and offset in kept


def test_through_padding_modules_and_deepened_chains() -> None:
    torch.manual_seed(10)
    parent = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.ReflectionPad2d((1, 2, 0, 1)),
        nn.Conv2d(4, 5, 3),
        nn.ConstantPad2d(1, 0.5),
        nn.Conv2d(5, 2, 3),
    ).double()
    x = x4(2, 3, 6, 6)
    child, _ = widen(parent, "0", 7, probe=x, seed=0)
    assert rel_dev(parent, child, x) <= F64_TOL
    with pytest.raises(ValueError, match="ConstantPad2d"):
        widen(parent, "3", 7, zero_side="inner", probe=x)
    child, _ = widen(parent, "3", 7, probe=x, seed=0)
    assert rel_dev(parent, child, x) <= F64_TOL


class SharedConsumer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.c = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        return self.c(torch.tanh(y)) + self.c(torch.sigmoid(y))


def test_a_consumer_called_twice_is_updated_once() -> None:
    torch.manual_seed(11)
    parent = SharedConsumer().double()
    x = x4(2, 3, 5, 5)
    with pytest.raises(ValueError, match="sigmoid"):
        widen(parent, "a", 6, zero_side="inner", probe=x)
    child, _ = widen(parent, "a", 6, probe=x, seed=0)
    assert child.c.weight.shape == (2, 6, 1, 1)
    assert rel_dev(parent, child, x) <= F64_TOL


@pytest.mark.parametrize(
    ("at", "width", "partner"),
    [("layer1.0.conv2", 24, "conv1"), ("layer2.0.conv2", 40, "layer2.0.downsample.0")],
)
def test_residual_partners_grow_with_the_layer(at: str, width: int, partner: str) -> None:
    """A sum of widened and unwidened channels has no exact child: the other producers of the
    residual sum (the stem, the shortcut) grow with the layer, with one permutation."""
    torch.manual_seed(6)
    parent = small_resnet().double().eval()
    x = x4(2, 3, 8, 8)
    child, report = widen(parent, at, width, probe=x, seed=0)
    assert rel_dev(parent, child, x) <= F64_TOL and report.train_mode_holds
    assert child.get_submodule(partner).out_channels == width
    assert any(f"['{partner}']" in note for note in report.notes), report.notes
    a = report.param_sources[f"{at}.weight"].index[0]
    np.testing.assert_array_equal(a, report.param_sources[f"{partner}.weight"].index[0])


class ResidualOnStem(nn.Module):
    """stem(x) + conv(stem(x)): the sum's other producer also reads the stem's channels."""

    def __init__(self, groups: int = 1) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.conv = nn.Conv2d(4, 4, 3, padding=1, groups=groups)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.stem(x))
        return self.head((h + self.conv(h)).mean((2, 3)))


@pytest.mark.parametrize("zero_side", ["outer", "inner"])
@pytest.mark.parametrize("at", ["stem", "conv"])
def test_a_partner_that_reads_the_widened_channels_grows_both_ways(at: str, zero_side: str) -> None:
    """The partner takes new input columns (the stem's new channels) and new output rows (its
    share of the sum's new channels): exact on either side."""
    torch.manual_seed(0)
    parent = ResidualOnStem().double().eval()
    x = x4(2, 3, 5, 5)
    child, report = widen(parent, at, 6, probe=x, zero_side=zero_side)
    assert report.rel_dev_f64 <= F64_TOL
    with torch.no_grad():
        torch.testing.assert_close(child(x), parent(x), rtol=0, atol=1e-12)
    assert child.conv.weight.shape == (6, 6, 3, 3) and child.head.in_features == 6
    rows, cols = report.param_sources["conv.weight"].index[:2]
    stem_rows = report.param_sources["stem.weight"].index[0]
    np.testing.assert_array_equal(rows, stem_rows)
    np.testing.assert_array_equal(cols, stem_rows)


def test_a_grouped_partner_grows_by_groups_and_is_no_producer() -> None:
    """A grouped partner that reads the stem grows whole new groups as its consumer, which
    widens its output with the same channels: the sum needs no other producer. Named as a
    producer itself, it is refused: its groups tie its new rows to its new columns."""
    torch.manual_seed(0)
    parent = ResidualOnStem(groups=2).double().eval()
    x = x4(2, 3, 5, 5)
    child, report = widen(parent, "stem", 8, probe=x)
    assert report.rel_dev_f64 <= F64_TOL and child.conv.groups == 4
    assert not any("other producers" in n for n in report.notes)
    with pytest.raises(ValueError, match="must have the same groups"):
        widen(parent, ["stem", "conv"], 8, probe=x)


class GroupedResidual(nn.Module):
    """stem(x) + conv(stem(x)) with both convolutions in two groups."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(4, 4, 3, padding=1, groups=2)
        self.conv = nn.Conv2d(4, 4, 3, padding=1, groups=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        return h + self.conv(h)


def test_a_grouped_producer_that_reads_the_widened_channels_is_refused() -> None:
    match = r"'conv' \(Conv2d\) consumes channels widened with it and is a grouped convolution"
    with pytest.raises(MorphError, match=match):
        widen(GroupedResidual().double(), ["stem", "conv"], 8, probe=x4(2, 4, 5, 5))


def test_a_sum_with_the_model_input_is_refused() -> None:
    parent = TransformerMLP(8, 16).double()
    with pytest.raises(MorphError, match=r"adds the widened channels to the model input 'x'"):
        widen(parent, "fc2", 10, probe=x4(2, 3, 8))


def test_residual_add_widens_every_producer_listed() -> None:
    torch.manual_seed(6)
    parent = small_resnet().double().eval()
    x = x4(2, 3, 8, 8)
    child, report = widen(parent, ["layer2.0.conv2", "layer2.0.downsample.0"], 40, probe=x, seed=0)
    assert rel_dev(parent, child, x) <= F64_TOL and report.train_mode_holds
    assert child.fc.in_features == 40
    a = report.param_sources["layer2.0.conv2.weight"].index[0]
    b = report.param_sources["layer2.0.downsample.0.weight"].index[0]
    np.testing.assert_array_equal(a, b)  # one permutation for every producer of the add
    child, _ = widen(parent, ["conv1", "layer1.0.conv2"], 20, probe=x, seed=1)
    assert rel_dev(parent, child, x) <= F64_TOL
    assert (
        child.layer2[0].conv1.in_channels == 20 and child.layer2[0].downsample[0].in_channels == 20
    )


def test_resnet_block_inner_widen_train_and_eval() -> None:
    torch.manual_seed(7)
    parent = small_resnet().double()
    x = x4(2, 3, 8, 8)
    child, report = widen(parent, "layer1.0.conv1", 24, probe=x, seed=0)
    assert rel_dev(parent, child, x) <= F64_TOL
    assert rel_dev(parent, child, x, train=True) <= F64_TOL
    assert report.train_mode_holds


def test_transformer_mlp_widen() -> None:
    torch.manual_seed(8)
    parent = TransformerMLP(16, 64).double()
    x = x4(2, 5, 16)
    child, _ = widen(parent, "fc1", 96, probe=x, seed=0)
    assert child.fc1.out_features == 96 and child.fc2.in_features == 96
    assert rel_dev(parent, child, x) <= F64_TOL
    child, _ = widen(parent, "fc1", 96, zero_side="inner", probe=x, seed=0)
    assert rel_dev(parent, child, x) <= F64_TOL
    with pytest.raises(MorphError, match="model input 'x'"):
        widen(parent, "fc2", 20, probe=x)


def test_pactivation_consumer_path() -> None:
    torch.manual_seed(9)
    parent = pair(PActivation("sigmoid", a=0.5)).double()
    x = x4(2, 3, 5, 5)
    with pytest.raises(ValueError, match="not exact"):
        widen(parent, "0", 6, zero_side="inner", probe=x)
    child, _ = widen(parent, "0", 6, probe=x, seed=0)
    assert rel_dev(parent, child, x) <= F64_TOL


class DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y if y.sum() > 0 else -y


class LayerNormed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 6)
        self.norm = nn.LayerNorm(6)
        self.fc2 = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.norm(self.fc1(x)))


def test_graph_errors_name_the_module_and_reason() -> None:
    with pytest.raises(MorphError, match=r"torch.fx cannot trace DataDependent .*widen"):
        widen(DataDependent(), "conv", 6)
    with pytest.raises(MorphError, match=r"'norm' \(LayerNorm\).*cannot be updated"):
        widen(LayerNormed(), "fc1", 8, input_shape=(2, 4))
    with pytest.raises(MorphError, match="model's output would change shape"):
        widen(nn.Sequential(nn.Linear(3, 4), nn.ReLU()), "0", 6)
    grouped = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 3, groups=2))
    with pytest.raises(MorphError, match=r"grouped convolution \(groups=2, 2 input channels per"):
        widen(grouped, "0", 5)  # not a whole new group of 2
    assert issubclass(MorphError, ValueError)


def test_tied_parameters_are_refused() -> None:
    parent = pair(nn.ReLU(), c_out=4)
    parent.append(nn.Conv2d(4, 4, 3, padding=1))
    parent[3].weight = parent[2].weight
    with pytest.raises(MorphError, match=r"shared by modules \['2', '3'\]"):
        widen(parent, "0", 6)


def test_bad_widths() -> None:
    parent = pair(nn.ReLU())
    with pytest.raises(ValueError, match="width must exceed the current 4"):
        widen(parent, "0", 4)
    with pytest.raises(TypeError, match="width must be a positive int"):
        widen(parent, "0", 6.0)
    with pytest.raises(ValueError, match="same output channels"):
        widen(parent, ["0", "2"], 10)
    with pytest.raises(ValueError, match="zero_side must be one of"):
        widen(parent, "0", 6, zero_side="left")


class StochasticDepthOnStem(ResidualOnStem):
    """ResidualOnStem with torchvision's stochastic depth on the block (a call of the
    fx-wrapped function in the traced graph), as in EfficientNet-V2's first stage."""

    def __init__(self) -> None:
        super().__init__()
        from thirdparty import import_torchvision

        self.drop = import_torchvision().ops.StochasticDepth(0.2, "row")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.stem(x))
        return self.head((h + self.drop(self.conv(h))).mean((2, 3)))


@pytest.mark.parametrize("train", [False, True])
def test_stochastic_depth_passes_the_widened_channels(train: bool) -> None:
    torch.manual_seed(0)
    parent = StochasticDepthOnStem().double().train(train)
    x = x4(2, 3, 5, 5)
    child, report = widen(parent, "stem", 6, probe=x)
    assert report.rel_dev_f64 <= F64_TOL and child.conv.out_channels == 6
    assert any("['conv']" in note for note in report.notes)


class Ghost(nn.Module):
    """GhostNet's module: a 1×1 conv, a depthwise conv of its output, both concatenated and
    sliced to ``out_chs`` (the whole concatenation where out_chs is even)."""

    def __init__(self, out_chs: int) -> None:
        super().__init__()
        self.out_chs = out_chs
        init = (out_chs + 1) // 2
        self.primary = nn.Conv2d(3, init, 1)
        self.cheap = nn.Conv2d(init, init, 3, padding=1, groups=init)
        self.head = nn.Conv2d(out_chs, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = F.relu(self.primary(x))
        out = torch.cat([x1, F.relu(self.cheap(x1))], dim=1)
        return self.head(out[:, : self.out_chs, :, :]).mean((2, 3))


@pytest.mark.parametrize(("at", "width", "grown"), [("primary", 6, 12), ("cheap", 12, 16)])
def test_a_slice_keeping_every_channel_grows_with_them(at: str, width: int, grown: int) -> None:
    torch.manual_seed(0)
    parent = Ghost(8).double().eval()
    x = x4(2, 3, 5, 5)
    child, report = widen(parent, at, width, probe=x)
    assert report.rel_dev_f64 <= F64_TOL
    assert child.out_chs == grown and parent.out_chs == 8
    assert child.head.in_channels == grown


def test_a_slice_that_drops_channels_is_refused() -> None:
    parent = Ghost(7).double().eval()
    with pytest.raises(MorphError, match=r"keeps 7 of the 8 channels, and the new ones"):
        widen(parent, "primary", 6, probe=x4(2, 3, 5, 5))
