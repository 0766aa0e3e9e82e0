"""Weight-standardised convolutions (timm's StdConv2d and ScaledStdConv2d: BiT, NF-ResNet,
NFNet): the operations that replace the layer preserve its standardised weight (widen and
grow_kernel, which keep the layer: tests/test_torch_standardized_widen.py)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch_exactness import rel_dev  # noqa: E402

from netmorph_core.morph.graph import Module, conv_edge  # noqa: E402
from netmorph_core.torch import (  # noqa: E402
    MorphError,
    deepen,
    morph_module,
    morph_stacked,
    morph_subnet,
)
from netmorph_core.torch.standardized import is_weight_standardised  # noqa: E402

F64_TOL = 1e-9


class ScaledStdConv2d(nn.Conv2d):
    """As timm's ScaledStdConv2d: filter o is gain_o·scale·(W_o − mean)/√(var + eps)."""

    def __init__(self, c_in: int, c_out: int, k: int, eps: float = 1e-6) -> None:
        super().__init__(c_in, c_out, k, padding=k // 2)
        self.eps = eps
        self.scale = self.weight[0].numel() ** -0.5
        self.gain = nn.Parameter(torch.empty(c_out, 1, 1, 1).uniform_(0.5, 1.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = F.batch_norm(
            self.weight.reshape(1, self.out_channels, -1),
            None,
            None,
            weight=(self.gain * self.scale).view(-1),
            training=True,
            momentum=0.0,
            eps=self.eps,
        ).reshape_as(self.weight)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class NotStandardised(ScaledStdConv2d):
    """Has eps and a gain but computes something else: twice the standardised conv."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * super().forward(x)


class Net(nn.Module):
    def __init__(self, conv: nn.Module) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.conv = conv
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(torch.relu(self.stem(x)))))


SPEC = Module([conv_edge("a", "s", "m", 3), conv_edge("b", "m", "t", 1)], channels={"m": 8})
REPLACING = {
    "deepen": lambda m: deepen(m, "conv", seed=0),
    "morph_subnet": lambda m: morph_subnet(m, "conv", [(6, 3), (None, 1)], seed=0),
    "morph_stacked": lambda m: morph_stacked(m, "conv", [[(None, 3)], [(None, 3)]], seed=0),
    "morph_module": lambda m: morph_module(m, "conv", SPEC, seed=0),
}


def _net(cls: type = ScaledStdConv2d) -> nn.Module:
    torch.manual_seed(0)
    return Net(cls(4, 4, 3)).double().eval()


def _timm_convs() -> list:
    from thirdparty import import_timm

    try:
        timm = import_timm()
    except ImportError:
        return []
    std = timm.layers.std_conv
    return [std.StdConv2d(4, 4, 3, padding=1), std.ScaledStdConv2d(4, 4, 3, padding=1)]


@pytest.mark.parametrize("operation", REPLACING)
def test_replacing_operations_keep_the_standardised_weight(operation: str) -> None:
    parent = _net()
    before = {k: v.clone() for k, v in parent.state_dict().items()}
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    child, report = REPLACING[operation](parent)
    assert rel_dev(parent, child, x) <= F64_TOL and report.rel_dev_f64 <= F64_TOL
    assert not any(isinstance(m, ScaledStdConv2d) for m in child.modules())
    assert all(torch.equal(before[k], v) for k, v in parent.state_dict().items())


def test_a_subclass_computing_another_function_is_still_refused() -> None:
    assert not is_weight_standardised(_net(NotStandardised).conv)
    with pytest.raises(MorphError, match="overrides forward"):
        deepen(_net(NotStandardised), "conv", seed=0)


@pytest.mark.parametrize("index", [0, 1], ids=["StdConv2d", "ScaledStdConv2d"])
def test_timm_standardised_convs_deepen_exactly(index: int) -> None:
    convs = _timm_convs()
    if not convs:
        pytest.skip("timm is not installed")
    torch.manual_seed(0)
    parent = Net(convs[index]).double().eval()
    assert is_weight_standardised(parent.conv)
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    for grow in (REPLACING["deepen"], REPLACING["morph_subnet"]):
        child, _ = grow(parent)
        assert rel_dev(parent, child, x) <= F64_TOL
