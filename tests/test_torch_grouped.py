"""The adapter on grouped and depthwise convolutions, measured on real forward passes (float64)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from netmorph_core.torch import MorphError, deepen, grow_kernel, morph_subnet, widen  # noqa: E402

X = torch.randn(3, 4, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


def trained_like(model: nn.Module) -> nn.Module:
    """Random BatchNorm affine parameters and statistics, so a wrong channel map shows."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.num_features, generator=g, dtype=m.weight.dtype) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g, dtype=m.bias.dtype))
                m.running_mean.copy_(torch.randn(m.num_features, generator=g, dtype=m.bias.dtype))
                m.running_var.copy_(
                    torch.rand(m.num_features, generator=g, dtype=m.bias.dtype) + 0.5
                )
    return model.double().eval()


def check(parent: nn.Module, op) -> nn.Module:
    """Run ``op`` and assert the child computes the parent's function and the parent is
    unchanged; returns the child."""
    state = {k: v.clone() for k, v in parent.state_dict().items()}
    child, _ = op(parent)
    with torch.no_grad():
        expected, got = parent(X), child(X)
    assert (got - expected).abs().max() / expected.abs().max() <= 1e-9
    assert all(torch.equal(state[k], v) for k, v in parent.state_dict().items())
    return child


class SqueezeExcite(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(c, 2, 1)
        self.expand = nn.Conv2d(2, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.expand(torch.relu(self.reduce(s))))


class BatchNormReLU(nn.BatchNorm2d):
    """A BatchNorm subclass with an activation inside (the shape of timm's BatchNormAct2d)."""

    def __init__(self, c: int) -> None:
        super().__init__(c)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(super().forward(x))


class Block(nn.Module):
    """pointwise → BN+act → depthwise (multiplier 2) → BN → SE → pointwise, plus a nested cat."""

    def __init__(self) -> None:
        super().__init__()
        self.pw = nn.Conv2d(4, 6, 1)
        self.bn1 = BatchNormReLU(6)
        self.dw = nn.Conv2d(6, 12, 3, padding=1, groups=6)
        self.bn2 = nn.BatchNorm2d(12)
        self.se = SqueezeExcite(12)
        self.grouped = nn.Conv2d(4, 8, 3, padding=1, groups=2)
        self.side = nn.Conv2d(4, 3, 1)
        self.head = nn.Conv2d(12 + 8 + 3, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.se(torch.relu(self.bn2(self.dw(self.bn1(self.pw(x))))))
        inner = torch.cat([self.grouped(x), self.side(x)], 1)
        return self.head(torch.cat([a, inner], 1))


@pytest.fixture
def block() -> nn.Module:
    torch.manual_seed(0)
    return trained_like(Block())


def test_deepen_grouped_and_depthwise(block) -> None:
    child = check(block, lambda m: deepen(m, "dw", seed=0))
    assert [c.groups for c in child.dw if isinstance(c, nn.Conv2d)] == [6, 6]
    child = check(
        block,
        lambda m: deepen(m, "grouped", width=8, kernel_size=(3, 3), method="practical", seed=0),
    )
    assert [c.groups for c in child.grouped if isinstance(c, nn.Conv2d)] == [2, 2]
    child = check(block, lambda m: deepen(m, "grouped", separable=True, seed=0))
    assert [c.groups for c in child.grouped if isinstance(c, nn.Conv2d)] == [4, 2]
    with pytest.raises(
        ValueError, match=r"width \(6\) must be divisible by 'dw''s groups=6|width \(7\)"
    ):
        deepen(block, "dw", width=7)


def test_grow_kernel_and_subnet_grouped(block) -> None:
    child = check(block, lambda m: grow_kernel(m, "dw", 5))
    assert child.dw.groups == 6 and child.dw.kernel_size == (5, 5)
    check(block, lambda m: morph_subnet(m, "grouped", [(8, 3), (8, 1)], seed=0))
    with pytest.raises(ValueError, match=r"layers\[0\]'s width \(5\) must be divisible"):
        morph_subnet(block, "grouped", [(5, 3), (8, 1)])


@pytest.mark.parametrize("side", ["outer", "inner", "auto"])
def test_widen_through_depthwise_se_and_batchnorm_act(block, side) -> None:
    child = check(block, lambda m: widen(m, "pw", 9, zero_side=side, seed=0))
    assert (child.dw.in_channels, child.dw.out_channels, child.dw.groups) == (9, 18, 9)
    assert child.bn2.num_features == 18 and child.se.expand.out_channels == 18
    assert child.se.reduce.in_channels == 18 and child.head.in_channels == 12 + 6 + 11


def test_widen_grouped_producer_and_nested_cat(block) -> None:
    child = check(block, lambda m: widen(m, "grouped", 12, seed=0))
    assert child.grouped.out_channels == 12 and child.head.in_channels == 12 + 12 + 3
    check(block, lambda m: widen(m, "side", 5, seed=0))
    with pytest.raises(ValueError, match=r"width \(11\) must be divisible by the groups=2"):
        widen(block, "grouped", 11)


def test_widen_depthwise_producer_raises_its_multiplier(block) -> None:
    child = check(block, lambda m: widen(m, "dw", 18, seed=0))
    assert (child.dw.in_channels, child.dw.out_channels, child.dw.groups) == (6, 18, 6)
    assert child.bn2.num_features == 18 and child.se.expand.out_channels == 18
    with pytest.raises(ValueError, match=r"width \(16\) must be divisible by the groups=6"):
        widen(block, "dw", 16)


def test_widen_refusals_name_the_node() -> None:
    grouped = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 3, groups=2))
    with pytest.raises(
        MorphError,
        match=r"'1' \(Conv2d\) is a grouped convolution \(groups=2, 2 input .* width of 4 \+ a "
        r"multiple of 2 \(got 5\)",
    ):
        widen(grouped, "0", 5)
    with pytest.raises(MorphError, match=r"'output'.*receives widened channels"):
        widen(grouped, "0", 6)  # a new group's outputs reach the model output

    class Shuffle(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)
            self.out = nn.Conv2d(4, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            n, c, h, w = y.shape
            y = y.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
            return self.out(y)

    with pytest.raises(MorphError, match=r"reads the shape of a widened tensor|reshapes"):
        widen(Shuffle(), "conv", 6)


class LayerScaled(nn.Module):
    """conv → BatchNorm → layer scale → GELU → conv: the scale as torchvision's ConvNeXt holds it
    ((C, 1, 1) broadcast) or as timm's (``gamma`` (C,) reshaped to (1, C, 1, 1))."""

    def __init__(self, timm_style: bool) -> None:
        super().__init__()
        self.timm_style = timm_style
        self.conv = nn.Conv2d(4, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        shape = (6,) if timm_style else (6, 1, 1)
        self.gamma = nn.Parameter(torch.rand(shape, generator=torch.Generator().manual_seed(3)))
        self.out = nn.Conv2d(6, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x))
        y = y.mul(self.gamma.reshape(1, -1, 1, 1)) if self.timm_style else self.gamma * y
        return self.out(nn.functional.gelu(y))


@pytest.mark.parametrize("timm_style", [False, True])
@pytest.mark.parametrize("side", ["inner", "outer"])
def test_widen_through_a_layer_scale(timm_style, side) -> None:
    parent = trained_like(LayerScaled(timm_style))
    child = check(parent, lambda m: widen(m, "conv", 10, zero_side=side, seed=0))
    assert child.gamma.shape == ((10,) if timm_style else (10, 1, 1))
    kept = child.gamma.detach().flatten()
    old = parent.gamma.detach().flatten()
    # every parent value kept once, the new channels at the mean
    new = ~torch.isin(kept, old)
    assert int(new.sum()) == 4 and torch.allclose(kept[new], old.mean().expand(4))
    assert sorted(kept[~new].tolist()) == sorted(old.tolist())


def test_widen_refuses_a_scale_that_is_not_per_channel() -> None:
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)
            self.gamma = nn.Parameter(torch.ones(4, 1, 1))
            self.out = nn.Conv2d(4, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(self.gamma * self.conv(x)) + self.gamma.sum()

    with pytest.raises(MorphError, match=r"parameter 'gamma', which is also used elsewhere"):
        widen(Shared(), "conv", 6)

    class Spatial(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)
            self.gamma = nn.Parameter(torch.ones(4, 1))
            self.out = nn.Conv2d(4, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(self.gamma * self.conv(x))

    with pytest.raises(MorphError, match=r"'gamma' of shape \(4, 1\), which is not one value"):
        widen(Spatial(), "conv", 6)


def test_grouped_layers_pass_the_understood_layer_checks() -> None:
    model = nn.Sequential(nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 3, padding=1, groups=4)).double()
    model[1].register_forward_hook(lambda m, i, o: o)
    for op in (
        lambda m: deepen(m, "1", input_shape=(1, 4, 6, 6)),
        lambda m: grow_kernel(m, "1", 5, input_shape=(1, 4, 6, 6)),
        lambda m: morph_subnet(m, "1", [(4, 3), (None, 1)], input_shape=(1, 4, 6, 6)),
        lambda m: widen(m, "1", 8, input_shape=(1, 4, 6, 6)),
    ):
        with pytest.raises(MorphError, match=r"hook"):
            op(model)
