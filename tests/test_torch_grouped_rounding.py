"""Float32 children of grouped and depthwise ``deepen`` on real forward passes: the child's
deviation from the float64 parent is at most 2× the float32 parent's own (both measured here,
on this machine), and the float64 child is exact."""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")
from thirdparty import import_torchvision  # noqa: E402
from torch import nn  # noqa: E402

from netmorph_core.torch import deepen  # noqa: E402
from netmorph_core.torch.calibrate import trained_like  # noqa: E402

#: The bound of the task: twice the parent's own float32 rounding.
RATIO = 2.0


class Stack(nn.Module):
    """stem → grouped 3×3 (8 channels per group) → depthwise 3×3 → depthwise 5×5 (stride 2)
    → pointwise, BatchNorm and ReLU between."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.grouped = nn.Conv2d(32, 32, 3, padding=1, groups=4)
        self.dw3 = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.dw5 = nn.Conv2d(32, 32, 5, stride=2, padding=2, groups=32)
        self.bns = nn.ModuleList(nn.BatchNorm2d(32) for _ in range(3))
        self.head = nn.Conv2d(32, 10, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for conv, bn in zip((self.grouped, self.dw3, self.dw5), self.bns):
            x = torch.relu(bn(conv(torch.relu(x))))
        return self.head(x)


def probe(seed: int = 0) -> torch.Tensor:
    return torch.randn(
        4, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)
    )


def tiny_regnet() -> nn.Module:
    tv = import_torchvision()
    params = tv.models.regnet.BlockParams.from_init_params(
        depth=2, w_0=16, w_a=8.0, w_m=2.0, group_width=8, se_ratio=0.25
    )
    return tv.models.regnet.RegNet(params, num_classes=10, stem_width=8)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


def check_rounding(model64: nn.Module, at: str, **kwargs: object) -> tuple[float, float]:
    """Deepen ``at`` of the float32 copy of ``model64``; returns (float32 child's deviation
    from the float64 parent / the float32 parent's own, float64 child's deviation)."""
    x = probe(1)
    parent = model64.float().eval()
    child, _ = deepen(parent, at, probe=x[:1].float(), tol=None, seed=0, **kwargs)
    with torch.no_grad():
        ref = parent.double()(x)
        parent.float()
        own = rel(parent(x.float()), ref)
        ratio = rel(child(x.float()), ref) / own
        exact = rel(child.double()(x), ref)
    return ratio, exact


@pytest.fixture(scope="module")
def stack() -> nn.Module:
    torch.manual_seed(0)
    return trained_like(Stack(), probe())


@pytest.mark.parametrize(
    ("at", "kwargs"),
    [
        ("grouped", {}),
        ("grouped", {"separable": True}),
        ("grouped", {"width": 64}),
        ("dw3", {}),
        ("dw3", {"kernel_size": (1, 3)}),
        ("dw5", {}),
        ("dw5", {"separable": True}),
    ],
    ids=str,
)
def test_float32_child_rounds_like_the_parent(stack, at, kwargs, one_torch_thread) -> None:
    ratio, exact = check_rounding(copy.deepcopy(stack), at, **kwargs)
    assert ratio <= RATIO
    assert exact <= 1e-6  # float32 weights: the float64 child computes the rounded factors


def test_float64_child_is_exact(stack, one_torch_thread) -> None:
    x = probe(2)
    for at, kwargs in [("grouped", {}), ("dw3", {}), ("dw5", {"separable": True})]:
        parent = copy.deepcopy(stack)
        child, report = deepen(parent, at, probe=x[:1], seed=0, **kwargs)
        with torch.no_grad():
            assert rel(child(x), parent(x)) <= 1e-12
        assert report.rel_dev_f64 <= 1e-12


def test_tiny_regnet_grouped_layers(one_torch_thread) -> None:
    torch.manual_seed(0)
    model = trained_like(tiny_regnet(), probe())
    grouped = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert len(grouped) == 2  # 2 and 4 groups of 8 channels
    ratio, exact = check_rounding(model, grouped[-1])
    assert ratio <= RATIO
    assert exact <= 1e-6
