"""Containers with their own forward that split their input among member convs (timm's
``MixedConv2d``: a ModuleDict subclass, ``x.split(self.splits, 1)`` → conv i on part i →
``cat``): the member convs are called by the container, so the operations that replace a
layer are exact on them; a container that reads a member's weight is refused by name. widen
through such a split keeps every parent part whole with the new channels among its channels
and updates the container's ``splits``; split sizes nothing holds are refused by name.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch_exactness import border_input, rel_dev  # noqa: E402

from netmorph_core.torch import MorphError, deepen, grow_kernel, morph_subnet, widen  # noqa: E402

F64_TOL = 1e-9


class MixedConv(nn.ModuleDict):
    """Conv i (kernel ``kernels[i]``) on channels ``splits[i]`` of the input, outputs
    concatenated: (N, sum(splits), H, W) → (N, sum(outs), H, W)."""

    def __init__(self, splits: list[int], outs: list[int], kernels: list[int], depthwise: bool):
        super().__init__()
        for i, (c, o, k) in enumerate(zip(splits, outs, kernels)):
            groups = c if depthwise else 1
            self.add_module(str(i), nn.Conv2d(c, o, k, padding=k // 2, groups=groups))
        self.splits = splits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = torch.split(x, self.splits, 1)
        return torch.cat([conv(parts[i]) for i, conv in enumerate(self.values())], 1)


class ReadsMember(MixedConv):
    """Applies its first member's weight itself instead of calling it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = torch.split(x, self.splits, 1)
        first = nn.functional.conv2d(parts[0], self["0"].weight, self["0"].bias, padding=1)
        rest = [conv(parts[i + 1]) for i, conv in enumerate(list(self.values())[1:])]
        return torch.cat([first, *rest], 1)


class MixNet(nn.Module):
    """stem → BN → ReLU → mixed depthwise conv (3×3 on 3 channels, 5×5 on 3) → BN → ReLU →
    mixed pointwise conv (two 1×1) → pooled head."""

    def __init__(self, dw: type[MixedConv] = MixedConv) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.dw = dw([3, 3], [3, 3], [3, 5], depthwise=True)
        self.bn2 = nn.BatchNorm2d(6)
        self.pw = MixedConv([3, 3], [2, 2], [1, 1], depthwise=False)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.stem(x)))
        y = self.pw(torch.relu(self.bn2(self.dw(y))))
        return self.head(y.mean((2, 3)))


def _trained(model: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    model = model.double()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    return model.eval()


OPERATIONS = {
    "deepen": lambda m, at: deepen(m, at, seed=0),
    "grow_kernel": lambda m, at: grow_kernel(m, at, 7),
    "morph_subnet": lambda m, at: morph_subnet(
        m, at, [(6, 1), (6, m.get_submodule(at).kernel_size), (None, 1)], seed=0
    ),
}


@pytest.mark.parametrize("at", ["dw.0", "dw.1", "pw.1"])
@pytest.mark.parametrize("operation", OPERATIONS)
def test_member_of_a_splitting_container_is_morphed_exactly(operation: str, at: str) -> None:
    model = _trained(MixNet())
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = border_input((2, 3, 9, 9))
    child, _ = OPERATIONS[operation](model, at)
    assert type(child.get_submodule(at.rpartition(".")[0])) is type(model.dw)
    assert rel_dev(model, child, x) <= F64_TOL
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def test_container_reading_a_members_weight_is_refused() -> None:
    model = _trained(MixNet(ReadsMember))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(MorphError, match=r"'dw' \(ReadsMember\) reads 0\.bias, 0\.weight"):
        deepen(model, "dw.0", seed=0)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


class FixedSplit(MixedConv):
    """Splits by sizes written in its forward, held by no attribute."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = torch.split(x, [3, 3], 1)
        return torch.cat([conv(parts[i]) for i, conv in enumerate(self.values())], 1)


class Twice(MixNet):
    """Calls its mixed depthwise conv twice: one ``splits`` for two splits."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.stem(x)))
        y = self.pw(torch.relu(self.bn2(self.dw(self.dw(y)))))
        return self.head(y.mean((2, 3)))


@pytest.mark.parametrize("side", ["inner", "outer"])
@pytest.mark.parametrize(
    ("at", "width"), [("stem", 8), ("dw.0", 9), ("dw.1", 6), ("pw.0", 4), ("pw.1", 5)]
)
def test_widen_through_a_split_container_grows_its_parts(at: str, width: int, side: str) -> None:
    """stem: its new channels reach dw's split (the producer's channels kept in order) and dw's
    depthwise convs grow new groups whose outputs reach pw's split; a depthwise member grows
    per group and its new channels reach pw's split."""
    model = _trained(MixNet())
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = border_input((2, 3, 9, 9))
    child, report = widen(model, at, width, seed=0, probe=(x,), zero_side=side)
    assert rel_dev(model, child, x) <= F64_TOL
    assert report.modes == ("eval", "train")
    for name in ("dw", "pw"):
        container = child.get_submodule(name)
        assert sum(container.splits) == sum(conv.in_channels for conv in container.values())
        assert [conv.in_channels for conv in container.values()] == container.splits
    assert model.dw.splits == [3, 3] and model.pw.splits == [3, 3]
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def test_widen_refuses_split_sizes_no_attribute_holds() -> None:
    model = _trained(MixNet(FixedSplit))
    with pytest.raises(MorphError, match=r"'dw' \(FixedSplit\) holds no attribute its forward"):
        widen(model, "stem", 8, seed=0, input_shape=(2, 3, 9, 9))
    model = _trained(Twice())
    with pytest.raises(MorphError, match=r"'dw' splits 2 times in the graph"):
        widen(model, "stem", 8, seed=0, input_shape=(2, 3, 9, 9))
