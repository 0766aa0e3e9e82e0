"""remap_optimizer: optimizer state carried from parent to child; training continues smoothly."""

from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from netmorph_core.torch import deepen, grow_kernel, remap_optimizer, widen  # noqa: E402

OPTIMIZERS = [
    (torch.optim.SGD, {"lr": 0.05, "momentum": 0.9}),
    (torch.optim.Adam, {"lr": 1e-2}),
    (torch.optim.AdamW, {"lr": 1e-2, "weight_decay": 0.01}),
]


def data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return (
        torch.randn(32, 6, generator=gen, dtype=torch.float64),
        torch.randn(32, 3, generator=gen, dtype=torch.float64),
    )


def loss(model: nn.Module) -> torch.Tensor:
    x, y = data()
    return nn.functional.mse_loss(model(x), y)


def trained(cls: type, kwargs: dict) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    groups = [
        {"params": [model[0].weight, model[2].weight]},
        {"params": [model[0].bias, model[2].bias], "weight_decay": 0.0, "lr": 0.5 * kwargs["lr"]},
    ]
    opt = cls(groups, **kwargs)
    for _ in range(4):
        opt.zero_grad()
        loss(model).backward()
        opt.step()
    return model, opt


def step(model: nn.Module, opt: torch.optim.Optimizer) -> float:
    opt.zero_grad()
    loss(model).backward()
    opt.step()
    with torch.no_grad():
        return float(loss(model))


@pytest.mark.parametrize(("cls", "kwargs"), OPTIMIZERS, ids=lambda v: getattr(v, "__name__", ""))
@pytest.mark.parametrize("op", ["deepen", "widen"])
def test_training_continues_without_a_spike(cls: type, kwargs: dict, op: str) -> None:
    parent, opt = trained(cls, kwargs)
    x, _ = data()
    if op == "deepen":
        child, report = deepen(parent, "2", width=8, probe=x, seed=0)
    else:
        child, report = widen(parent, "0", 12, probe=x, seed=0)
    new = remap_optimizer(opt, parent, child, report=report)
    assert type(new) is cls
    assert [g["lr"] for g in new.param_groups] == [g["lr"] for g in opt.param_groups]
    with torch.no_grad():
        before = float(loss(parent))
        assert abs(float(loss(child)) - before) <= 1e-12
    parent_after = step(parent, opt)
    child_after = step(child, new)
    assert np.isfinite(child_after)
    assert abs(child_after - parent_after) <= 0.05 * before  # a sane step, no spike


def test_state_is_carried_gathered_or_fresh() -> None:
    parent, opt = trained(torch.optim.SGD, {"lr": 0.05, "momentum": 0.9})
    x, _ = data()
    child, report = widen(parent, "0", 12, probe=x, seed=0)
    new = remap_optimizer(opt, parent, child, report=report)
    # unchanged: the same buffer values
    assert torch.equal(
        new.state[child[2].bias]["momentum_buffer"], opt.state[parent[2].bias]["momentum_buffer"]
    )
    # widened rows: old entries moved with the permutation, new entries zero
    src = report.param_sources["0.weight"].index[0]
    buf = new.state[child[0].weight]["momentum_buffer"]
    old = opt.state[parent[0].weight]["momentum_buffer"]
    assert torch.equal(buf[src >= 0], old[src[src >= 0]])
    assert not buf[src < 0].any()
    cols = new.state[child[2].weight]["momentum_buffer"]
    assert torch.equal(
        cols[:, src >= 0], opt.state[parent[2].weight]["momentum_buffer"][:, src[src >= 0]]
    )
    # brand-new parameters (deepen) start with no state, in the replaced layer's groups
    child, report = deepen(parent, "2", width=8, probe=x, seed=0)
    new = remap_optimizer(opt, parent, child, report=report)
    assert child[2][0].weight not in new.state
    assert any(p is child[2][2].bias for p in new.param_groups[1]["params"])
    assert any(p is child[2][1].a for p in new.param_groups[0]["params"])


def test_without_a_report_names_and_shapes_decide() -> None:
    parent, opt = trained(torch.optim.Adam, {"lr": 1e-2})
    x, _ = data()
    child, _ = deepen(parent, "2", width=8, probe=x, seed=0)
    new = remap_optimizer(opt, parent, child)
    assert torch.equal(
        new.state[child[0].weight]["exp_avg"], opt.state[parent[0].weight]["exp_avg"]
    )
    assert any(p is child[2][2].bias for p in new.param_groups[1]["params"])
    assert sum(p.numel() for g in new.param_groups for p in g["params"]) == sum(
        p.numel() for p in child.parameters()
    )


def test_grown_kernel_state_sits_at_the_centre() -> None:
    torch.manual_seed(1)
    parent = nn.Sequential(nn.Conv2d(2, 3, 1), nn.ReLU(), nn.Conv2d(3, 1, 3)).double()
    opt = torch.optim.SGD(parent.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(2, 2, 6, 6, dtype=torch.float64)
    parent(x).sum().backward()
    opt.step()
    child, report = grow_kernel(parent, "0", 3, probe=x)
    new = remap_optimizer(opt, parent, child, report=report)
    buf = new.state[child[0].weight]["momentum_buffer"]
    assert torch.equal(buf[:, :, 1, 1], opt.state[parent[0].weight]["momentum_buffer"][:, :, 0, 0])
    assert int(torch.count_nonzero(buf)) == int(
        torch.count_nonzero(opt.state[parent[0].weight]["momentum_buffer"])
    )


def test_bad_arguments() -> None:
    parent, opt = trained(torch.optim.SGD, {"lr": 0.05})
    child = copy.deepcopy(parent)
    with pytest.raises(TypeError, match="old_optimizer must be one of SGD, Adam, AdamW"):
        remap_optimizer(torch.optim.RMSprop(parent.parameters()), parent, child)
    with pytest.raises(ValueError, match="not parent's"):
        remap_optimizer(opt, child, child)
    with pytest.raises(TypeError, match="report must be a MorphReport"):
        remap_optimizer(opt, parent, child, report={})
