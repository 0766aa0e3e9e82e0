"""The ``netmorph`` command line: ``demo``, ``experiment``, ``info``, ``bench`` and ``grow``."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from . import __version__
from .backends import backends
from .experiments.cli_commands import (
    add_demo_parser,
    add_experiment_parser,
    add_out_option,
    report_missing,
    say_where,
)
from .extras import install_hint, top_module
from .grow_cli import add_grow_parser

BENCH_REQUIRES = ("pytest", "pytest_benchmark")


def _info(_: argparse.Namespace) -> int:
    print(f"netmorph {__version__}")
    for row in backends():
        state = f"available ({row.device})" if row.available else f"unavailable: {row.reason}"
        print(f"  {row.name:<11} {state}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    root = Path(__file__).resolve().parent.parent
    script = root / "bench" / "run.py"
    if not script.exists():
        print("bench/ ships with the source checkout only: run it from there", file=sys.stderr)
        return 2
    if report_missing("netmorph bench", BENCH_REQUIRES):
        return 2
    out = root / ".benchmarks" if args.out is None else args.out
    json_path = Path(out) / "netmorph.json"
    cmd = [sys.executable, str(script), "--json", str(json_path.resolve())]
    status = subprocess.call([*cmd, *(["--quick"] if args.quick else [])])
    say_where(out)
    return status


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``netmorph`` command."""
    parser = argparse.ArgumentParser(prog="netmorph", description=__doc__)
    parser.add_argument("--version", action="version", version=f"netmorph {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    add_demo_parser(sub)
    info = sub.add_parser("info", help="version and every backend with why it is (not) available")
    info.set_defaults(func=_info)
    bench = sub.add_parser("bench", help="run the benchmark suite (bench/) and print the table")
    bench.add_argument("--quick", action="store_true", help="small shapes only")
    add_out_option(bench, ".benchmarks in the source checkout")
    bench.set_defaults(func=_bench)
    add_experiment_parser(sub)
    add_grow_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``netmorph`` console script. A missing optional dependency is one
    line on stderr naming the extra to install, and exit code 2."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ModuleNotFoundError as exc:
        module = top_module(exc)
        if module is None:
            raise
        command = " ".join(["netmorph", args.command, getattr(args, "name", "")]).strip()
        print(install_hint(command, [module]), file=sys.stderr)
        return 2
