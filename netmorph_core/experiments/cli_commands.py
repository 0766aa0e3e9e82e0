"""The ``netmorph experiment`` and ``netmorph demo`` subcommands.

Hooked into :mod:`netmorph_core.cli` with ``add_experiment_parser(sub)``,
``add_demo_parser(sub)`` and ``add_out_option(parser, default)``. Each checks its optional
dependencies before any work (one line naming the extra to install, exit code 2) and prints
the absolute path of the directory its files went to. Importing this module imports neither
torch nor matplotlib.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..extras import install_hint, missing
from .options import RunOptions
from .registry import EXPERIMENTS, requirements, run_experiment

#: What ``netmorph demo`` imports.
DEMO_REQUIRES = ("torch", "matplotlib", "tqdm", "sklearn")
DEMO_OUT = Path("results/demo")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def add_out_option(parser: argparse.ArgumentParser, default: str) -> None:
    """The ``--out DIR`` option every subcommand that writes files takes."""
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help=f"output directory (default {default})",
    )


def report_missing(command: str, modules: tuple[str, ...]) -> bool:
    """Print one line naming the extra to install when some of ``modules`` are missing."""
    absent = missing(modules)
    if absent:
        print(install_hint(command, absent), file=sys.stderr)
    return bool(absent)


def say_where(out: Path) -> None:
    """The line every file-writing subcommand ends with."""
    print(f"results in {Path(out).resolve()}")


def _experiment(args: argparse.Namespace) -> int:
    options = RunOptions(
        seeds=args.seeds,
        device=args.device,
        out=args.out,
        data_dir=args.data_dir,
        quick=args.quick,
        quiet=args.quiet,
    )
    command = f"netmorph experiment {args.name}"
    if report_missing(command, requirements(args.name, options)):
        return 2
    try:
        result = run_experiment(args.name, options)
    except (FileNotFoundError, RuntimeError, ValueError) as exc:
        print(f"{command}: {exc}", file=sys.stderr)
        return 2
    say_where(result["out"])
    claims = result.get("claims", {})
    return 0 if claims.get("preserved_at_every_morph", True) else 1


def add_experiment_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``experiment NAME [--seeds N] [--device cpu|cuda] [--out DIR] [--data-dir DIR]
    [--quick] [--quiet]`` to ``subparsers``; returns the new parser."""
    listing = "; ".join(f"{e.name}: {e.description}" for e in EXPERIMENTS.values())
    parser = subparsers.add_parser(
        "experiment",
        help="reproduce an experiment of the paper at laptop scale",
        description=f"Experiments: {listing}. Results (JSON, CSV, PNG) go to --out.",
    )
    parser.add_argument("name", choices=list(EXPERIMENTS), help="which experiment")
    parser.add_argument(
        "--seeds", type=_positive_int, default=3, help="number of seeds, 0 … N−1 (default 3)"
    )
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), default="cpu", help="where to train (default cpu)"
    )
    add_out_option(parser, "results/NAME")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="MNIST IDX files (mlp) or CIFAR-10 python batches (cnn, histograms)"
        "; default: the bundled 8×8 digits. lm-growth: a directory of *.py files "
        "(default: the Python standard library)",
    )
    parser.add_argument("--quick", action="store_true", help="the short form (seconds)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or tables")
    parser.set_defaults(func=_experiment)
    return parser


def _demo(args: argparse.Namespace) -> int:
    if report_missing("netmorph demo", DEMO_REQUIRES):
        return 2
    from .demo import run_demo

    out = DEMO_OUT if args.out is None else args.out
    status = run_demo(quiet=args.quiet, out=out)
    say_where(out)
    return status


def add_demo_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``demo [--out DIR] [--quiet]`` to ``subparsers``; returns the new parser."""
    parser = subparsers.add_parser(
        "demo",
        help="morph layers and small models, verify preservation",
        description="Train a small CNN on the bundled digits, morph it several ways, check "
        "each child, train on. Writes demo.json, demo.csv and demo.png to --out.",
    )
    add_out_option(parser, str(DEMO_OUT))
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.set_defaults(func=_demo)
    return parser
