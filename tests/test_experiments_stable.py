"""Experiment ``stable`` on its short form."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")

from netmorph_core.experiments import exp_stable
from netmorph_core.experiments.options import RunOptions
from netmorph_core.experiments.registry import EXPERIMENTS


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("stable")
    return exp_stable.run(RunOptions(seeds=3, quick=True, quiet=True, out=out))


def test_registered() -> None:
    assert EXPERIMENTS["stable"].module == "exp_stable"


def test_outputs_written(result: dict) -> None:
    for name in ("stable.json", "stable.csv", "summary.csv", "stable.png"):
        assert (Path(result["out"]) / name).stat().st_size > 0, name


def test_every_morph_is_exact_and_curves_start_at_the_parent(result: dict) -> None:
    saved = json.loads((Path(result["out"]) / "stable.json").read_text())
    steps = exp_stable.config_for("digits", quick=True).steps
    assert len(saved["per_seed"]) == 3
    for run in saved["per_seed"]:
        for method in exp_stable.METHODS:
            rec = run[method]
            kept = rec["at_morph"]
            assert kept["identical_predictions"] and kept["max_rel_dev"] < 1e-5, method
            assert kept["child_accuracy"] == run["parent"][-1]
            assert rec["accuracy"][0] == kept["child_accuracy"]
            assert len(rec["loss"]) == len(rec["accuracy"]) == steps + 1
            assert rec["accuracy_drop"] == rec["accuracy"][0] - min(rec["accuracy"][1:])
            assert rec["loss_jump"] == max(rec["loss"][1:]) - rec["loss"][0]
    assert result["claims"]["preserved_at_every_morph"]


def test_stable_filters_are_dense_and_idmorph_is_not(result: dict) -> None:
    rows = {r["method"]: r for r in result["summary"]}
    assert rows["stable"]["new_nonzero_ratio"] == 1.0
    assert result["claims"]["stable_all_nonzero"]
    assert rows["net2net"]["new_nonzero_ratio"] < 1.0
