"""Bad input: exact exception types naming the module and reason; the parent stays intact."""

from __future__ import annotations

from collections.abc import Callable

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from netmorph_core.torch import (  # noqa: E402
    MorphError,
    deepen,
    grow_kernel,
    morph_stacked,
    morph_subnet,
    widen,
)
from netmorph_core.torch.models import small_resnet  # noqa: E402


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.grouped = nn.Conv2d(4, 4, 3, padding=1, groups=2)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.grouped(self.act(self.conv(x)))
        if y.mean() > 1e6:  # data-dependent control flow: torch.fx cannot trace this
            y = -y
        return self.fc(y.mean(dim=(2, 3)))


def snapshot(model: nn.Module) -> tuple[dict[str, torch.Tensor], str, list[bool]]:
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return state, repr(model), [m.training for m in model.modules()]


def assert_unchanged(model: nn.Module, snap: tuple) -> None:
    state, text, flags = snap
    now = model.state_dict()
    assert now.keys() == state.keys()
    for k, v in state.items():
        assert now[k].dtype == v.dtype and torch.equal(now[k], v), k
    assert repr(model) == text
    assert [m.training for m in model.modules()] == flags


X = torch.randn(2, 3, 6, 6)
CASES: list[tuple[str, Callable[[nn.Module], object], type, str]] = [
    ("unknown name", lambda m: deepen(m, "conv9"), ValueError, r"at='conv9' names no submodule"),
    ("unknown name widen", lambda m: widen(m, "features.3", 8), ValueError, "names no submodule"),
    ("unknown name kernel", lambda m: grow_kernel(m, "nope", 5), ValueError, "names no submodule"),
    ("name not str", lambda m: deepen(m, 3), TypeError, "at must be a qualified module name"),
    ("not conv/linear", lambda m: deepen(m, "act"), TypeError, r"at='act' is ReLU; expected"),
    ("not conv", lambda m: grow_kernel(m, "fc", 3), TypeError, r"at='fc' is Linear; expected Conv"),
    (
        "grouped stacked",
        lambda m: morph_stacked(m, "grouped", [[(None, 3)]]),
        ValueError,
        r"'grouped' is a grouped conv",
    ),
    (
        "grouped width",
        lambda m: deepen(m, "grouped", width=5),
        ValueError,
        r"width \(5\) must be divisible by 'grouped''s groups=2",
    ),
    ("non-expanding", lambda m: widen(m, "conv", 4), ValueError, "width must exceed the current 4"),
    ("width type", lambda m: deepen(m, "conv", width=0), ValueError, "width must be a positive"),
    ("odd growth", lambda m: deepen(m, "conv", kernel_size=(3, 2)), ValueError, "must be even"),
    ("shrinking kernel", lambda m: grow_kernel(m, "conv", 1), ValueError, "smaller than"),
    (
        "linear kernel",
        lambda m: deepen(m, "fc", kernel_size=(1, 1)),
        ValueError,
        "None for a Linear",
    ),
    ("method", lambda m: deepen(m, "conv", method="best"), ValueError, "method must be one of"),
    ("activation", lambda m: deepen(m, "conv", activation="swish"), ValueError, "base must be one"),
    (
        "batch_norm",
        lambda m: deepen(m, "conv", batch_norm=1),
        TypeError,
        "batch_norm must be a bool",
    ),
    (
        "layers",
        lambda m: morph_subnet(m, "conv", [(4, 3), (5, 1)]),
        ValueError,
        "last layer's width",
    ),
    ("branches", lambda m: morph_stacked(m, "conv", []), TypeError, "branches must be a non-empty"),
    ("split", lambda m: morph_stacked(m, "conv", [[(None, 3)]], split="half"), ValueError, "split"),
    ("probe", lambda m: deepen(m, "conv", probe="x"), TypeError, "probe must be a tensor"),
    (
        "probe of a list of images",
        lambda m: deepen(m, "conv", probe=([X[0]],)),
        TypeError,
        r"probe\[0\] must be a tensor .*got list .*leave probe out to check the layer alone",
    ),
    (
        "probe and shape",
        lambda m: deepen(m, "conv", probe=X, input_shape=(1, 3, 6, 6)),
        ValueError,
        "not both",
    ),
    ("untraceable", lambda m: widen(m, "conv", 6), MorphError, "torch.fx cannot trace Net"),
    (
        "unsolvable",
        lambda m: deepen(m, "conv", width=1, kernel_size=(3, 3), seed=0),
        ValueError,
        r"no exact dense general depth morph exists .* 62 < 300 equations",
    ),
    (
        "tol",
        lambda m: deepen(m.float(), "conv", width=8, tol=1e-13, seed=0, probe=X),
        MorphError,
        "above tol",
    ),
]


@pytest.mark.parametrize(("case", "call", "exc", "match"), CASES, ids=[c[0] for c in CASES])
def test_errors_leave_the_parent_bitwise_unchanged(
    case: str, call: Callable, exc: type, match: str
) -> None:
    torch.manual_seed(0)
    model = Net().float()
    snap = snapshot(model)
    with pytest.raises(exc, match=match) as info:
        call(model)
    assert type(info.value) is exc
    assert_unchanged(model, snap)


def test_a_refusal_after_tracing_leaves_the_parent_unchanged() -> None:
    torch.manual_seed(1)
    model = small_resnet()
    model.train()
    snap = snapshot(model)
    with pytest.raises(MorphError, match=r"'fc'.*the model's output would change shape") as info:
        widen(model, "fc", 12, input_shape=(2, 3, 8, 8))
    assert isinstance(info.value, ValueError)
    assert_unchanged(model, snap)


def test_successful_morphs_leave_the_parent_unchanged() -> None:
    torch.manual_seed(2)
    model = small_resnet()
    model.train()
    snap = snapshot(model)
    x = torch.randn(2, 3, 8, 8)
    deepen(model, "layer1.0.conv1", probe=x, seed=0)
    widen(model, "layer1.0.conv1", 20, probe=x, seed=0)
    grow_kernel(model, "layer1.0.conv2", 5, probe=x)
    morph_stacked(model, "fc", [[(None, None)], [(12, None), (None, None)]], probe=x, seed=0)
    assert_unchanged(model, snap)


def test_model_must_be_a_module() -> None:
    with pytest.raises(TypeError, match=r"model must be a torch\.nn\.Module"):
        deepen("net", "conv")
