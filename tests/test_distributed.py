"""DDP continued training of a morphed model: 2 CPU processes (gloo) launched by torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="no gloo backend"
)


def launch(out: Path, nproc: int) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "netmorph_core.experiments.distributed",
        "--quick",
        "--quiet",
        "--out",
        str(out),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    proc = launch(out, 2)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def test_every_rank_ends_with_identical_parameters(two_ranks: Path) -> None:
    ranks = [json.loads((two_ranks / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["params_sha256"] == ranks[1]["params_sha256"]
    assert ranks[0]["final_accuracy"] == ranks[1]["final_accuracy"]


def test_rank0_report(two_ranks: Path) -> None:
    res = json.loads((two_ranks / "distributed.json").read_text())
    assert res["world_size"] == 2 and res["backend"] == "gloo"
    assert res["child_identical_across_ranks"]
    assert res["params_max_rank_difference"] == 0.0
    assert res["optimizer_state_max_rank_difference"] == 0.0
    assert res["after_morph"]["identical_predictions"]
    assert res["after_morph"]["child_accuracy"] == res["parent_accuracy"]
    assert all(d < 1e-6 for d in res["morph_rel_dev_f64"])
    assert res["ok"]


def test_remapped_optimizer_carries_momentum() -> None:
    from netmorph_core.experiments.distributed import optimizer_state
    from netmorph_core.experiments.models import seeded, small_cnn
    from netmorph_core.torch import deepen, remap_optimizer

    parent = seeded(0, small_cnn, 1, 10, (4, 4, 8))
    opt = torch.optim.SGD(parent.parameters(), lr=0.1, momentum=0.9)
    parent(torch.randn(3, 1, 8, 8)).sum().backward()
    opt.step()
    child, report = deepen(parent, "conv2", width=8, seed=0)
    new = remap_optimizer(opt, parent, child, report=report)
    carried = optimizer_state(new)
    # Unchanged layers keep their momentum buffers exactly.
    assert carried.numel() > 0
    buf_old = opt.state[parent.conv1.weight]["momentum_buffer"]
    torch.testing.assert_close(new.state[child.conv1.weight]["momentum_buffer"], buf_old)


def test_single_process_without_torchrun(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "netmorph_core.experiments.distributed",
            "--quick",
            "--quiet",
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "distributed.json").read_text())
    assert res["world_size"] == 1 and res["ok"]


def test_cuda_request_without_cuda_fails_clearly(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "netmorph_core.experiments.distributed",
            "--quick",
            "--quiet",
            "--device",
            "cuda",
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "CUDA is not available" in proc.stderr
