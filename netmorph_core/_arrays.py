"""Array interchange for the public API: NumPy arrays, CuPy arrays and torch tensors.

torch tensors are viewed without copies: CPU tensors as NumPy arrays, CUDA tensors as CuPy
arrays through DLPack. Results go back to the caller's array type the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np

_TORCH_DTYPES = ("torch.float32", "torch.float64")


def _kind(x: object) -> str:
    module = type(x).__module__
    if module.startswith("torch"):
        return "torch"
    if module.startswith("cupy"):
        return "cupy"
    return "numpy"


def _device(x: Any, kind: str) -> tuple[str, int | None]:
    if kind == "torch":
        return ("cuda", x.device.index) if x.device.type == "cuda" else (x.device.type, None)
    if kind == "cupy":
        return ("cuda", x.device.id)
    return ("cpu", None)


def torch_layout_problem(x: Any) -> str | None:
    """Why the torch tensor ``x`` cannot be viewed as a dense array, or None when it can.

    Nested (jagged) tensors, sparse and other non-strided layouts, quantised tensors and
    tensors on the ``meta`` device (shapes without data) have no dense array view."""
    if x.is_nested:
        return "is a nested tensor (rows of different shapes); give a dense tensor"
    if str(x.layout) != "torch.strided":
        return f"has layout {x.layout}; give a dense (strided) tensor, e.g. x.to_dense()"
    if x.is_quantized:
        return f"is quantised ({x.dtype}); give a float tensor, e.g. x.dequantize()"
    if x.device.type == "meta":
        return "is on the meta device (a shape without data); give a tensor with values"
    return None


def from_torch(x: Any, name: str, *, host: bool = False) -> Any:
    """The torch tensor ``x`` as a NumPy array (CPU; every CUDA tensor when ``host``) or a
    CuPy array (CUDA), sharing memory where possible: any strides, the negative and
    conjugate bits resolved (a copy), autograd detached. ``TypeError``/``ValueError`` naming
    ``name`` for tensors without a dense float32/float64 view."""
    problem = torch_layout_problem(x)
    if problem is not None:
        raise TypeError(f"{name} {problem}")
    if str(x.dtype) not in _TORCH_DTYPES:
        raise TypeError(
            f"{name} must have dtype float32 or float64, got {x.dtype}; cast it first, "
            "e.g. x.double()"
        )
    x = x.detach()
    if x.device.type == "cuda" and host:
        x = x.cpu()
    if x.device.type == "cuda":
        import cupy

        return cupy.from_dlpack(x.resolve_neg().resolve_conj())
    if x.device.type != "cpu":
        raise ValueError(f"{name} is on device {x.device}; only CPU and CUDA tensors are supported")
    return x.resolve_neg().resolve_conj().numpy()


def unify(named: dict[str, Any]) -> tuple[dict[str, Any], Callable[[Any], Any]]:
    """Bring the arguments (None ignored) to one array module on one device.

    Returns the arguments as NumPy or CuPy arrays and a function that converts a result back to
    the type of the first argument (a torch tensor when it was one). Arrays on different
    devices raise ``ValueError`` naming them.
    """
    present = {k: x for k, x in named.items() if x is not None}
    if not present:
        raise TypeError(f"{next(iter(named))} must be an array or a tensor, got None")
    kinds = {k: _kind(x) for k, x in present.items()}
    devices = {k: _device(x, kinds[k]) for k, x in present.items()}
    first = next(iter(present))
    for k, dev in devices.items():
        if dev != devices[first]:
            raise ValueError(
                f"{first} is on {_describe(devices[first])} but {k} is on {_describe(dev)}; "
                "all arrays must be on the same device"
            )
    arrays = {k: from_torch(x, k) if kinds.get(k) == "torch" else x for k, x in named.items()}
    return arrays, _restorer(kinds[first])


def _describe(device: tuple[str, int | None]) -> str:
    kind, index = device
    return kind if index is None else f"{kind}:{index}"


def _restorer(kind: str) -> Callable[[Any], Any]:
    if kind != "torch":
        return lambda result: result

    def to_torch(result: Any) -> Any:
        import torch

        if isinstance(result, np.ndarray):
            return torch.from_numpy(np.ascontiguousarray(result))
        return torch.from_dlpack(result)

    return to_torch


def namespace(x: Any) -> ModuleType:
    """NumPy or CuPy: the array module ``x`` belongs to."""
    if _kind(x) == "cupy":
        import cupy

        return cupy
    return np


def to_host(x: Any) -> np.ndarray:
    """``x`` as a NumPy array (copied from the GPU for CuPy arrays)."""
    return x.get() if _kind(x) == "cupy" else x
