"""Seeded training and evaluation loops (torch), with tqdm progress bars.

A run is reproducible: the weights are drawn after ``torch.manual_seed(seed)`` and every epoch's
mini-batch order comes from its own ``torch.Generator`` seeded from (seed, epoch), so the same
seed gives the same numbers on the same device and software.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .data import Dataset

EVAL_BATCH = 4096


def resolve_device(device: str) -> torch.device:
    """``"cpu"`` or ``"cuda"`` as a torch device; RuntimeError when CUDA is asked for but absent."""
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        build = torch.version.cuda or "none (a CPU-only build)"
        raise RuntimeError(
            f"device 'cuda' was requested but CUDA is not available here "
            f"(torch {torch.__version__}, CUDA runtime: {build}); use --device cpu"
        )
    if device == "cuda":
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    return torch.device(device)


@contextmanager
def exact_float32(threads: int) -> Iterator[None]:
    """Run with ``threads`` intra-op CPU threads and TF32 off, then restore both settings.

    One thread: the experiments' models are tiny, so synchronisation would dominate their
    matrix products, and the numbers are the same on every machine. TF32 off: cuDNN uses TF32
    for float32 convolutions by default, which moves a morphed child's logits by ~1e-3
    relative to its parent's — enough to flip an arg-max and hide an exact morph.
    """
    previous = (
        torch.get_num_threads(),
        torch.backends.cudnn.allow_tf32,
        torch.backends.cuda.matmul.allow_tf32,
    )
    torch.set_num_threads(threads)
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.set_num_threads(previous[0])
        torch.backends.cudnn.allow_tf32 = previous[1]
        torch.backends.cuda.matmul.allow_tf32 = previous[2]


@dataclass(frozen=True)
class DeviceData:
    """A data set's tensors on one device: images float32 (N, C, H, W), labels int64 (N,)."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor

    @classmethod
    def from_dataset(cls, data: Dataset, device: torch.device) -> DeviceData:
        return cls(
            *(
                torch.from_numpy(np.ascontiguousarray(a)).to(device)
                for a in (data.train_x, data.train_y, data.test_x, data.test_y)
            )
        )


@dataclass(frozen=True)
class TrainConfig:
    """SGD with momentum: ``epochs`` passes over the training set in mini-batches."""

    epochs: int
    lr: float
    batch_size: int = 64
    momentum: float = 0.9
    weight_decay: float = 0.0

    def optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.SGD(
            model.parameters(),
            lr=self.lr,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
        )


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's logits (N, classes) in eval mode, computed in batches of ``EVAL_BATCH``."""
    was_training = model.training
    model.eval()
    try:
        return torch.cat([model(x[i : i + EVAL_BATCH]) for i in range(0, len(x), EVAL_BATCH)])
    finally:
        model.train(was_training)


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of rows whose arg-max equals the label."""
    return float((logits.argmax(dim=1) == y).double().mean())


@dataclass(frozen=True)
class Preservation:
    """How a child's outputs compare with its parent's on the same inputs.

    ``max_abs_dev`` = max |child − parent| over every logit, ``max_rel_dev`` = that divided by
    max |parent|; ``identical_predictions``: every arg-max agrees.
    """

    parent_accuracy: float
    child_accuracy: float
    identical_predictions: bool
    max_abs_dev: float
    max_rel_dev: float

    def as_dict(self) -> dict[str, float | bool]:
        return dict(self.__dict__)


def check_preservation(
    parent: nn.Module, child: nn.Module, x: torch.Tensor, y: torch.Tensor
) -> Preservation:
    """Compare parent and child on (x, y) in eval mode."""
    p, c = predict(parent, x), predict(child, x)
    dev = float((c.double() - p.double()).abs().max())
    scale = float(p.double().abs().max())
    return Preservation(
        parent_accuracy=accuracy(p, y),
        child_accuracy=accuracy(c, y),
        identical_predictions=bool(torch.equal(p.argmax(dim=1), c.argmax(dim=1))),
        max_abs_dev=dev,
        max_rel_dev=dev / scale if scale > 0 else dev,
    )


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The permutation of the n training samples for one epoch (CPU, seeded by (seed, epoch))."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=gen)


def train(
    model: nn.Module,
    data: DeviceData,
    config: TrainConfig,
    *,
    seed: int,
    desc: str = "train",
    quiet: bool = False,
    optimizer: torch.optim.Optimizer | None = None,
    first_epoch: int = 0,
) -> list[float]:
    """Train ``model`` in place with cross-entropy; returns the test accuracy after each epoch.

    ``optimizer`` defaults to ``config.optimizer(model)``. The mini-batch order of epoch e is
    :func:`epoch_order` (seed, ``first_epoch`` + e), so a run continued from epoch E sees the
    same batches as one trained from scratch through that epoch.
    """
    opt = optimizer if optimizer is not None else config.optimizer(model)
    loss_fn = nn.CrossEntropyLoss()
    n = len(data.train_y)
    history: list[float] = []
    bar = tqdm(range(config.epochs), desc=desc, disable=quiet, leave=False, unit="epoch")
    for epoch in bar:
        model.train()
        order = epoch_order(n, seed, first_epoch + epoch).to(data.train_x.device)
        for i in range(0, n, config.batch_size):
            idx = order[i : i + config.batch_size]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(data.train_x[idx]), data.train_y[idx])
            loss.backward()
            opt.step()
        acc = accuracy(predict(model, data.test_x), data.test_y)
        history.append(acc)
        bar.set_postfix(acc=f"{acc:.4f}")
    bar.close()
    return history
