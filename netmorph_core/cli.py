"""The ``netmorph`` command line: ``demo``, ``experiment``, ``info`` and ``bench``."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from . import __version__
from .backends import backends
from .experiments.cli_commands import add_experiment_parser, run_demo


def _info(_: argparse.Namespace) -> int:
    print(f"netmorph {__version__}")
    for row in backends():
        state = f"available ({row.device})" if row.available else f"unavailable: {row.reason}"
        print(f"  {row.name:<11} {state}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    return run_demo(quiet=args.quiet)


def _bench(args: argparse.Namespace) -> int:
    script = Path(__file__).resolve().parent.parent / "bench" / "run.py"
    if not script.exists():
        print("bench/ ships with the source checkout only: run it from there", file=sys.stderr)
        return 2
    return subprocess.call([sys.executable, str(script), *(["--quick"] if args.quick else [])])


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``netmorph`` command."""
    parser = argparse.ArgumentParser(prog="netmorph", description=__doc__)
    parser.add_argument("--version", action="version", version=f"netmorph {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="morph layers and small models, verify preservation")
    demo.add_argument("--quiet", action="store_true", help="no progress output")
    demo.set_defaults(func=_demo)
    info = sub.add_parser("info", help="version and every backend with why it is (not) available")
    info.set_defaults(func=_info)
    bench = sub.add_parser("bench", help="run the benchmark suite (bench/) and print the table")
    bench.add_argument("--quick", action="store_true", help="small shapes only")
    bench.set_defaults(func=_bench)
    add_experiment_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``netmorph`` console script."""
    args = build_parser().parse_args(argv)
    return args.func(args)
