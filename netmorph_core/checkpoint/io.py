"""Reading a Hugging Face checkpoint lazily and writing one shard by shard.

:class:`Source`: the directory's ``config.json`` and its tensors, each read on demand with
``safetensors.safe_open`` (the file is mapped only while one tensor is copied out, so resident
memory holds the tensors in use, not the checkpoint). :class:`ShardWriter`: the safetensors
format written as a stream: every shard's header (names, dtypes, shapes, byte offsets) is
known from the plan, so each tensor goes to disk as soon as it is made and nothing larger
than one tensor is buffered. :func:`staging`: everything is written into a hidden sibling
directory that becomes DST by one rename at the end, after the index and config.json; an
interrupted run leaves no directory at DST.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch

from ..torch.hf_load import CONFIG, INDEX, SINGLE

#: safetensors dtype names.
DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
}
#: Files of a checkpoint directory that describe the weights (everything else is copied).
WEIGHT_FILES = (CONFIG, INDEX)


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be read or written as asked."""


class Source:
    """The checkpoint directory ``path``: its config values and lazily read tensors."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise FileNotFoundError(f"src={str(self.path)!r} is not a directory")
        if not (self.path / CONFIG).is_file():
            raise FileNotFoundError(f"src={str(self.path)!r} holds no {CONFIG}")
        self.config = json.loads((self.path / CONFIG).read_text())
        index = self.path / INDEX
        if index.is_file():
            self.files = {
                name: self.path / file
                for name, file in json.loads(index.read_text())["weight_map"].items()
            }
        elif (self.path / SINGLE).is_file():
            from safetensors import safe_open

            with safe_open(str(self.path / SINGLE), framework="pt") as f:
                self.files = {name: self.path / SINGLE for name in f.keys()}
        else:
            raise FileNotFoundError(
                f"src={str(self.path)!r} holds neither {INDEX} nor {SINGLE} (only safetensors "
                "checkpoints are read)"
            )
        missing = sorted({str(f) for f in self.files.values() if not f.is_file()})
        if missing:
            raise FileNotFoundError(f"src: the index names missing shard files {missing[:3]}")

    def numel(self) -> int:
        """The number of parameters the checkpoint holds (from the shard headers)."""
        from safetensors import safe_open

        total = 0
        for file in dict.fromkeys(self.files.values()):
            with safe_open(str(file), framework="pt") as f:
                for name in f.keys():
                    total += math.prod(f.get_slice(name).get_shape())
        return total

    def get(self, name: str) -> torch.Tensor:
        """The tensor ``name`` (read now; the file is unmapped again)."""
        from safetensors import safe_open

        if name not in self.files:
            raise CheckpointError(f"src: no tensor {name!r} in {self.path}")
        with safe_open(str(self.files[name]), framework="pt") as f:
            return f.get_tensor(name)

    def rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` of the tensor ``name`` (read without the rest)."""
        from safetensors import safe_open

        if name not in self.files:
            raise CheckpointError(f"src: no tensor {name!r} in {self.path}")
        with safe_open(str(self.files[name]), framework="pt") as f:
            return f.get_slice(name)[start:stop]

    def dtype(self, name: str) -> torch.dtype:
        """The dtype of the tensor ``name``."""
        from safetensors import safe_open

        if name not in self.files:
            raise CheckpointError(f"src: no tensor {name!r} in {self.path}")
        with safe_open(str(self.files[name]), framework="pt") as f:
            return _torch_dtype(f.get_slice(name).get_dtype())

    def other_files(self) -> list[Path]:
        """Files to copy as they are: tokenizer, generation config, … (not the weights)."""
        weights = {p.name for p in self.files.values()}
        return [
            p
            for p in sorted(self.path.iterdir())
            if p.is_file() and p.name not in weights and p.name not in WEIGHT_FILES
        ]


def _torch_dtype(name: str) -> torch.dtype:
    by_name = {v: k for k, v in DTYPES.items()}
    if name not in by_name:
        raise CheckpointError(f"src: tensors of dtype {name} are not supported")
    return by_name[name]


