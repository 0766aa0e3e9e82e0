"""The acceptance run's classification (bench/acceptance.py): exact, refused or failure."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from acceptance import Attempt, Case, classify, deviation, rounding_noise, summary  # noqa: E402

NAMES = ["features.3.conv", "Net", "width="]


@pytest.mark.parametrize(
    ("attempt", "status", "detail"),
    [
        (Attempt(dev=3e-15), "exact", "deviation 3.0e-15"),
        (Attempt(dev=2e-9), "FAILURE", "wrong child"),
        (Attempt(dev=2e-8, noise=1e-8), "exact", "within noise"),
        (Attempt(dev=2e-7, noise=1e-8), "FAILURE", "wrong child"),
        (Attempt(dev=0.0, parent_unchanged=False), "FAILURE", "parent was modified"),
        (
            Attempt(error_type="MorphError", error_typed=True, message="'features.3.conv' is x"),
            "refused",
            "MorphError: 'features.3.conv' is x",
        ),
        (
            Attempt(error_type="MorphError", error_typed=True, message="cannot do that"),
            "FAILURE",
            "names no layer",
        ),
        (
            Attempt(
                error_type="MorphError",
                error_typed=True,
                message="deepen at ['features.3.conv']: the child deviates from the parent",
            ),
            "refused",
            "guard: ",
        ),
        (Attempt(error_type="RuntimeError", message="size mismatch Net"), "FAILURE", "untyped"),
        (Attempt(crash="timeout after 120 s"), "FAILURE", "timeout"),
    ],
)
def test_classify(attempt: Attempt, status: str, detail: str) -> None:
    attempt.names = NAMES
    got_status, got_detail = classify(attempt)
    assert got_status == status
    assert detail in got_detail


def test_summary_counts_each_model_and_the_percentage() -> None:
    cases = [
        Case("a", "deepen", "plain", "x", "exact", "deviation 1e-15"),
        Case("a", "widen", "plain", "x", "refused", "MorphError: x"),
        Case("b", "deepen", "plain", "y", "FAILURE", "wrong child"),
        Case("b", "widen", "plain", "y", "exact", "deviation 1e-8 within noise"),
        Case("c", "build", "-", "-", "skipped", "ImportError"),
    ]
    rows, percent = summary(cases)
    assert rows == [("a", 2, 1, 1, 0, 0), ("b", 2, 1, 0, 1, 1)]
    assert percent == pytest.approx(75.0)


def test_deviation_and_rounding_noise_on_a_tiny_model() -> None:
    torch.manual_seed(0)
    parent = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh()).double()
    child = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh()).double()
    child.load_state_dict(parent.state_dict())
    x = torch.randn(5, 4, dtype=torch.float64)
    assert deviation(parent, child, x) == 0.0
    with torch.no_grad():
        child[0].bias.add_(1e-3)
    assert 1e-5 < deviation(parent, child, x) < 1e-2
    assert 0.0 < rounding_noise(parent, x) < 1e-15


class _Returns(torch.nn.Module):
    """Returns its input and its input widened by ``lift``."""

    def __init__(self, lift: torch.Tensor | None = None) -> None:
        super().__init__()
        self.lift = lift

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.sum(-1), x if self.lift is None else self.lift


def test_a_widened_output_is_compared_with_the_lifted_parent() -> None:
    """After grow_width, an output d → D' = k·d + r must be [y; …; y; 0]."""
    x = torch.randn(2, 3, 4, dtype=torch.float64)
    right = _Returns(torch.cat([x, x, x.new_zeros(2, 3, 1)], dim=-1))
    wrong = _Returns(torch.cat([x, x.flip(-1), x.new_zeros(2, 3, 1)], dim=-1))
    assert deviation(_Returns(), right, x, widened=True) == 0.0
    assert deviation(_Returns(), wrong, x, widened=True) > 0.1
    assert deviation(_Returns(), right, x) == float("inf")
