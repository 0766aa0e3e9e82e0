"""Data sets for the experiments, as NumPy arrays (no torch needed).

- ``digits``: scikit-learn's bundled 8×8 handwritten digits (1797 images, no download),
  split once into a stratified train/test split that does not depend on the experiment seed.
- ``mnist``: the IDX files of LeCun et al. (``train-images-idx3-ubyte`` …, optionally ``.gz``).
- ``cifar10``: the python batches (``data_batch_1`` … ``data_batch_5``, ``test_batch``).

Images come as float32 (N, C, H, W), standardised with the training set's mean and std
(per channel for CIFAR-10); labels as int64 (N,).
"""

from __future__ import annotations

import gzip
import io
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

DIGITS_TEST_FRACTION = 0.25
DIGITS_SPLIT_SEED = 0

MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
CIFAR10_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_BATCH = "test_batch"
CIFAR10_SHAPE = (3, 32, 32)

# IDX: magic = 0x00 0x00 <type code> <number of dimensions>, then big-endian uint32 sizes.
_IDX_UBYTE = 0x08


@dataclass(frozen=True)
class Dataset:
    """A classification data set: images (N, C, H, W) float32, labels (N,) int64."""

    name: str
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    classes: int

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        c, h, w = self.train_x.shape[1:]
        return (c, h, w)

    @property
    def features(self) -> int:
        """C·H·W: the length of a flattened image."""
        return int(np.prod(self.input_shape))

    def subset(self, train: int | None, test: int | None, seed: int = 0) -> Dataset:
        """A random subset of at most ``train`` training and ``test`` test images (None: all)."""
        rng = np.random.default_rng(seed)

        def pick(x: np.ndarray, y: np.ndarray, n: int | None) -> tuple[np.ndarray, np.ndarray]:
            if n is None or n >= len(y):
                return x, y
            if n < 1:
                raise ValueError(f"subset sizes must be positive, got {n}")
            idx = np.sort(rng.choice(len(y), size=n, replace=False))
            return x[idx], y[idx]

        tx, ty = pick(self.train_x, self.train_y, train)
        vx, vy = pick(self.test_x, self.test_y, test)
        return Dataset(self.name, tx, ty, vx, vy, self.classes)


