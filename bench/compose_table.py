"""Run the threaded compose benchmarks and print the summary tables of ``docs/kernels.md``.

    python bench/compose_table.py [--quick] [--json PATH]
    python bench/compose_table.py --table PATH      # only print the tables of a saved run

Medians of ``bench/bench_compose.py::test_compose_threads`` in milliseconds. A cell "t / n
(r×)" is torch's median t, the native kernel's median n and r = t / n (above 1: faster than
torch). Under load the native kernel is also shown on 1 thread and with its own thread
choice ("auto"). The other two tables come from ``test_compose_paired`` (torch, the bare
kernel and the public ``netmorph_core.compose`` called in turn in every round): a cell
"t / k / c (r×, +o%)" holds their minima over the rounds, r = t / k and the public compose's
overhead o = c / k − 1; the last table the medians over the rounds of the per-round ratios.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from run import ROOT, run_suite

SETTINGS = ("1 thread", "2 threads", "2 threads, 1 core busy")


def _medians(data: dict) -> dict[tuple[str, str], dict[str, float]]:
    """{(shape, setting): {impl: median seconds}} of the threaded benchmarks."""
    out: dict[tuple[str, str], dict[str, float]] = {}
    for bench in data["benchmarks"]:
        info = bench["extra_info"]
        if "setting" in info:
            out.setdefault((info["shape"], info["setting"]), {})[info["impl"]] = bench["stats"][
                "median"
            ]
    return out


def _paired(data: dict) -> dict[tuple[str, str], dict]:
    """{(shape, setting): extra_info} of the paired benchmark."""
    out: dict[tuple[str, str], dict] = {}
    for bench in data["benchmarks"]:
        info = bench["extra_info"]
        if "paired_setting" in info:
            out[(info["shape"], info["paired_setting"])] = info
    return out


def _paired_cells(info: dict | None) -> tuple[str, str]:
    """The minima cell and the median-ratio cell of one shape and setting."""
    if info is None:
        return "n/a", "n/a"
    m, r = info["paired_min"], info["paired_ratio"]
    t, k, c = m["torch"], m["kernel"], m["compose"]
    minima = f"{_ms(t)} / {_ms(k)} / {_ms(c)} ({t / k:.2f}×, {100 * (c / k - 1):+.1f}%)"
    return minima, f"{r['torch']:.2f}×, {100 * (r['compose'] - 1):+.1f}%"


def _ms(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"


def _pair(t: float | None, n: float | None) -> str:
    if t is None or n is None:
        return "n/a"
    return f"{_ms(t)} / {_ms(n)} ({t / n:.2f}×)"


def tables(data: dict) -> str:
    """The speed table (medians of separate runs) and the two paired tables, in markdown."""
    medians = _medians(data)
    paired = _paired(data)
    shapes = list(dict.fromkeys([*(shape for shape, _ in medians), *(s for s, _ in paired)]))
    lines = [
        "| shape | 1 thread: torch / native | 2 threads: torch / native | 2 threads, 1 core "
        "busy: torch / native | same: native 1 thread / auto |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for shape in shapes:
        cells = [shape]
        for setting in SETTINGS:
            m = medians.get((shape, setting), {})
            cells.append(_pair(m.get("torch"), m.get("native")))
        busy = medians.get((shape, SETTINGS[2]), {})
        one, auto = busy.get("native 1 thread"), busy.get("native auto")
        cells.append(f"{_ms(one)} / {_ms(auto)}" if one and auto else "n/a")
        lines.append("| " + " | ".join(cells) + " |")
    header = "| shape | " + " | ".join(SETTINGS) + " |"
    rule = "| --- |" + " ---: |" * len(SETTINGS)
    minima = ["", "Paired minima: torch / kernel / compose (torch ÷ kernel, compose overhead)", ""]
    ratios = ["", "Paired medians of the per-round ratios: torch ÷ kernel, compose overhead", ""]
    minima += [header, rule]
    ratios += [header, rule]
    for shape in shapes:
        cells = [_paired_cells(paired.get((shape, setting))) for setting in SETTINGS]
        minima.append("| " + " | ".join([shape, *(a for a, _ in cells)]) + " |")
        ratios.append("| " + " | ".join([shape, *(b for _, b in cells)]) + " |")
    lines += minima + ratios
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="leave out C = 512")
    parser.add_argument("--json", type=Path, default=ROOT / ".benchmarks" / "compose.json")
    parser.add_argument("--table", type=Path, help="print the tables of this JSON and exit")
    args = parser.parse_args(argv)
    if args.table is None:
        path = str(ROOT / "bench" / "bench_compose.py")
        tests = "test_compose_threads or test_compose_paired"
        code = run_suite(args.json, args.quick, [path, "-k", tests])
        if code != 0 or not args.json.exists():
            return code
    print(tables(json.loads((args.table or args.json).read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
