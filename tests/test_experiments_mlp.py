"""Experiment ``mlp`` (paper §4.1) on its short form: preservation, the PReLU claim, outputs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from netmorph_core.experiments import exp_mlp  # noqa: E402
from netmorph_core.experiments.data import load_digits  # noqa: E402
from netmorph_core.experiments.options import RunOptions  # noqa: E402
from netmorph_core.experiments.train import TrainConfig  # noqa: E402

SEEDS = 3


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("mlp")
    return exp_mlp.run(RunOptions(seeds=SEEDS, quick=True, quiet=True, out=out))


@pytest.fixture(scope="module")
def saved(result: dict) -> dict:
    return json.loads((Path(result["out"]) / "mlp.json").read_text())


def test_outputs_written(result: dict) -> None:
    out = Path(result["out"])
    for name in ("mlp.json", "mlp.csv", "summary.csv", "mlp.png"):
        assert (out / name).stat().st_size > 0, name
    with (out / "mlp.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    cfg = exp_mlp.config_for("digits", quick=True)
    per_seed = cfg.parent.epochs + 2 * cfg.child.epochs + (cfg.parent.epochs + cfg.child.epochs)
    per_seed += cfg.child.epochs + (cfg.parent.epochs + cfg.child.epochs)  # ptanh
    assert len(rows) == SEEDS * per_seed
    assert set(rows[0]) == {"seed", "activation", "method", "epoch", "accuracy"}


def test_function_preserved_at_every_morph(saved: dict) -> None:
    for run in saved["per_seed"]:
        parent_final = run["parent"][-1]
        for label in exp_mlp.ACTIVATIONS:
            for method, child in run[label].items():
                if method == "scratch":
                    continue
                kept = child["at_morph"]
                assert kept["identical_predictions"], (label, method)
                assert kept["child_accuracy"] == kept["parent_accuracy"] == parent_final
                assert kept["max_abs_dev"] < 1e-4


def test_prelu_netmorph_at_least_net2net_on_average(result: dict) -> None:
    claims = result["claims"]
    assert claims["preserved_at_every_morph"]
    assert claims["prelu_netmorph_ge_net2net"], claims
    assert claims["prelu_netmorph_final_mean"] >= claims["prelu_net2net_final_mean"]


def test_net2net_not_applicable_to_tanh(saved: dict) -> None:
    for run in saved["per_seed"]:
        assert set(run["ptanh"]) == {"netmorph", "scratch"}
        assert set(run["prelu"]) == {"netmorph", "net2net", "scratch"}
    assert "not applicable" in saved["claims"]["ptanh_net2net"]


def test_net2net_copies_stay_copies(saved: dict) -> None:
    for run in saved["per_seed"]:
        assert run["prelu"]["net2net"]["distinct_hidden_units"] == 10  # one per class of G
        assert run["prelu"]["netmorph"]["distinct_hidden_units"] == exp_mlp.HIDDEN


def test_summary_has_mean_and_std_over_seeds(result: dict, saved: dict) -> None:
    rows = {(r["activation"], r["method"]): r for r in result["summary"]}
    finals = [run["prelu"]["netmorph"]["curve"][-1] for run in saved["per_seed"]]
    assert rows[("prelu", "netmorph")]["final_mean"] == pytest.approx(sum(finals) / SEEDS)
    assert rows[("prelu", "netmorph")]["final_std"] >= 0.0
    assert len(finals) == SEEDS


def test_seeded_rerun_is_identical() -> None:
    cfg = exp_mlp.MLPConfig(TrainConfig(1, 0.05, 64), TrainConfig(1, 0.01, 64))
    data = load_digits().subset(300, 100)
    with torch.random.fork_rng():
        a = exp_mlp.run_seed(7, data, cfg, torch.device("cpu"), quiet=True)
        b = exp_mlp.run_seed(7, data, cfg, torch.device("cpu"), quiet=True)
    assert a == b


def test_mnist_from_data_dir(tmp_path: Path) -> None:
    """With --data-dir the experiment reads MNIST IDX files (here tiny random ones)."""
    import struct

    from netmorph_core.experiments.data import MNIST_FILES

    rng = np.random.default_rng(0)
    arrays = {
        "train_images": rng.integers(0, 256, (96, 28, 28)),
        "train_labels": rng.integers(0, 10, 96),
        "test_images": rng.integers(0, 256, (40, 28, 28)),
        "test_labels": rng.integers(0, 10, 40),
    }
    data_dir = tmp_path / "mnist"
    data_dir.mkdir()
    for key, name in MNIST_FILES.items():
        arr = arrays[key]
        header = bytes([0, 0, 8, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
        (data_dir / name).write_bytes(header + arr.astype(np.uint8).tobytes())
    res = exp_mlp.run(
        RunOptions(seeds=1, quick=True, quiet=True, out=tmp_path / "out", data_dir=data_dir)
    )
    saved = json.loads((tmp_path / "out" / "mlp.json").read_text())
    assert saved["dataset"] == "mnist"
    assert res["claims"]["preserved_at_every_morph"]
    assert saved["per_seed"][0]["prelu"]["netmorph"]["distinct_hidden_units"] == exp_mlp.HIDDEN
