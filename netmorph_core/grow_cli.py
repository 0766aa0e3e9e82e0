"""``netmorph grow SRC DST``: a Hugging Face checkpoint directory grown into a new one.

The parser imports nothing heavy; the command imports torch and transformers when it runs.
"""

from __future__ import annotations

import argparse
import sys

SIZE_UNITS = {
    "": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
}


def _size(text: str) -> int:
    """ "2GB", "500MiB" or a number of bytes."""
    s = text.strip().upper()
    digits = s.rstrip("KMGIB")
    unit = s[len(digits) :]
    try:
        value = float(digits) * SIZE_UNITS[unit]
    except (KeyError, ValueError) as exc:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 2GB, 500MiB)") from exc
    if value < 1:
        raise argparse.ArgumentTypeError(f"not a positive size: {text!r}")
    return int(value)


def add_grow_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``grow`` subcommand on the ``netmorph`` parser's subparsers."""
    grow = sub.add_parser(
        "grow",
        help="grow a Hugging Face checkpoint directory (Llama, Mistral, Qwen2) into a new one",
        description="Read SRC lazily, apply the growth block by block (each block verified "
        "against its parent block), write the complete grown checkpoint to DST.",
    )
    grow.add_argument("src", help="checkpoint directory: config.json and safetensors weights")
    grow.add_argument("dst", help="new directory for the grown checkpoint (must not exist)")
    grow.add_argument("--ffn", type=float, help="feed-forward hidden size × this factor")
    grow.add_argument("--heads", type=int, help="query heads of every block")
    grow.add_argument("--kv-heads", type=int, help="key/value heads (default: kept, or heads)")
    grow.add_argument("--width", type=int, help="new hidden size (residual stream width)")
    grow.add_argument(
        "--add-blocks",
        type=int,
        nargs="+",
        default=[],
        metavar="AT",
        help="insert a new block before each parent block AT (the block count: at the end)",
    )
    grow.add_argument("--method", choices=("netmorph", "zero"), default="netmorph")
    grow.add_argument("--seed", type=int, default=0)
    grow.add_argument("--shard-size", type=_size, default=2 << 30, help="shard files (2GiB)")
    grow.add_argument("--no-progress", action="store_true", help="no progress bar")
    grow.set_defaults(func=_grow)


def _grow(args: argparse.Namespace) -> int:
    from .checkpoint import grow_checkpoint
    from .torch.errors import MorphError

    try:
        summary = grow_checkpoint(
            args.src,
            args.dst,
            ffn=args.ffn,
            heads=args.heads,
            kv_heads=args.kv_heads,
            width=args.width,
            add_blocks=args.add_blocks,
            method=args.method,
            seed=args.seed,
            shard_bytes=args.shard_size,
            progress=not args.no_progress,
        )
    except (MorphError, ValueError, OSError) as exc:
        print(f"netmorph grow: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    worst = max(summary.blocks, key=lambda b: b.rel_dev / b.bound if b.bound else 0.0)
    print(f"wrote {summary.dst}: {summary.params_before:,} → {summary.params_after:,} parameters")
    print(
        f"blocks: {len(summary.blocks)} verified; worst block {worst.block}: relative "
        f"deviation {worst.rel_dev:.2e} (bound {worst.bound:.2e}, float64 {worst.rel_dev_f64:.2e})"
    )
    print(
        f"logits: max |child − parent| {summary.logits_max_abs_dev:.3g}, relative "
        f"{summary.logits_rel_dev:.2e} (parent's own rounding {summary.logits_parent_noise:.2e})"
    )
    print(f"time: {summary.seconds:.1f} s")
    for note in summary.notes:
        print(f"note: {note}")
    return 0
