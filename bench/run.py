"""Run the benchmark suite and print a markdown summary table.

    python bench/run.py [--quick] [--json PATH] [-- extra pytest arguments]
    python bench/run.py --table PATH        # only print the table of a saved run

The pytest-benchmark JSON goes to ``--json`` (default ``.benchmarks/netmorph.json``). The
table has one row per implementation and shape: mean and median time (GPU rows: also the
mean between CUDA events), the speed-up against the fastest baseline of the same group
(ratio of medians, baseline / implementation: above 1 is faster; medians are robust to the
odd descheduled round), and the accuracy recorded by the benchmark (relative error for
compose, relative residual for deconvolution). Idle OpenMP threads are made to sleep
(``OMP_WAIT_POLICY=PASSIVE`` unless set otherwise) so that the libraries timed in one process
do not slow each other down.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_suite(json_path: Path, quick: bool, extra: list[str]) -> int:
    json_path.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    # NumPy/SciPy's OpenBLAS, Numba's and PyTorch's OpenMP pools share the cores in one
    # process: threads spinning idle in one pool slow the others down, so idle threads sleep.
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        str(ROOT / "bench"),
        "-p",
        "no:cacheprovider",
        f"--benchmark-json={json_path}",
        "--benchmark-disable-gc",
        *(["--quick"] if quick else []),
        *extra,
    ]
    return subprocess.call(cmd, cwd=ROOT, env=env)


def _ms(seconds: float) -> str:
    """Milliseconds with three significant digits (at least one decimal)."""
    ms = seconds * 1e3
    return f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"


def _accuracy(info: dict) -> str:
    if "rel_err" in info:
        return f"rel. error {info['rel_err']:.1e}"
    if "residual" in info:
        return f"residual {info['residual']:.2e}"
    return ""


def table(data: dict) -> str:
    """Markdown rows grouped as pytest-benchmark grouped them, baselines first."""
    groups: dict[str, list[dict]] = {}
    for bench in data["benchmarks"]:
        groups.setdefault(bench["group"], []).append(bench)
    lines = [
        "| shape | implementation | mean (ms) | median (ms) | speed-up vs baseline | accuracy |",
        "| --- | --- | ---: | ---: | ---: | --- |",
    ]
    for group, rows in groups.items():
        baselines = [r for r in rows if r["extra_info"].get("baseline")]
        best = min((r["stats"]["median"] for r in baselines), default=None)
        rows = sorted(
            rows, key=lambda r: (not r["extra_info"].get("baseline"), r["stats"]["median"])
        )
        for r in rows:
            info = r["extra_info"]
            name = info.get("impl", r["name"])
            if info.get("method"):
                name += f" ({info['method']})"
            if info.get("baseline"):
                name += " *baseline*"
            median = r["stats"]["median"]
            ratio = f"{best / median:.2f}×" if best else "n/a"
            mean = _ms(r["stats"]["mean"])
            if "cuda_ms" in info:
                mean += f" (events {_ms(info['cuda_ms'] / 1e3)})"
            cells = [group, name, mean, _ms(median), ratio, _accuracy(info)]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="leave out the largest sizes")
    parser.add_argument("--json", type=Path, default=ROOT / ".benchmarks" / "netmorph.json")
    parser.add_argument("--table", type=Path, help="print the table of this JSON and exit")
    parser.add_argument("pytest_args", nargs="*", help="passed to pytest (after --)")
    args = parser.parse_args(argv)
    if args.table is None:
        code = run_suite(args.json, args.quick, args.pytest_args)
        if code not in (0, 5) or not args.json.exists():  # 5: nothing collected
            return code
    source = args.table or args.json
    print(table(json.loads(source.read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
