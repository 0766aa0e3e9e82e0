"""Continued training of a morphed model under DistributedDataParallel.

Launch with ``torchrun --nproc_per_node=N -m netmorph_core.experiments.distributed [...]``
(gloo on CPU, nccl with ``--device cuda``, one GPU per process); without torchrun it runs as a
world of one process. Every rank:

1. trains the parent (a small CNN on the bundled digits) under DDP with a DistributedSampler;
2. morphs it once, before any wrapping — conv2 deepened (Algorithm 1), then conv1 widened —
   with the same seed, so every rank builds the same child; this is verified (all-gather of
   the flattened parameters) before the child is wrapped, since DDP's initial broadcast
   would otherwise hide a difference;
3. maps the parent's optimizer state onto the child with
   :func:`netmorph_core.torch.remap_optimizer` (momentum buffers carried over);
4. continues training the child under DDP, then verifies that every rank holds identical
   parameters and optimizer state (all-gather, bitwise).

Rank 0 writes ``distributed.json``; every rank writes ``rank<r>.json`` with a SHA-256 of its
final parameters. Exit status 0 when every check passed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DistributedSampler

from ..torch import deepen, remap_optimizer, widen
from .data import load_digits
from .models import seeded, small_cnn
from .train import DeviceData, accuracy, check_preservation, predict


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def init(device: str) -> tuple[int, int, torch.device]:
    """Join the process group torchrun describes (or a world of one); (rank, world, device)."""
    if "RANK" not in os.environ:
        os.environ.update(
            RANK="0",
            WORLD_SIZE="1",
            LOCAL_RANK="0",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(_free_port()),
        )
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda was requested but CUDA is not available here")
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(
                f"local rank {local_rank} has no GPU: {torch.cuda.device_count()} visible; "
                "nccl needs one GPU per process"
            )
        torch.cuda.set_device(local_rank)
        # float32 means float32: TF32 rounding would blur the parent/child comparison.
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    dist.init_process_group(backend="nccl" if device == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), dev


def flat(tensors: Iterator[torch.Tensor]) -> torch.Tensor:
    """Every tensor flattened into one float64 vector."""
    return torch.cat([t.detach().reshape(-1).double() for t in tensors])


def optimizer_state(opt: torch.optim.Optimizer) -> torch.Tensor:
    """The optimizer's tensor state (momentum buffers, …) as one vector, in parameter order."""
    parts = [
        value
        for group in opt.param_groups
        for p in group["params"]
        for value in opt.state.get(p, {}).values()
        if isinstance(value, torch.Tensor)
    ]
    return flat(iter(parts)) if parts else torch.zeros(0, dtype=torch.float64)


def max_rank_difference(vector: torch.Tensor) -> float:
    """max over ranks of max |v_rank − v_0| (0.0: bitwise identical everywhere; inf when the
    ranks hold vectors of different lengths)."""
    world = dist.get_world_size()
    size = torch.tensor([vector.numel()], device=vector.device)
    sizes = [torch.empty_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    if any(int(n) != vector.numel() for n in sizes):
        return float("inf")
    if vector.numel() == 0:
        return 0.0
    gathered = [torch.empty_like(vector) for _ in range(world)]
    dist.all_gather(gathered, vector)
    return max(float((g - gathered[0]).abs().max()) for g in gathered)


def train_ddp(
    model: DDP,
    opt: torch.optim.Optimizer,
    data: DeviceData,
    epochs: int,
    batch_size: int,
    seed: int,
    first_epoch: int,
) -> None:
    """Epochs of DDP training: each rank takes its DistributedSampler share of every epoch."""
    sampler = DistributedSampler(range(len(data.train_y)), shuffle=True, seed=seed)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for epoch in range(first_epoch, first_epoch + epochs):
        sampler.set_epoch(epoch)
        order = torch.tensor(list(sampler), device=data.train_x.device)
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            opt.zero_grad(set_to_none=True)
            loss_fn(model(data.train_x[idx]), data.train_y[idx]).backward()
            opt.step()


def wrap(model: nn.Module, device: torch.device) -> DDP:
    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)


