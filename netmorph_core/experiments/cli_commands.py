"""The ``netmorph experiment`` subcommand and the ``netmorph demo`` entry point.

Hooked into :mod:`netmorph_core.cli` with ``add_experiment_parser(sub)`` and
``run_demo(quiet=...)``. Importing this module imports neither torch nor matplotlib.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .options import RunOptions
from .registry import EXPERIMENTS, run_experiment


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _experiment(args: argparse.Namespace) -> int:
    options = RunOptions(
        seeds=args.seeds,
        device=args.device,
        out=args.out,
        data_dir=args.data_dir,
        quick=args.quick,
        quiet=args.quiet,
    )
    try:
        result = run_experiment(args.name, options)
    except (FileNotFoundError, RuntimeError, ValueError) as exc:
        print(f"netmorph experiment {args.name}: {exc}", file=sys.stderr)
        return 2
    if not args.quiet:
        print(f"results in {result['out']}")
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
    parser.add_argument(
        "--out", type=Path, default=None, help="output directory (default results/NAME)"
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="MNIST IDX files (mlp) or CIFAR-10 python batches (cnn, histograms)"
        "; default: the bundled 8×8 digits",
    )
    parser.add_argument("--quick", action="store_true", help="the short form (seconds)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or tables")
    parser.set_defaults(func=_experiment)
    return parser


def run_demo(quiet: bool = False) -> int:
    """``netmorph demo``: the tour of :mod:`.demo`, results in ``results/demo/``."""
    from .demo import run_demo as tour

    return tour(quiet=quiet)
