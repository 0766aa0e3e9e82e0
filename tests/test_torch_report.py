"""The adapter's measurement: tol="auto" (float64 and dtype-noise bounds), the parent and the
caller's RNG left untouched, probes that do not fit the model."""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.nn.utils.parametrizations import spectral_norm  # noqa: E402

from netmorph_core.torch import MorphError, deepen, grow_kernel, morph_subnet, widen  # noqa: E402
from netmorph_core.torch.pipeline import Request, run  # noqa: E402
from netmorph_core.torch.report import (  # noqa: E402
    AUTO_F64_BOUND,
    NOISE_FACTOR,
    NOISE_FLOOR_EPS,
    Outcome,
    check_tol,
)

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def run_morph(operation: str, model: nn.Module, targets: tuple, build: object, **options: object):
    """The pipeline on a hand-made builder."""
    return run(Request(operation, model, targets, build, **options))


def cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    )


def probe() -> torch.Tensor:
    return torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))


def scaled(at: str, factor: float):
    """A builder whose child is wrong by a relative ``factor`` − 1 in layer ``at``."""

    def build(child: nn.Module) -> Outcome:
        with torch.no_grad():
            child.get_submodule(at).weight.mul_(factor)
        return Outcome(new_nonzero=0, new_total=0)

    return build


@pytest.mark.parametrize("tol", [float("nan"), float("inf"), -1e-3, True, "fast", [1e-3]])
def test_bad_tol_is_a_value_error(tol: object) -> None:
    with pytest.raises(ValueError, match="tol must be 'auto', None or a finite number"):
        deepen(cnn(), "2", tol=tol, seed=0)


def test_check_tol_accepts_auto_none_and_numbers() -> None:
    assert check_tol("auto") == "auto" and check_tol(None) is None and check_tol(0) == 0.0


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "morph",
    [
        lambda m, x: deepen(m, "2", width=16, seed=0, probe=x),
        lambda m, x: deepen(m, "2", width=16, kernel_size=(3, 3), method="practical", seed=0),
        lambda m, x: widen(m, "0", 12, seed=0, probe=x),
        lambda m, x: grow_kernel(m, "2", 5, probe=x),
        lambda m, x: morph_subnet(m, "2", [(8, 3), (8, 3), (8, 1)], method="practical", seed=0),
    ],
    ids=["deepen", "deepen_practical", "widen", "grow_kernel", "subnet"],
)
def test_correct_morphs_pass_auto_in_every_dtype(dtype: torch.dtype, morph) -> None:
    torch.manual_seed(0)
    parent = cnn().to(dtype)
    _, report = morph(parent, probe())
    eps = torch.finfo(dtype).eps
    assert report.dtype == str(dtype).removeprefix("torch.")
    assert 0 < report.parent_noise < 2 * eps
    # the child's own relative error in its dtype (against the float64 parent): ≤ 1.9 eps seen
    assert report.noise_ratio * report.parent_noise <= 3 * eps


def test_float64_model_reports_no_noise_ratio() -> None:
    torch.manual_seed(0)
    _, report = deepen(cnn().double(), "2", width=16, seed=0)
    assert report.parent_noise == 0.0 and report.noise_ratio is None
    assert report.rel_dev_f64 <= 1e-12 and report.rel_dev == report.rel_dev_f64


@pytest.mark.parametrize(
    ("dtype", "factor"),
    [(torch.float64, 1 + 1e-7), (torch.float32, 1 + 1e-4), (torch.bfloat16, 1.25)],
    ids=str,
)
def test_wrong_child_raises_with_the_numbers(dtype: torch.dtype, factor: float) -> None:
    torch.manual_seed(0)
    parent = cnn().to(dtype)
    with pytest.raises(
        MorphError, match=r"wrong at \['2'\]: .*deviates .* above tol='auto'"
    ) as info:
        run_morph("wrong", parent, ("2",), scaled("2", factor), probe=probe())
    message = str(info.value)
    if dtype == torch.float64:
        assert f"bound {AUTO_F64_BOUND:.1e}" in message
    else:
        assert f"{NOISE_FACTOR:g} × the parent's own" in message and "rounding noise" in message
    _, report = run_morph("wrong", parent, ("2",), scaled("2", factor), probe=probe(), tol=None)
    assert report.rel_dev_f64 > AUTO_F64_BOUND


def test_float32_child_past_the_noise_bound_raises_even_within_float64_tolerance() -> None:
    torch.manual_seed(0)
    parent = cnn()
    factor = 1 + 100 * torch.finfo(torch.float32).eps
    with pytest.raises(MorphError, match="in float32 the child deviates from the float64 parent"):
        run_morph("wrong", parent, ("2",), scaled("2", factor), probe=probe())
    _, report = run_morph("wrong", parent, ("2",), scaled("2", factor), probe=probe(), tol=1e-4)
    bound = NOISE_FACTOR * report.parent_noise + NOISE_FLOOR_EPS * torch.finfo(torch.float32).eps
    assert report.noise_ratio * report.parent_noise > bound


