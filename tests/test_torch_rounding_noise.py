"""The deviation checks tell a parent whose own float64 computation amplifies rounding from a
child that is wrong: in eval mode (tol="auto" on float64 models) and in train mode (a branch
used only in training).

The ill-conditioned parents: inputs 1e8·b + 1e-3·ε (every sample almost the same), Linear →
BatchNorm1d → Linear. In train mode BatchNorm subtracts the batch mean, which leaves the ~1e-3
spread carrying the ~1e-8 absolute rounding of the first layer: a relative change ~1e-5 that
is the parent's own. In eval mode the same happens when the running mean is the common value.
"""

from __future__ import annotations

from copy import deepcopy

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from netmorph_core.torch import MorphError, deepen, pipeline, widen  # noqa: E402
from netmorph_core.torch.report import (  # noqa: E402
    AUTO_F64_BOUND,
    NOISE_FACTOR,
    TRAIN_BOUND,
    Measurement,
    check_preserved,
    compare,
    run_outputs,
)
from netmorph_core.torch.rounding_noise import (  # noqa: E402
    TRAIN_NOISE_FACTOR,
    rounded_outputs,
    rounding_hooks,
)


def _ill_conditioned() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 3)).double().eval()
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(1, 4, generator=gen, dtype=torch.float64)
    x = 1e8 * base + 1e-3 * torch.randn(2, 4, generator=gen, dtype=torch.float64)
    return model, x


class TrainShift(nn.Module):
    """The ill-conditioned parent whose train mode also adds 1e-8 × the mean of its first
    layer's features (~1e8), which the trace never sees: an outer widening changes that mean
    by O(1)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.bn, self.fc2 = nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.fc1(x)
        out = self.fc2(self.bn(z))
        return out + 1e-8 * z.mean(-1, keepdim=True) if self.training else out


@pytest.mark.parametrize("limit", [pipeline.WHOLE_COPY_LIMIT, 0], ids=["copies", "per_module"])
def test_a_child_within_the_parents_own_train_noise_is_accepted_unverified(
    limit: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pipeline, "WHOLE_COPY_LIMIT", limit)
    model, x = _ill_conditioned()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    child, report = deepen(model, "0", seed=0, probe=(x,))
    assert report.rel_dev_f64 <= 1e-14
    assert report.train_rel_dev_f64 > TRAIN_BOUND  # refused before the noise was measured
    assert report.modes == ("eval",)
    (note,) = [n for n in report.notes if n.startswith("train mode not verified")]
    noise = float(note.split("outputs by ")[1].split(" ")[0])
    assert noise > TRAIN_BOUND and report.train_rel_dev_f64 <= TRAIN_NOISE_FACTOR * noise
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert all(not m._forward_hooks for m in (*model.modules(), *child.modules()))


@pytest.mark.parametrize("limit", [pipeline.WHOLE_COPY_LIMIT, 0], ids=["copies", "per_module"])
def test_a_train_only_branch_is_refused_on_an_ill_conditioned_parent(
    limit: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pipeline, "WHOLE_COPY_LIMIT", limit)
    _, x = _ill_conditioned()
    torch.manual_seed(0)
    model = TrainShift().double().eval()
    with pytest.raises(
        MorphError, match=r"in train mode the child deviates .* moves it by"
    ) as info:
        widen(model, "fc1", 10, seed=0, probe=(x,), zero_side="outer")
    noise = float(str(info.value).split("moves it by ")[1].split(")")[0])
    assert noise > TRAIN_BOUND  # the parent's own train mode is ill-conditioned here too


def test_rounding_hooks_move_outputs_by_one_rounding_and_are_removed() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    x = torch.randn(5, 4, dtype=torch.float64)
    clean = run_outputs(model, (x,))
    rounded = rounded_outputs(model, lambda: run_outputs(model, (x,)))
    dev = compare(clean, rounded)[1]
    assert 0 < dev <= 1e-14
    assert all(not m._forward_hooks for m in model.modules())
    with pytest.raises(ZeroDivisionError), rounding_hooks(model):
        raise ZeroDivisionError
    assert all(not m._forward_hooks for m in model.modules())


def test_rounding_hooks_round_at_the_coarser_unit_of_a_lower_precision_model() -> None:
    """The float64 copy of a float32 model rounds at float32 (``unit``): a float32 child's
    factors carry float32 rounding, which batch statistics amplify like the parent's own."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    x = torch.randn(5, 4, dtype=torch.float64)
    clean = run_outputs(model, (x,))
    dev64 = compare(clean, rounded_outputs(model, lambda: run_outputs(model, (x,))))[1]
    dev32 = compare(
        clean, rounded_outputs(model, lambda: run_outputs(model, (x,)), unit=torch.float32)
    )[1]
    assert dev64 <= 1e-14 and 1e-9 <= dev32 <= 1e-6
    unit64 = rounded_outputs(model, lambda: run_outputs(model, (x,)), unit=torch.float64)
    assert compare(clean, unit64)[1] == dev64


def _eval_ill_conditioned() -> tuple[nn.Module, torch.Tensor]:
    """The parent whose eval-mode BatchNorm subtracts the inputs' common value."""
    model, _ = _ill_conditioned()
    gen = torch.Generator().manual_seed(1)
    base = 1e8 * torch.randn(1, 4, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        model[1].running_mean.copy_(model[0](base)[0])
        model[1].running_var.fill_(1e-6)
    return model, base + 1e-3 * torch.randn(4, 4, generator=gen, dtype=torch.float64)


def test_float64_auto_bound_follows_the_parents_own_rounding() -> None:
    model, x = _eval_ill_conditioned()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(MorphError, match=r"above tol=1e-08 \(bound 1\.0e-08\)"):
        deepen(model, "0", seed=0, probe=(x,), tol=1e-8)
    _, report = deepen(model, "0", seed=0, probe=(x,))
    assert report.rel_dev_f64 > AUTO_F64_BOUND
    (note,) = [n for n in report.notes if n.startswith("float64 deviation")]
    noise = float(note.split("outputs by ")[1].split(" ")[0])
    assert report.rel_dev_f64 <= NOISE_FACTOR * noise
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    # the parent's eval-mode noise, measured on the parent as it is (not after train-mode runs
    # moved a copy's BatchNorm statistics)
    copy = deepcopy(model)
    clean = run_outputs(copy, (x,))
    own = compare(clean, rounded_outputs(copy, lambda: run_outputs(copy, (x,))))[1]
    assert own == pytest.approx(noise, rel=0.06)


def test_float64_auto_bound_refuses_beyond_the_parents_own_rounding() -> None:
    def measured(dev: float, noise: float) -> Measurement:
        return Measurement((dev, dev), (dev, dev), 0.0, dev, None, noise64=noise)

    check_preserved("deepen", ("0",), "auto", torch.float64, measured(5e-6, 1e-6))
    with pytest.raises(MorphError, match=r"bound 8\.0e-06\) \(the parent's own float64 rounding"):
        check_preserved("deepen", ("0",), "auto", torch.float64, measured(1e-3, 1e-6))
    with pytest.raises(MorphError, match=r"bound 1\.0e-08\)"):
        check_preserved("deepen", ("0",), "auto", torch.float64, measured(5e-8, 0.0))
