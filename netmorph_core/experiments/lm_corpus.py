"""A byte-level text corpus that every Python installation has: the standard library's sources.

The files are the ``*.py`` files directly under ``sysconfig.get_paths()["stdlib"]`` (no
subpackages), sorted by name. File i (0-based, in that order) is held out for validation when
i % ``VAL_EVERY`` == ``VAL_EVERY`` − 1; the others train. Each split is its files' bytes
joined by a blank line, in name order, cut at a byte budget, so the selection is a fixed
prefix of a fixed sorted list whichever Python version supplies it (the names present, and so
the text, differ between versions: the JSON records the files used and a digest).

Tokens are bytes (vocabulary 256). A training batch of step t is ``batch`` windows of
``seq_len`` + 1 bytes at random offsets drawn from a generator seeded by (seed, t); the
validation windows are fixed, evenly spaced and non-overlapping.
"""

from __future__ import annotations

import hashlib
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

VOCAB = 256
VAL_EVERY = 8
SEPARATOR = b"\n\n"


@dataclass(frozen=True)
class Corpus:
    """The two byte streams (uint8 tensors) and where they came from."""

    train: torch.Tensor
    val: torch.Tensor
    train_files: tuple[str, ...]
    val_files: tuple[str, ...]
    root: str

    def record(self) -> dict[str, object]:
        """What the results JSON says about the corpus."""
        digest = hashlib.sha256()
        for part in (self.train, self.val):
            digest.update(part.numpy().tobytes())
        return {
            "root": self.root,
            "train_bytes": int(self.train.numel()),
            "val_bytes": int(self.val.numel()),
            "train_files": list(self.train_files),
            "val_files": list(self.val_files),
            "sha256": digest.hexdigest(),
        }


def stdlib_root() -> Path:
    """The directory of the running Python's standard library."""
    return Path(sysconfig.get_paths()["stdlib"])


def split_files(names: list[str]) -> tuple[list[str], list[str]]:
    """(train, validation) file names: sorted, every ``VAL_EVERY``-th one held out."""
    ordered = sorted(names)
    val = [n for i, n in enumerate(ordered) if i % VAL_EVERY == VAL_EVERY - 1]
    train = [n for i, n in enumerate(ordered) if i % VAL_EVERY != VAL_EVERY - 1]
    return train, val


def _stream(root: Path, names: list[str], budget: int, what: str) -> tuple[torch.Tensor, list]:
    parts: list[bytes] = []
    used: list[str] = []
    size = 0
    for name in names:
        if size >= budget:
            break
        data = (root / name).read_bytes() + SEPARATOR
        parts.append(data)
        used.append(name)
        size += len(data)
    if size < budget:
        raise RuntimeError(
            f"{root} holds {size} bytes of {what} Python sources, fewer than the {budget} "
            "asked for; lower the byte budget or point root at a fuller directory"
        )
    data = b"".join(parts)[:budget]
    return torch.from_numpy(np.frombuffer(data, dtype=np.uint8).copy()), used


def load_corpus(train_bytes: int, val_bytes: int, root: Path | None = None) -> Corpus:
    """The first ``train_bytes`` / ``val_bytes`` of the train / validation files under
    ``root`` (default: the standard library)."""
    for value, name in ((train_bytes, "train_bytes"), (val_bytes, "val_bytes")):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    root = stdlib_root() if root is None else Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"corpus directory {root} does not exist")
    names = [p.name for p in root.glob("*.py") if p.is_file()]
    train_names, val_names = split_files(names)
    train, train_used = _stream(root, train_names, train_bytes, "training")
    val, val_used = _stream(root, val_names, val_bytes, "validation")
    return Corpus(train, val, tuple(train_used), tuple(val_used), str(root))


def train_batch(
    stream: torch.Tensor, seed: int, step: int, batch: int, seq_len: int
) -> torch.Tensor:
    """``batch`` windows (batch, seq_len + 1) int64 at offsets seeded by (seed, step)."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
    starts = torch.randint(0, stream.numel() - seq_len - 1, (batch,), generator=gen)
    offsets = starts[:, None] + torch.arange(seq_len + 1)
    return stream[offsets].long()


def val_windows(stream: torch.Tensor, count: int, seq_len: int) -> torch.Tensor:
    """``count`` evenly spaced, non-overlapping windows (count, seq_len + 1) int64."""
    span = seq_len + 1
    room = stream.numel() // span
    if room < count:
        raise ValueError(
            f"the validation stream ({stream.numel()} bytes) holds {room} windows of {span} "
            f"bytes, fewer than the {count} asked for"
        )
    starts = (torch.arange(count) * room // count) * span
    return stream[starts[:, None] + torch.arange(span)].long()