def test_explicit_tol_bounds_the_float64_deviation() -> None:
    parent = cnn().double()
    with pytest.raises(MorphError, match="above tol=1e-09"):
        run_morph("wrong", parent, ("2",), scaled("2", 1 + 1e-7), probe=probe(), tol=1e-9)
    run_morph("wrong", parent, ("2",), scaled("2", 1 + 1e-7), probe=probe(), tol=1e-5)


def test_in_place_relu_activation_still_preserves_the_function() -> None:
    torch.manual_seed(0)
    relu = nn.ReLU(inplace=True)
    child, report = deepen(cnn().double(), "2", width=16, activation=relu, seed=0)
    assert report.rel_dev_f64 <= 1e-12
    assert relu.inplace and not child.get_submodule("2")[1].phi.inplace


class Counter(nn.Module):
    """Counts its forward passes in a buffer (output unchanged)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x


def stateful() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        Counter(),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        spectral_norm(nn.Conv2d(4, 4, 3, padding=1)),
        nn.ReLU(),
        nn.Conv2d(4, 2, 1),
    )


@pytest.mark.parametrize(
    "morph",
    [
        lambda m: deepen(m, "0", width=8, batch_norm=True, seed=0),
        lambda m: deepen(m, "6", width=4, seed=0, input_shape=(2, 3, 6, 6)),
        lambda m: grow_kernel(m, "0", 5),
    ],
    ids=["deepen", "deepen_last", "grow_kernel"],
)
def test_parent_child_and_rng_untouched_by_measurement(morph) -> None:
    torch.manual_seed(0)
    parent = stateful().train()
    before = copy.deepcopy(parent.state_dict())
    rng = torch.get_rng_state()
    child, report = morph(parent)
    assert report.scope == "model" and report.train_rel_dev_f64 is not None
    after = parent.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before), "parent state changed"
    assert all(m.training for m in parent.modules())
    assert int(parent[1].calls) == 0 and int(child[1].calls) == 0
    assert torch.equal(rng, torch.get_rng_state())


def test_probe_of_the_wrong_shape_names_probe_and_the_model_error() -> None:
    with pytest.raises(MorphError, match=r"probe does not fit Sequential: .*shape \(2, 5, 8, 8\)"):
        deepen(cnn(), "2", seed=0, probe=torch.randn(2, 5, 8, 8))
    with pytest.raises(MorphError, match=r"input_shape does not fit .* RuntimeError"):
        deepen(cnn(), "2", seed=0, input_shape=(2, 7))
    with pytest.raises(MorphError, match=r"probe does not fit .* int64"):
        deepen(cnn(), "2", seed=0, probe=torch.ones(2, 3, 8, 8, dtype=torch.long))


def test_integer_probe_for_an_embedding_model() -> None:
    torch.manual_seed(0)
    parent = nn.Sequential(nn.Embedding(10, 6), nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 3))
    _, report = deepen(parent, "1", width=8, seed=0, probe=torch.tensor([[1, 2, 3]]))
    assert report.scope == "model" and report.probe_shapes == ((1, 3),)


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 6)
        self.out = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.fc(x + y)))


def test_unmeasurable_morph_raises_unless_tol_is_none() -> None:
    torch.manual_seed(0)
    parent = TwoInputs().double()
    _, report = deepen(parent, "fc", width=8, seed=0)
    assert report.scope == "layer" and report.rel_dev_f64 <= 1e-12
    with pytest.raises(MorphError, match=r"could not be measured.*probe=.*tol=None"):
        widen(parent, "fc", 8, seed=0)
    _, report = widen(parent, "fc", 8, seed=0, tol=None)
    assert report.scope == "none" and report.rel_dev_f64 is None
    x = torch.randn(3, 4, dtype=torch.float64)
    _, report = widen(parent, "fc", 8, seed=0, probe=(x, x))
    assert report.scope == "model" and report.rel_dev_f64 <= 1e-12


@pytest.mark.parametrize("name", ["PTanh", "psigmoid", "PReLU", "gelu"])
def test_deepen_accepts_paper_activation_names(name: str) -> None:
    torch.manual_seed(0)
    child, report = deepen(cnn().double(), "2", width=16, activation=name, seed=0)
    assert report.rel_dev_f64 <= 1e-12
    assert child.get_submodule("2")[1].base_name == name.lower().removeprefix("p")


def test_train_mode_that_cannot_run_on_the_probe_is_a_note() -> None:
    torch.manual_seed(0)
    parent = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 2))
    _, report = deepen(parent.double(), "0", width=8, seed=0, probe=torch.randn(1, 4))
    assert report.rel_dev_f64 <= 1e-12 and report.train_rel_dev_f64 is None
    assert report.train_mode_holds is None
    assert any("train mode could not run" in n for n in report.notes)
