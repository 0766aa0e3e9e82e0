"""Data loaders: the bundled digits, MNIST IDX files and CIFAR-10 python batches.

The MNIST and CIFAR-10 tests write tiny files in those formats and read them back.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from netmorph_core.experiments import data as D


def idx_bytes(arr: np.ndarray) -> bytes:
    """An IDX file of unsigned bytes holding ``arr``."""
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def write_mnist(directory: Path, rng: np.random.Generator, *, gz: bool = False) -> dict:
    arrays = {
        "train_images": rng.integers(0, 256, (7, 5, 4), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, 7, dtype=np.uint8),
        "test_images": rng.integers(0, 256, (3, 5, 4), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, 3, dtype=np.uint8),
    }
    directory.mkdir(parents=True, exist_ok=True)
    for key, name in D.MNIST_FILES.items():
        raw = idx_bytes(arrays[key])
        if gz:
            (directory / f"{name}.gz").write_bytes(gzip.compress(raw))
        else:
            (directory / name).write_bytes(raw)
    return arrays


def write_cifar(directory: Path, rng: np.random.Generator, per_batch: int = 4) -> dict:
    directory.mkdir(parents=True, exist_ok=True)
    batches = {}
    for name in (*D.CIFAR10_TRAIN_BATCHES, D.CIFAR10_TEST_BATCH):
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, per_batch).tolist()
        (directory / name).write_bytes(pickle.dumps({b"data": data, b"labels": labels}))
        batches[name] = (data, labels)
    return batches


def standardised(x: np.ndarray, train: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    mean = train.mean(axis=axes, keepdims=True)
    std = train.std(axis=axes, keepdims=True)
    return (x - mean) / std


# --- digits ---------------------------------------------------------------------------------


def test_digits_shapes_split_and_standardisation() -> None:
    ds = D.load_digits()
    assert ds.train_x.shape == (1347, 1, 8, 8) and ds.test_x.shape == (450, 1, 8, 8)
    assert ds.train_x.dtype == np.float32 and ds.train_y.dtype == np.int64
    assert ds.input_shape == (1, 8, 8) and ds.features == 64 and ds.classes == 10
    assert abs(float(ds.train_x.mean())) < 1e-5
    assert abs(float(ds.train_x.std()) - 1.0) < 1e-5
    # Stratified: every class is split 3:1 up to rounding.
    for c in range(10):
        n_train, n_test = np.sum(ds.train_y == c), np.sum(ds.test_y == c)
        assert abs(n_test - 0.25 * (n_train + n_test)) <= 0.5


def test_digits_is_deterministic() -> None:
    a, b = D.load_digits(), D.load_digits()
    np.testing.assert_array_equal(a.train_x, b.train_x)
    np.testing.assert_array_equal(a.test_y, b.test_y)


def test_subset_sizes_and_validation() -> None:
    ds = D.load_digits()
    sub = ds.subset(100, 50, seed=3)
    assert sub.train_x.shape == (100, 1, 8, 8) and sub.test_y.shape == (50,)
    np.testing.assert_array_equal(sub.train_x, ds.subset(100, 50, seed=3).train_x)
    assert ds.subset(None, None) is not ds and ds.subset(None, None).train_x is ds.train_x
    with pytest.raises(ValueError, match="positive"):
        ds.subset(0, 10)


# --- MNIST IDX ------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_round_trip(tmp_path: Path, gz: bool) -> None:
    arrays = write_mnist(tmp_path, np.random.default_rng(0), gz=gz)
    ds = D.load_mnist(tmp_path)
    assert ds.name == "mnist"
    assert ds.train_x.shape == (7, 1, 5, 4) and ds.test_x.shape == (3, 1, 5, 4)
    np.testing.assert_array_equal(ds.train_y, arrays["train_labels"])
    np.testing.assert_array_equal(ds.test_y, arrays["test_labels"])
    train = arrays["train_images"][:, None] / 255.0
    expected = standardised(arrays["test_images"][:, None] / 255.0, train, (0, 1, 2, 3))
    np.testing.assert_allclose(ds.test_x, expected, rtol=1e-5, atol=1e-5)


def test_parse_idx_reads_shape_and_values() -> None:
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    np.testing.assert_array_equal(D.parse_idx(idx_bytes(arr)), arr)


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (b"\x01\x00\x08\x01\x00\x00\x00\x01\x05", "two zero bytes"),
        (b"\x00\x00\x0d\x01\x00\x00\x00\x01\x05", "type code 0x0d"),
        (b"\x00\x00\x08\x02\x00\x00\x00\x01", "truncated"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x03\x05", "declares shape"),
    ],
)
def test_parse_idx_rejects_malformed(raw: bytes, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        D.parse_idx(raw, "f.idx")


def test_mnist_missing_directory_and_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        D.load_mnist(tmp_path / "nowhere")
    write_mnist(tmp_path, np.random.default_rng(1))
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        D.load_mnist(tmp_path)


def test_mnist_malformed_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    write_mnist(tmp_path, rng)
    # Labels of the wrong length.
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(5, np.uint8)))
    with pytest.raises(ValueError, match="7 images but 5 labels"):
        D.load_mnist(tmp_path)
    # Images stored with the wrong number of dimensions.
    write_mnist(tmp_path, rng)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros((7, 20), np.uint8)))
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte.*expected 3"):
        D.load_mnist(tmp_path)
    # A corrupt gzip file.
    (tmp_path / "train-images-idx3-ubyte").unlink()
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="not a valid gzip"):
        D.load_mnist(tmp_path)


# --- CIFAR-10 python batches ----------------------------------------------------------------


@pytest.mark.parametrize("nested", [False, True])
def test_cifar10_round_trip(tmp_path: Path, nested: bool) -> None:
    where = tmp_path / "cifar-10-batches-py" if nested else tmp_path
    batches = write_cifar(where, np.random.default_rng(3))
    ds = D.load_cifar10(tmp_path)
    assert ds.train_x.shape == (20, 3, 32, 32) and ds.test_x.shape == (4, 3, 32, 32)
    assert ds.train_x.dtype == np.float32 and ds.train_y.dtype == np.int64
    train_raw = np.concatenate([batches[n][0] for n in D.CIFAR10_TRAIN_BATCHES])
    train_raw = train_raw.reshape(-1, 3, 32, 32) / 255.0
    np.testing.assert_array_equal(
        ds.train_y, np.concatenate([batches[n][1] for n in D.CIFAR10_TRAIN_BATCHES])
    )
    test_raw = batches["test_batch"][0].reshape(-1, 3, 32, 32) / 255.0
    np.testing.assert_allclose(
        ds.test_x, standardised(test_raw, train_raw, (0, 2, 3)), rtol=1e-5, atol=1e-5
    )
    # Per-channel standardisation of the training set.
    np.testing.assert_allclose(ds.train_x.mean(axis=(0, 2, 3)), 0.0, atol=1e-5)
    np.testing.assert_allclose(ds.train_x.std(axis=(0, 2, 3)), 1.0, atol=1e-5)


def test_cifar10_missing_batch(tmp_path: Path) -> None:
    write_cifar(tmp_path, np.random.default_rng(4))
    (tmp_path / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        D.load_cifar10(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        D.load_cifar10(tmp_path / "missing")


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, r"uint8 of shape \(N, 3072\)"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "'labels' must hold 2"),
        ({b"data": np.zeros((1, 3072), np.uint8), b"labels": [12]}, "0..9"),
        ({b"pixels": np.zeros((1, 3072), np.uint8)}, "'data' and 'labels'"),
        ([1, 2, 3], "must hold a dict"),
    ],
)
def test_cifar10_malformed_batch(tmp_path: Path, content: object, match: str) -> None:
    write_cifar(tmp_path, np.random.default_rng(5))
    (tmp_path / "data_batch_2").write_bytes(pickle.dumps(content))
    with pytest.raises(ValueError, match=match):
        D.load_cifar10(tmp_path)


class _Payload:
    """Unpickling this would call a function: the loader must refuse it."""

    def __reduce__(self) -> tuple:
        return (print, ("executed",))


def test_cifar10_refuses_arbitrary_objects(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_cifar(tmp_path, np.random.default_rng(6))
    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": _Payload(), b"labels": []}))
    with pytest.raises(ValueError, match=r"test_batch.*refusing to load builtins\.print"):
        D.load_cifar10(tmp_path)
    assert "executed" not in capsys.readouterr().out
    (tmp_path / "test_batch").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a CIFAR-10 python batch"):
        D.load_cifar10(tmp_path)


def test_load_dataset_dispatch_and_errors(tmp_path: Path) -> None:
    assert D.load_dataset("digits").name == "digits"
    write_mnist(tmp_path, np.random.default_rng(7))
    assert D.load_dataset("mnist", tmp_path).name == "mnist"
    with pytest.raises(ValueError, match="unknown data set 'svhn'"):
        D.load_dataset("svhn")
    with pytest.raises(ValueError, match="needs data_dir"):
        D.load_dataset("cifar10")
