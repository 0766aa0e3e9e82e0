"""widen through a GLU (``F.glu``, ``nn.GLU``) on convolutions (dim=1) and linear layers
(dim=-1), traced with torch.fx: a width of 2C + 2r grows both halves [a; b] by r, the GLU's
consumer reads C + r channels; float64 forward passes exact, the parent unchanged; odd widths
refused with a ValueError naming ``width``."""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from netmorph_core.torch import widen  # noqa: E402

TOL = 1e-9


class ConvGLU(nn.Module):
    """Conv1d of 2·4 channels, GLU over the channels (dim=1), Conv1d reading 4."""

    def __init__(self, module: bool) -> None:
        super().__init__()
        self.first = nn.Conv1d(3, 8, 3, padding=1)
        self.glu = nn.GLU(dim=1) if module else None
        self.last = nn.Conv1d(4, 5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.first(x)
        return self.last(self.glu(h) if self.glu is not None else F.glu(h, dim=1))


class LinearGLU(nn.Module):
    """Linear of 2·5 outputs, GLU over the last axis, Linear reading 5."""

    def __init__(self, module: bool) -> None:
        super().__init__()
        self.first = nn.Linear(6, 10)
        self.glu = nn.GLU() if module else None
        self.last = nn.Linear(5, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.first(x)
        return self.last(self.glu(h) if self.glu is not None else F.glu(h))


class TimeGLU(nn.Module):
    """GLU over the time axis (dim=2) of a convolution's output: channel-wise."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Conv1d(3, 4, 3, padding=1)
        self.last = nn.Conv1d(4, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(F.glu(self.first(x), dim=2))


def _x(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


CASES = {
    "conv": (ConvGLU, _x(2, 3, 7), 12),
    "linear": (LinearGLU, _x(2, 4, 6), 14),
}


@pytest.mark.parametrize("side", ["auto", "inner", "outer"])
@pytest.mark.parametrize("module", [False, True], ids=["F.glu", "nn.GLU"])
@pytest.mark.parametrize("case", CASES)
def test_widen_through_glu_grows_both_halves(case: str, module: bool, side: str) -> None:
    build, x, width = CASES[case]
    torch.manual_seed(0)
    parent = build(module).double().eval()
    before = copy.deepcopy(parent.state_dict())
    child, report = widen(parent, "first", width, zero_side=side, probe=x, seed=0)
    with torch.no_grad():
        y, z = parent(x), child(x)
    assert float((y - z).abs().max() / y.abs().max()) <= TOL and report.rel_dev_f64 <= TOL
    grown = width // 2
    assert (getattr(child.last, "in_channels", None) or child.last.in_features) == grown
    assert all(torch.equal(before[k], v) for k, v in parent.state_dict().items())


@pytest.mark.parametrize("case", CASES)
def test_widen_through_glu_needs_an_even_width(case: str) -> None:
    build, x, width = CASES[case]
    with pytest.raises(ValueError, match=rf"width={width + 1}: .*GLU.*must be even"):
        widen(build(False).double(), "first", width + 1, probe=x)


def test_glu_along_another_axis_is_channel_wise() -> None:
    torch.manual_seed(0)
    parent = TimeGLU().double().eval()
    x = _x(2, 3, 8)
    child, report = widen(parent, "first", 7, probe=x, seed=0)  # no halves: any width
    with torch.no_grad():
        y, z = parent(x), child(x)
    assert float((y - z).abs().max() / y.abs().max()) <= TOL and report.rel_dev_f64 <= TOL
    assert child.last.in_channels == 7
