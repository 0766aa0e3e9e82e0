"""widen into a GroupNorm: each group of C/G channels is normalised on its own, so the widened
channels keep the parent's groups in order and add whole new groups (gain 1, bias 0); the norm
then holds G + r/(C/G) groups. A width that is not whole groups is refused naming the norm."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch_exactness import rel_dev  # noqa: E402

from netmorph_core.torch import MorphError, widen  # noqa: E402

F64_TOL = 1e-9


class GroupNormed(nn.Module):
    """conv (8 channels) → GroupNorm (4 groups of 2, or ``norm``) → ReLU → conv → pooled head."""

    def __init__(self, norm: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = norm if norm is not None else nn.GroupNorm(4, 8)
        self.conv2 = nn.Conv2d(8, 5, 3, padding=1)
        self.head = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(F.relu(self.norm(self.conv1(x))))
        return self.head(F.adaptive_avg_pool2d(y, 1).flatten(1))


def _parent(norm: nn.Module | None = None) -> nn.Module:
    torch.manual_seed(0)
    model = GroupNormed(norm).double().eval()
    with torch.no_grad():
        model.norm.weight.uniform_(0.5, 1.5)
        model.norm.bias.uniform_(-0.2, 0.2)
    return model


X = torch.randn(2, 3, 9, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("width", [10, 14])
@pytest.mark.parametrize("zero_side", ["outer", "inner"])
def test_whole_new_groups_are_exact(width: int, zero_side: str) -> None:
    parent = _parent()
    before = {k: v.clone() for k, v in parent.state_dict().items()}
    child, report = widen(parent, "conv1", width, seed=0, probe=(X,), zero_side=zero_side)
    assert report.rel_dev_f64 <= F64_TOL and rel_dev(parent, child, X) <= F64_TOL
    norm = child.norm
    assert (norm.num_channels, norm.num_groups) == (width, width // 2)
    kept = [i for i in range(width) if norm.weight[i] != 1.0 or norm.bias[i] != 0.0]
    assert len(kept) == 8  # the parent's gains and biases, in whole groups
    assert all(a // 2 == b // 2 for a, b in zip(kept[0::2], kept[1::2]))
    assert child.conv2.in_channels == width
    assert all(torch.equal(parent.state_dict()[k], v) for k, v in before.items())


def test_a_width_that_is_not_whole_groups_is_refused_by_name() -> None:
    parent = _parent()
    before = {k: v.clone() for k, v in parent.state_dict().items()}
    with pytest.raises(
        MorphError,
        match=r"'norm' \(GroupNorm\) normalises in groups \(4 groups "
        r"of 2 channels\).*8 \+ a multiple of 2 \(got 9\)",
    ):
        widen(parent, "conv1", 9, seed=0, probe=(X,))
    assert all(torch.equal(parent.state_dict()[k], v) for k, v in before.items())


@pytest.mark.parametrize(
    ("norm", "act", "groups"),
    [("GroupNormAct", nn.SiLU, 6), ("GroupNormAct", "gelu", 6), ("BatchNormAct2d", "gelu", None)],
    ids=["GroupNormAct-SiLU", "GroupNormAct-timm-GELU", "BatchNormAct2d-timm-GELU"],
)
def test_timm_norms_with_their_activation(norm: str, act: object, groups: int | None) -> None:
    """timm's norms apply their activation inside: torch's or timm's own (``act_layer="gelu"``
    is timm.layers.activations.GELU), both elementwise."""
    from thirdparty import import_timm

    try:
        timm = import_timm()
    except ImportError:  # pragma: no cover - the test extra installs it
        pytest.skip("timm is not installed")
    kwargs = {"num_groups": 4} if groups else {}
    parent = _parent(getattr(timm.layers, norm)(8, act_layer=act, **kwargs))
    child, report = widen(parent, "conv1", 12, seed=0, probe=(X,))
    assert report.rel_dev_f64 <= F64_TOL and rel_dev(parent, child, X) <= F64_TOL
    assert child.norm.weight.numel() == 12
    if groups:
        assert child.norm.num_groups == groups
