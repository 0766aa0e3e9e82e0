"""Experiments ``histograms`` (embedded filter values) and ``condition`` (Condition (7), Fig. 3)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from netmorph_core.experiments import exp_condition
from netmorph_core.experiments.options import RunOptions

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


@pytest.fixture(scope="module")
def condition(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("condition")
    return exp_condition.run(RunOptions(seeds=3, quick=True, quiet=True, out=out))


def test_condition_is_numpy_only() -> None:
    code = (
        "import sys, netmorph_core.experiments.exp_condition\n"
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env=ENV)


def test_condition7_predicts_one_solve_exactness(condition: dict) -> None:
    for s in condition["summary"]:
        if s["method"] == "general":
            if s["condition7"]:
                assert s["all_exact"] and s["residual_mean"] < 1e-10, s
            else:
                assert s["residual_mean"] > 1e-3, s  # one solve cannot reach G~
        else:
            assert s["all_exact"], s  # IdMorph and Algorithm 2 are exact


def test_nonzero_occupation_orders_as_in_fig3(condition: dict) -> None:
    rows = {(s["C"], s["K"], s["width_mode"], s["method"]): s for s in condition["summary"]}
    for c in exp_condition.QUICK_CHANNELS:
        for k in exp_condition.QUICK_KERNELS:
            idm = rows[(c, k, "C1=C", "idmorph")]["nonzero_embedded_mean"]
            practical = rows[(c, k, "C1=C", "practical")]["nonzero_embedded_mean"]
            general = rows[(c, k, "C1=C", "general")]["nonzero_embedded_mean"]
            # IdMorph's identity: C of C²K² entries (Fig. 3a).
            assert idm == pytest.approx(1 / (c * k * k))
            assert idm < practical <= general == 1.0
            if k > 1:
                # Algorithm 2's worst case keeps F2 at 1×1: C² of C²K² entries (Fig. 3b).
                assert practical == pytest.approx(1 / (k * k))


def test_condition7_width() -> None:
    assert exp_condition.condition7_width(4, 1) == 4
    assert exp_condition.condition7_width(4, 3) == 12  # ⌈4·25/9⌉
    assert exp_condition.condition7_width(8, 5) == 26  # ⌈8·81/25⌉


def test_condition_outputs(condition: dict) -> None:
    out = Path(condition["out"])
    for name in ("condition.json", "condition.csv", "summary.csv", "condition.png"):
        assert (out / name).stat().st_size > 0
    data = json.loads((out / "condition.json").read_text())
    assert data["seeds"] == [0, 1, 2]
    assert {r["seed"] for r in data["rows"]} == {0, 1, 2}


def test_histograms(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from netmorph_core.experiments import exp_histograms

    res = exp_histograms.run(RunOptions(seeds=3, quick=True, quiet=True, out=tmp_path))
    s = {(r["method"], r["filter"]): r for r in res["summary"]}
    # Net2Net's inserted layer: the widened δ identity — mostly exact zeros, the rest at 1/n.
    n2n = s[("net2net", "F2")]
    assert n2n["zero_fraction_mean"] > 0.8
    assert n2n["zero_fraction_mean"] + n2n["unit_fraction_mean"] == pytest.approx(1.0)
    # NetMorph's new filters: no zeros, one scale for both, near-normal tails.
    for name in ("F1", "F2"):
        nm = s[("netmorph", name)]
        assert nm["zero_fraction_mean"] == 0.0
        assert nm["unit_fraction_mean"] < 0.01
        assert abs(nm["excess_kurtosis_mean"]) < 1.5
    assert s[("netmorph", "F1")]["std_mean"] == pytest.approx(s[("netmorph", "F2")]["std_mean"])
    for name in ("histograms.json", "histograms.csv", "summary.csv", "histograms.png"):
        assert (tmp_path / name).stat().st_size > 0


def test_filter_stats_values() -> None:
    from netmorph_core.experiments.exp_histograms import filter_stats

    st = filter_stats(np.array([0.0, 0.0, 1.0, 0.5, 0.02, 1 / 7, 0.3, -0.5]))
    assert st["zero_fraction"] == pytest.approx(2 / 8)
    assert st["near_zero_fraction"] == pytest.approx(3 / 8)
    assert st["unit_fraction"] == pytest.approx(4 / 8)  # 1, 1/2, 1/50 and 1/7
