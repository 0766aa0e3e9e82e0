"""The experiment registry, options, CLI parser, device handling, result writers and the demo."""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from netmorph_core.cli import build_parser, main
from netmorph_core.experiments import results
from netmorph_core.experiments.cli_commands import add_experiment_parser
from netmorph_core.experiments.options import RunOptions
from netmorph_core.experiments.registry import EXPERIMENTS, run_experiment
from netmorph_core.extras import install_hint, missing, top_module

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="netmorph")
    add_experiment_parser(p.add_subparsers(dest="command", required=True))
    return p


def test_importing_the_cli_pieces_loads_neither_torch_nor_matplotlib() -> None:
    code = (
        "import sys, netmorph_core, netmorph_core.experiments.cli_commands, netmorph_core.cli\n"
        "bad = [m for m in ('torch', 'matplotlib') if m in sys.modules]\n"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env=ENV)


def test_parser_defaults_and_flags(tmp_path: Path) -> None:
    args = parser().parse_args(["experiment", "mlp"])
    assert (args.name, args.seeds, args.device, args.out, args.data_dir) == (
        "mlp",
        3,
        "cpu",
        None,
        None,
    )
    assert not args.quick and not args.quiet
    args = parser().parse_args(
        [
            "experiment",
            "cnn",
            "--seeds",
            "5",
            "--device",
            "cuda",
            "--out",
            str(tmp_path),
            "--data-dir",
            str(tmp_path),
            "--quick",
            "--quiet",
        ]
    )
    assert (args.seeds, args.device, args.out, args.data_dir) == (5, "cuda", tmp_path, tmp_path)
    assert args.quick and args.quiet


@pytest.mark.parametrize(
    "argv",
    [
        ["experiment", "vgg"],
        ["experiment", "mlp", "--seeds", "0"],
        ["experiment", "mlp", "--seeds", "x"],
        ["experiment", "mlp", "--device", "tpu"],
    ],
)
def test_parser_rejects_bad_arguments(argv: list[str], capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        parser().parse_args(argv)
    assert exc.value.code == 2
    capsys.readouterr()


def test_experiment_subcommand_runs_condition(tmp_path: Path) -> None:
    args = parser().parse_args(
        ["experiment", "condition", "--seeds", "1", "--quick", "--quiet", "--out", str(tmp_path)]
    )
    assert args.func(args) == 0
    assert (tmp_path / "condition.json").exists()


def test_missing_data_dir_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("torch")
    args = parser().parse_args(
        [
            "experiment",
            "mlp",
            "--quick",
            "--quiet",
            "--out",
            str(tmp_path / "o"),
            "--data-dir",
            str(tmp_path / "nowhere"),
        ]
    )
    assert args.func(args) == 2
    assert "does not exist" in capsys.readouterr().err


def test_registry() -> None:
    assert set(EXPERIMENTS) == {"mlp", "cnn", "histograms", "condition", "stable", "lm-growth"}
    with pytest.raises(ValueError, match="unknown experiment 'vgg'"):
        run_experiment("vgg", RunOptions())
    with pytest.raises(TypeError, match="RunOptions"):
        run_experiment("mlp", {"seeds": 3})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"seeds": 0}, ValueError),
        ({"seeds": True}, ValueError),
        ({"seeds": 2.0}, ValueError),
        ({"device": "gpu"}, ValueError),
        ({"out": 3}, TypeError),
    ],
)
def test_run_options_validation(kwargs: dict, error: type) -> None:
    with pytest.raises(error):
        RunOptions(**kwargs)


def test_run_options_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    opts = RunOptions(seeds=4, out=str(tmp_path / "x"))
    assert opts.seed_list == [0, 1, 2, 3]
    assert opts.out_dir("mlp") == tmp_path / "x" and (tmp_path / "x").is_dir()
    monkeypatch.chdir(tmp_path)
    assert RunOptions().out_dir("cnn") == Path("results/cnn")


def test_cuda_request_without_cuda_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    torch = pytest.importorskip("torch")
    from netmorph_core.experiments.train import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match=r"CUDA is not available.*--device cpu"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="'cpu' or 'cuda'"):
        resolve_device("tpu")
    assert resolve_device("cpu").type == "cpu"


