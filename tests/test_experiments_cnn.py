"""Experiment ``cnn`` (paper §4.2–4.3) on its short form, and the Net2Net baselines it uses."""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from netmorph_core.experiments import exp_cnn  # noqa: E402
from netmorph_core.experiments.models import seeded, small_cnn  # noqa: E402
from netmorph_core.experiments.net2net import (  # noqa: E402
    chain_layers,
    idmorph_chain,
    net2net_deepen,
    net2net_widen,
)
from netmorph_core.experiments.options import RunOptions  # noqa: E402
from netmorph_core.morph.depth import compose_chain  # noqa: E402
from netmorph_core.reference import pad_centered  # noqa: E402

SEEDS = 2  # preservation is asserted per seed; the full run uses 3


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("cnn")
    return exp_cnn.run(RunOptions(seeds=SEEDS, quick=True, quiet=True, out=out))


@pytest.fixture(scope="module")
def saved(result: dict) -> dict:
    return json.loads((Path(result["out"]) / "cnn.json").read_text())


def test_outputs_written(result: dict) -> None:
    for name in ("cnn.json", "cnn.csv", "summary.csv", "cnn.png"):
        assert (Path(result["out"]) / name).stat().st_size > 0, name


def test_every_phase_preserves_the_previous_model(saved: dict) -> None:
    for run in saved["per_seed"]:
        for lineage in exp_cnn.LINEAGES:
            previous = run["parent"][-1]
            for record in run["phases"]:
                kept = record[lineage]["at_morph"]
                assert kept["identical_predictions"], (record["phase"], lineage)
                assert kept["parent_accuracy"] == previous
                assert kept["child_accuracy"] == previous
                assert kept["max_abs_dev"] < 1e-3
                previous = record[lineage]["curve"][-1]
    assert saved["claims"]["preserved_at_every_morph"]


def test_lineages_share_architectures_and_differ_in_sparsity(saved: dict) -> None:
    for run in saved["per_seed"]:
        for record in run["phases"]:
            nm, n2n = record["netmorph"], record["net2net"]
            assert nm["parameters"] == n2n["parameters"]
            if record["phase"] in ("depth", "subnet"):
                # Algorithm 2 fills the embedded filters; IdMorph's identity is sparse.
                assert nm["new_nonzero_ratio"] > n2n["new_nonzero_ratio"]
                assert nm["new_nonzero_ratio"] > 0.9


def test_scratch_trains_for_the_lineage_total(saved: dict) -> None:
    cfg = exp_cnn.config_for("digits", quick=True)
    for run in saved["per_seed"]:
        for i, record in enumerate(run["phases"]):
            expected = cfg.parent.epochs + (i + 1) * cfg.child.epochs
            assert len(record["scratch"]["curve"]) == expected


def test_summary_rows(result: dict) -> None:
    rows = {(r["phase"], r["method"]) for r in result["summary"]}
    assert ("parent", "parent") in rows
    for phase in exp_cnn.PHASES:
        for method in ("netmorph", "net2net", "scratch"):
            assert (phase, method) in rows


# --- Net2Net baselines ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "layers"),
    [
        ((4, 3, 3, 3), [(8, 3), (4, 1)]),
        ((4, 3, 3, 3), [(6, 5), (9, 3), (4, 1)]),
        ((5, 7), [(12, None), (5, None)]),
    ],
)
def test_idmorph_chain_composes_to_g_tilde(shape: tuple, layers: list) -> None:
    rng = np.random.default_rng(0)
    g = rng.standard_normal(shape)
    filters, biases = idmorph_chain(g, rng.standard_normal(shape[0]), layers, rng)
    assert [f.shape[0] for f in filters] == [w for w, _ in layers]
    composed = compose_chain(filters)
    np.testing.assert_allclose(composed, pad_centered(g, composed.shape[2:]), atol=1e-12)
    assert biases[-1] is not None and not np.any(biases[-1])


def test_idmorph_chain_rejects_narrow_layers() -> None:
    g = np.ones((4, 3, 3, 3))
    with pytest.raises(ValueError, match="at least G's 4 output channels"):
        idmorph_chain(g, None, [(2, 3), (4, 1)], np.random.default_rng(0))
    with pytest.raises(ValueError, match="last layer must have G's 4"):
        idmorph_chain(g, None, [(8, 3), (5, 1)], np.random.default_rng(0))


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


def test_net2net_deepen_and_widen_preserve_the_function() -> None:
    model = seeded(0, small_cnn, 1, 10, (4, 4, 8), 3)
    x = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    deeper = net2net_deepen(model, "conv2", [(12, 3), (4, 1)], seed=0)
    wider = net2net_widen(deeper, "conv2.2", 9, seed=0)
    for child in (deeper, wider):
        torch.testing.assert_close(_logits(child, x), _logits(model, x), atol=1e-5, rtol=1e-5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # Net2Net's inserted 1×1 layer is a widened identity: one non-zero per input column.
    f2 = chain_layers(deeper.get_submodule("conv2"))[1].weight
    assert int(torch.count_nonzero(f2)) == 12
    assert wider.get_submodule("conv2.2").out_channels == 9


def test_net2net_widen_refuses_per_channel_parameters_in_between() -> None:
    model = nn.Sequential(
        OrderedDict([("fc1", nn.Linear(5, 4)), ("bn", nn.BatchNorm1d(4)), ("fc2", nn.Linear(4, 3))])
    )
    with pytest.raises(ValueError, match="per-channel parameter"):
        net2net_widen(model, "fc1", 6, seed=0)


def test_cifar10_from_data_dir(tmp_path: Path) -> None:
    """With --data-dir the experiment reads CIFAR-10 python batches (here tiny random ones)."""
    import pickle

    from netmorph_core.experiments.data import CIFAR10_TEST_BATCH, CIFAR10_TRAIN_BATCHES

    rng = np.random.default_rng(0)
    data_dir = tmp_path / "cifar-10-batches-py"
    data_dir.mkdir()
    for name in (*CIFAR10_TRAIN_BATCHES, CIFAR10_TEST_BATCH):
        batch = {
            b"data": rng.integers(0, 256, (12, 3072), dtype=np.uint8),
            b"labels": rng.integers(0, 10, 12).tolist(),
        }
        (data_dir / name).write_bytes(pickle.dumps(batch))
    res = exp_cnn.run(
        RunOptions(seeds=1, quick=True, quiet=True, out=tmp_path / "out", data_dir=tmp_path)
    )
    saved = json.loads((tmp_path / "out" / "cnn.json").read_text())
    assert saved["dataset"] == "cifar10" and saved["per_seed"][0]["parent"]
    assert res["claims"]["preserved_at_every_morph"]