def run(args: argparse.Namespace) -> int:
    """One rank's whole job; returns its exit status."""
    torch.set_num_threads(1)
    rank, world, device = init(args.device)
    try:
        data = DeviceData.from_dataset(load_digits(), device)
        parent = seeded(args.seed, small_cnn, 1, 10, (8, 8, 16)).to(device)
        parent_opt = torch.optim.SGD(parent.parameters(), lr=args.lr, momentum=0.9)
        train_ddp(
            wrap(parent, device),
            parent_opt,
            data,
            args.epochs_parent,
            args.batch_size,
            args.seed,
            0,
        )
        parent_acc = accuracy(predict(parent, data.test_x), data.test_y)

        # The morph: once, on the unwrapped parent, same seed everywhere.
        mid, r1 = deepen(parent, "conv2", width=32, kernel_size=(3, 1), seed=args.seed)
        child, r2 = widen(mid, "conv1", 16, seed=args.seed)
        opt = remap_optimizer(
            remap_optimizer(parent_opt, parent, mid, report=r1), mid, child, report=r2
        )
        kept = check_preservation(parent, child, data.test_x, data.test_y)
        child_diff = max_rank_difference(flat(child.parameters()))
        if child_diff != 0.0:
            raise RuntimeError(
                f"the ranks built different children (max parameter difference {child_diff:.3e}); "
                "they must run the same software on the same kind of hardware"
            )

        train_ddp(
            wrap(child, device),
            opt,
            data,
            args.epochs,
            args.batch_size,
            args.seed,
            args.epochs_parent,
        )
        params = flat(child.parameters())
        param_diff = max_rank_difference(params)
        state_diff = max_rank_difference(optimizer_state(opt))
        final_acc = accuracy(predict(child, data.test_x), data.test_y)
        digest = hashlib.sha256(params.cpu().numpy().tobytes()).hexdigest()
        ok = kept.identical_predictions and param_diff == 0.0 and state_diff == 0.0
        result = {
            "world_size": world,
            "backend": dist.get_backend(),
            "seed": args.seed,
            "parent_accuracy": parent_acc,
            "after_morph": kept.as_dict(),
            "morph_rel_dev_f64": [r1.rel_dev_f64, r2.rel_dev_f64],
            "child_identical_across_ranks": child_diff == 0.0,
            "final_accuracy": final_acc,
            "params_max_rank_difference": param_diff,
            "optimizer_state_max_rank_difference": state_diff,
            "identical_across_ranks": param_diff == 0.0 and state_diff == 0.0,
            "ok": ok,
        }
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"rank{rank}.json").write_text(
            json.dumps({"rank": rank, "params_sha256": digest, "final_accuracy": final_acc})
        )
        if rank == 0:
            (out / "distributed.json").write_text(json.dumps(result, indent=2) + "\n")
            if not args.quiet:
                print(json.dumps(result, indent=2))
        return 0 if ok else 1
    finally:
        dist.destroy_process_group()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m netmorph_core.experiments.distributed",
        description="Morph once, then continue training under DDP (use with torchrun).",
    )
    p.add_argument("--epochs-parent", type=int, default=4)
    p.add_argument("--epochs", type=int, default=4, help="epochs of continued training")
    p.add_argument("--batch-size", type=int, default=32, help="per process")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--out", default="results/distributed")
    p.add_argument("--quick", action="store_true", help="one epoch each")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.epochs_parent, args.epochs = 1, 1
    for name in ("epochs_parent", "epochs", "batch_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point: parse, run this rank; a RuntimeError becomes a message and status 2."""
    args = parse_args(argv)
    try:
        return run(args)
    except RuntimeError as exc:
        print(f"netmorph distributed: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