@pytest.mark.gpu
def test_quick_mlp_on_cuda(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    res = run_experiment(
        "mlp", RunOptions(seeds=3, quick=True, quiet=True, device="cuda", out=tmp_path)
    )
    assert res["claims"]["preserved_at_every_morph"]


def test_mean_std_and_curve_stats() -> None:
    assert results.mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert results.mean_std([0.5]) == (0.5, 0.0)
    with pytest.raises(ValueError, match="at least one"):
        results.mean_std([])
    st = results.curve_stats([[0.0, 1.0], [2.0, 3.0]])
    assert st["mean"] == [1.0, 2.0] and st["std"] == pytest.approx([np.sqrt(2)] * 2)
    with pytest.raises(ValueError, match="same length"):
        results.curve_stats([[1.0], [1.0, 2.0]])
    assert results.fmt(0.97123, 0.004) == "97.12 ± 0.40"
    tied = [441 / 450, 442 / 450, 440 / 450]
    assert results.at_least(sum(tied) / 3, sum(reversed(tied)) / 3)
    assert not results.at_least(0.97, 0.98)


def test_write_json_and_csv(tmp_path: Path) -> None:
    obj = {"a": np.float32(1.5), "b": np.arange(3), "c": float("nan"), "p": tmp_path}
    data = json.loads(results.write_json(tmp_path / "r.json", obj).read_text())
    assert data == {"a": 1.5, "b": [0, 1, 2], "c": None, "p": str(tmp_path)}
    path = results.write_csv(tmp_path / "r.csv", [{"x": 1, "y": 2}, {"x": 3, "z": 4}])
    with path.open() as fh:
        rows = list(csv.DictReader(fh))
    assert rows == [{"x": "1", "y": "2", "z": ""}, {"x": "3", "y": "", "z": "4"}]
    with pytest.raises(ValueError, match="no rows"):
        results.write_csv(tmp_path / "e.csv", [])


def test_demo_writes_to_out_and_preserves_every_child(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    pytest.importorskip("torch")
    out = tmp_path / "demo-here"
    assert main(["demo", "--out", str(out), "--quiet"]) == 0
    assert capsys.readouterr().out == f"results in {out.resolve()}\n"
    assert sorted(p.name for p in out.iterdir()) == ["demo.csv", "demo.json", "demo.png"]
    data = json.loads((out / "demo.json").read_text())
    assert len(data["rows"]) == 7
    parent_acc = data["parent_curve"][-1]
    for row in data["rows"]:
        assert row["identical_predictions"], row["model"]
        assert row["after_morph"] == parent_acc
    with (out / "demo.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == 7
    assert (out / "demo.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("argv", [["demo"], ["bench", "--quick"], ["experiment", "mlp"]])
def test_every_writing_subcommand_takes_out(argv: list[str], tmp_path: Path) -> None:
    assert build_parser().parse_args(argv).out is None
    assert build_parser().parse_args([*argv, "--out", str(tmp_path)]).out == tmp_path


@pytest.mark.parametrize(
    ("argv", "absent", "line"),
    [
        (
            ["demo"],
            ["matplotlib"],
            'netmorph demo needs matplotlib: pip install "netmorph[experiments]"',
        ),
        (
            ["demo"],
            ["torch", "sklearn"],
            'netmorph demo needs torch, scikit-learn: pip install "netmorph[torch,experiments]"',
        ),
        (
            ["experiment", "mlp", "--quick"],
            ["sklearn"],
            'netmorph experiment mlp needs scikit-learn: pip install "netmorph[experiments]"',
        ),
        (
            ["experiment", "condition"],
            ["tqdm"],
            'netmorph experiment condition needs tqdm: pip install "netmorph[experiments]"',
        ),
        (
            ["bench", "--quick"],
            ["pytest_benchmark"],
            'netmorph bench needs pytest-benchmark: pip install "netmorph[test]"',
        ),
    ],
)
def test_missing_extra_is_one_line_and_exit_2(
    argv: list[str],
    absent: list[str],
    line: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    for name in absent:
        monkeypatch.setitem(sys.modules, name, None)
    assert main([*argv, "--out", str(tmp_path / "o")]) == 2
    captured = capsys.readouterr()
    assert captured.err == line + "\n" and captured.out == ""
    assert not (tmp_path / "o").exists()


def test_missing_extra_found_late_is_one_line_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from netmorph_core.experiments import cli_commands

    monkeypatch.setattr(cli_commands, "missing", lambda modules: [])
    monkeypatch.delitem(sys.modules, "netmorph_core.experiments.exp_condition", raising=False)
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    assert main(["experiment", "condition", "--quick", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == 'netmorph experiment condition needs tqdm: pip install "netmorph[experiments]"\n'


def test_missing_matplotlib_from_the_command_line_has_no_traceback(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['matplotlib'] = None\n"
        "from netmorph_core.cli import main\n"
        f"raise SystemExit(main(['experiment', 'condition', '--out', {str(tmp_path)!r}]))"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=ENV, capture_output=True, text=True
    )
    assert run.returncode == 2
    assert run.stderr == (
        'netmorph experiment condition needs matplotlib: pip install "netmorph[experiments]"\n'
    )


def test_extras_helpers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cupy", None)
    assert missing(["cupy"]) == ["cupy"]
    with pytest.raises(ValueError, match="'numpy' is not an optional dependency"):
        missing(["numpy"])
    assert top_module(ModuleNotFoundError("x", name="sklearn.datasets")) == "sklearn"
    assert top_module(ModuleNotFoundError("x", name="netmorph_core._native")) is None
    assert (
        install_hint("netmorph x", ["cupy"])
        == 'netmorph x needs cupy: pip install "netmorph[cupy]"'
    )