class ShardWriter:
    """Writes the tensors ``plan`` (name, shape, dtype, in order) into shard files of about
    ``shard_bytes`` each under ``directory``, as they come (:meth:`put` in plan order), and
    finally the index."""

    def __init__(
        self,
        directory: Path,
        plan: Sequence[tuple[str, tuple[int, ...], torch.dtype]],
        shard_bytes: int,
    ) -> None:
        groups: list[list[tuple[str, tuple[int, ...], torch.dtype]]] = [[]]
        size = 0
        for item in plan:
            nbytes = _nbytes(item)
            if groups[-1] and size + nbytes > shard_bytes:
                groups.append([])
                size = 0
            groups[-1].append(item)
            size += nbytes
        count = len(groups)
        self.directory = directory
        self.names = [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]
        if count == 1:
            self.names = [SINGLE]
        self.order = [item for group in groups for item in group]
        self.shard_of = {item[0]: i for i, group in enumerate(groups) for item in group}
        self.groups = groups
        self.next = 0
        self.handle = None
        self.total = sum(_nbytes(item) for item in plan)

    def _open(self, shard: int) -> None:
        if self.handle is not None:
            self.handle.close()
        header: dict[str, object] = {"__metadata__": {"format": "pt"}}
        offset = 0
        for name, shape, dtype in self.groups[shard]:
            nbytes = _nbytes((name, shape, dtype))
            header[name] = {
                "dtype": DTYPES[dtype],
                "shape": list(shape),
                "data_offsets": [offset, offset + nbytes],
            }
            offset += nbytes
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)
        self.handle = open(self.directory / self.names[shard], "wb")
        self.handle.write(len(text).to_bytes(8, "little"))
        self.handle.write(text)

    def put(self, name: str, tensor: torch.Tensor) -> None:
        """Write ``tensor`` as ``name``: the next one in the plan, of the planned shape."""
        want, shape, dtype = self.order[self.next]
        if name != want or tuple(tensor.shape) != shape or tensor.dtype != dtype:
            raise CheckpointError(
                f"dst: tensor {name!r} {tuple(tensor.shape)} {tensor.dtype} does not follow the "
                f"plan ({want!r} {shape} {dtype})"
            )
        shard = self.shard_of[name]
        if self.next == 0 or shard != self.shard_of[self.order[self.next - 1][0]]:
            self._open(shard)
        data = tensor.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy()
        self.handle.write(memoryview(data))
        self.next += 1

    def finish(self) -> dict[str, str]:
        """Close the last shard; write the index (several shards); the weight map."""
        if self.next != len(self.order):
            missing = [n for n, _, _ in self.order[self.next : self.next + 3]]
            raise CheckpointError(f"dst: tensors never written: {missing}")
        if self.handle is not None:
            self.handle.close()
        weight_map = {name: self.names[self.shard_of[name]] for name, _, _ in self.order}
        if len(self.names) > 1:
            index = {"metadata": {"total_size": self.total}, "weight_map": weight_map}
            (self.directory / INDEX).write_text(json.dumps(index, indent=2, sort_keys=True))
        return weight_map

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()


def _nbytes(item: tuple[str, tuple[int, ...], torch.dtype]) -> int:
    _, shape, dtype = item
    n = 1
    for s in shape:
        n *= s
    return n * torch.empty((), dtype=dtype).element_size()


@contextmanager
def staging(dst: str | os.PathLike) -> Iterator[Path]:
    """A fresh hidden sibling of ``dst`` to write into; renamed to ``dst`` when the block
    ends normally, deleted when it raises (an interrupt included)."""
    dst = Path(dst)
    if dst.exists():
        raise FileExistsError(f"dst={str(dst)!r} exists; give a new directory")
    if not dst.parent.is_dir():
        raise FileNotFoundError(f"dst={str(dst)!r}: its parent directory does not exist")
    tmp = dst.parent / f".{dst.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    os.replace(tmp, dst)