def _standardise(
    train: np.ndarray, test: np.ndarray, axes: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """(x − mean) / std with the training set's statistics over ``axes`` (float64 → float32)."""
    train64 = train.astype(np.float64)
    mean = train64.mean(axis=axes, keepdims=True)
    std = train64.std(axis=axes, keepdims=True)
    std[std == 0] = 1.0
    return (
        ((train64 - mean) / std).astype(np.float32),
        ((test.astype(np.float64) - mean) / std).astype(np.float32),
    )


def _stratified_split(
    labels: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test), each class split in the same proportion, sorted."""
    rng = np.random.default_rng(seed)
    train_idx, test_idx = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test = round(len(idx) * test_fraction)
        test_idx.append(idx[:n_test])
        train_idx.append(idx[n_test:])
    return np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(test_idx))


def load_digits() -> Dataset:
    """scikit-learn's 8×8 digits: 1347 training and 450 test images of shape (1, 8, 8)."""
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    images = bunch.images.astype(np.float64)[:, None]  # (1797, 1, 8, 8), values 0..16
    labels = bunch.target.astype(np.int64)
    tr, te = _stratified_split(labels, DIGITS_TEST_FRACTION, DIGITS_SPLIT_SEED)
    train_x, test_x = _standardise(images[tr], images[te], axes=(0, 1, 2, 3))
    return Dataset("digits", train_x, labels[tr], test_x, labels[te], classes=10)


def _open_maybe_gz(directory: Path, name: str) -> tuple[Path, bytes]:
    """The bytes of ``directory/name`` or ``directory/name.gz`` (FileNotFoundError naming both)."""
    plain = directory / name
    packed = directory / f"{name}.gz"
    if plain.is_file():
        return plain, plain.read_bytes()
    if packed.is_file():
        try:
            return packed, gzip.decompress(packed.read_bytes())
        except (OSError, EOFError) as exc:
            raise ValueError(f"{packed} is not a valid gzip file: {exc}") from exc
    raise FileNotFoundError(
        f"MNIST file {name} not found in {directory}: expected {plain} or {packed}"
    )


def parse_idx(raw: bytes, source: str | Path = "<bytes>") -> np.ndarray:
    """Decode an IDX file of unsigned bytes (type 0x08) into a uint8 array of its shape.

    Layout: 2 zero bytes, the type code, the number of dimensions n, n big-endian uint32 sizes,
    then the data in C order. ``source`` names the file in error messages.
    """
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{source} is not an IDX file: it must start with two zero bytes")
    if raw[2] != _IDX_UBYTE:
        raise ValueError(
            f"{source} has IDX type code 0x{raw[2]:02x}; expected 0x08 (unsigned bytes)"
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise ValueError(f"{source} has a truncated IDX header ({ndim} dimensions declared)")
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise ValueError(
            f"{source} declares shape {shape} ({expected} bytes of data) but holds "
            f"{len(raw) - header} bytes after the header"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _require_dir(data_dir: str | Path, what: str) -> Path:
    directory = Path(data_dir)
    if not directory.is_dir():
        raise FileNotFoundError(f"data directory {directory} does not exist (expected {what})")
    return directory


def load_mnist(data_dir: str | Path) -> Dataset:
    """MNIST from the four IDX files in ``data_dir`` (each may be gzipped): (N, 1, 28, 28)."""
    directory = _require_dir(data_dir, "the four MNIST IDX files")
    arrays = {}
    for key, name in MNIST_FILES.items():
        path, raw = _open_maybe_gz(directory, name)
        arr = parse_idx(raw, path)
        want = 3 if key.endswith("images") else 1
        if arr.ndim != want:
            raise ValueError(
                f"{path} holds an array of shape {arr.shape}; expected {want} dimension(s) "
                f"for {key.replace('_', ' ')}"
            )
        arrays[key] = arr
    for split in ("train", "test"):
        n_img, n_lab = len(arrays[f"{split}_images"]), len(arrays[f"{split}_labels"])
        if n_img != n_lab:
            raise ValueError(f"MNIST {split} set has {n_img} images but {n_lab} labels")
        if arrays[f"{split}_labels"].max(initial=0) > 9:
            raise ValueError(f"MNIST {split} labels must lie in 0..9")
    train_x, test_x = _standardise(
        arrays["train_images"][:, None] / 255.0,
        arrays["test_images"][:, None] / 255.0,
        axes=(0, 1, 2, 3),
    )
    return Dataset(
        "mnist",
        train_x,
        arrays["train_labels"].astype(np.int64),
        test_x,
        arrays["test_labels"].astype(np.int64),
        classes=10,
    )


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only what a CIFAR-10 batch holds: dicts, lists, bytes and NumPy arrays."""

    ALLOWED = frozenset(
        {
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy.core.numeric", "_frombuffer"),
            ("numpy._core.numeric", "_frombuffer"),
            ("_codecs", "encode"),
        }
    )

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if module.startswith("numpy.core.") and hasattr(np, "_core"):
            module = "numpy._core." + module.removeprefix("numpy.core.")  # NumPy 2 name
        return super().find_class(module, name)


def _cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, 32, 32) uint8 and labels (N,) int64 of one CIFAR-10 python batch."""
    if not path.is_file():
        raise FileNotFoundError(f"CIFAR-10 batch {path.name} not found: expected the file {path}")
    try:
        batch = _ArrayUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise ValueError(f"{path} is not a CIFAR-10 python batch (a pickled dict): {exc}") from exc
    if not isinstance(batch, dict):
        raise ValueError(f"{path} must hold a dict, got {type(batch).__name__}")
    batch = {k.decode() if isinstance(k, bytes) else k: val for k, val in batch.items()}
    if "data" not in batch or "labels" not in batch:
        raise ValueError(f"{path} must hold the keys 'data' and 'labels', got {sorted(batch)}")
    data = np.asarray(batch["data"])
    labels = np.asarray(batch["labels"])
    size = int(np.prod(CIFAR10_SHAPE))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != size:
        raise ValueError(
            f"{path}: 'data' must be uint8 of shape (N, {size}), got {data.dtype} {data.shape}"
        )
    if labels.shape != (len(data),) or labels.dtype.kind not in "iu":
        raise ValueError(
            f"{path}: 'labels' must hold {len(data)} integers, got {labels.dtype} {labels.shape}"
        )
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{path}: labels must lie in 0..9")
    return data.reshape(-1, *CIFAR10_SHAPE), labels.astype(np.int64)


def load_cifar10(data_dir: str | Path) -> Dataset:
    """CIFAR-10 from its python batches in ``data_dir`` or ``data_dir/cifar-10-batches-py``."""
    directory = _require_dir(data_dir, "the CIFAR-10 python batches")
    nested = directory / "cifar-10-batches-py"
    if not (directory / CIFAR10_TEST_BATCH).exists() and nested.is_dir():
        directory = nested
    parts = [_cifar_batch(directory / name) for name in CIFAR10_TRAIN_BATCHES]
    test_x, test_y = _cifar_batch(directory / CIFAR10_TEST_BATCH)
    train_x = np.concatenate([p[0] for p in parts])
    train_y = np.concatenate([p[1] for p in parts])
    train_x, test_x = _standardise(train_x / 255.0, test_x / 255.0, axes=(0, 2, 3))
    return Dataset("cifar10", train_x, train_y, test_x, test_y, classes=10)


def load_dataset(name: str, data_dir: str | Path | None = None) -> Dataset:
    """``"digits"`` (bundled), or ``"mnist"`` / ``"cifar10"`` read from ``data_dir``."""
    if name == "digits":
        return load_digits()
    loaders = {"mnist": load_mnist, "cifar10": load_cifar10}
    if name not in loaders:
        raise ValueError(f"unknown data set {name!r}; expected 'digits', 'mnist' or 'cifar10'")
    if data_dir is None:
        raise ValueError(f"data set {name!r} needs data_dir (a directory holding its files)")
    return loaders[name](data_dir)


Config = TypeVar("Config")


def experiment_dataset(
    data_dir: Path | None, real: str, quick: bool, config_for: Callable[[str, bool], Config]
) -> tuple[str, Config, Dataset]:
    """The data set an experiment runs on — the bundled digits, or ``real`` ("mnist" /
    "cifar10") read from ``data_dir`` when one is given — with its configuration and the
    training set cut to the configuration's ``train_subset`` (None: all of it)."""
    name = real if data_dir is not None else "digits"
    cfg = config_for(name, quick)
    data = load_dataset(name, data_dir)
    subset: Any = getattr(cfg, "train_subset", None)
    if subset is not None:
        data = data.subset(subset, None)
    return name, cfg, data
