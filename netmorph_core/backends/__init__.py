"""String-keyed backend registry with lazy, cached loading.

Each backend is a module exposing ``DEVICE`` ("cpu" or "cuda"), ``DTYPES`` (the NumPy dtypes
it supports), ``load()`` (raises ``ImportError``/``RuntimeError`` with the reason when the
backend cannot run here) and the kernels the shared solver (:mod:`netmorph_core.solver`) is built
on: ``compose(F2, F1)``, ``correlate_outer(F2, Y, k1)`` (Aᵀ·Y for A: X ↦ F2 ⊛ X),
``gram_outer(F2, k1)`` (AᵀA, the spatial autocorrelation of F2) and ``gram_outer_rows(F2, k1)``
(A·Aᵀ).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

import numpy as np

_MODULES = {
    "numpy": "netmorph_core.backends.numpy_backend",
    "native": "netmorph_core.backends.native",
    "numba": "netmorph_core.backends.numba_cpu",
    "cupy": "netmorph_core.backends.cupy_backend",
    "numba_cuda": "netmorph_core.backends.numba_cuda",
}
#: The order ``backend="auto"`` tries, fastest first, per device.
AUTO_ORDER = {"cpu": ("native", "numba", "numpy"), "cuda": ("cupy", "numba_cuda")}

_loaded: dict[str, ModuleType] = {}
_failures: dict[str, str] = {}


class BackendUnavailableError(ValueError):
    """A backend was requested by name but cannot run here; the message says why."""


@dataclass(frozen=True)
class BackendInfo:
    """One row of :func:`backends`: whether a backend runs here and, if not, why."""

    name: str
    available: bool
    device: str | None
    reason: str | None


def _try_load(name: str) -> ModuleType | None:
    if name in _loaded:
        return _loaded[name]
    if name in _failures:
        return None
    try:
        module = importlib.import_module(_MODULES[name])
        module.load()
    except (ImportError, RuntimeError, OSError) as exc:
        _failures[name] = f"{type(exc).__name__}: {exc}"
        return None
    _loaded[name] = module
    return module


def try_backend(name: str) -> ModuleType | None:
    """The loaded backend ``name``, or None when it cannot run here (:func:`backends` says
    why); ``name`` must be registered."""
    return _try_load(name)


def backends() -> list[BackendInfo]:
    """Every backend with whether it is available and the reason when it is not."""
    rows = []
    for name in _MODULES:
        module = _try_load(name)
        device = getattr(module, "DEVICE", None) if module else None
        rows.append(BackendInfo(name, module is not None, device, _failures.get(name)))
    return rows


def get_backend(name: str) -> ModuleType:
    """The loaded backend ``name``; ``BackendUnavailableError`` says why it cannot run."""
    if not isinstance(name, str):
        raise TypeError(f"backend must be a string, got {type(name).__name__}")
    if name not in _MODULES:
        raise ValueError(f"backend must be 'auto' or one of {sorted(_MODULES)}, got {name!r}")
    module = _try_load(name)
    if module is None:
        raise BackendUnavailableError(f"backend {name!r} is unavailable: {_failures[name]}")
    return module


def _device_of(arrays: tuple[object, ...]) -> str:
    return "cpu" if all(isinstance(a, np.ndarray) for a in arrays) else "cuda"


def select_backend(name: str, dtype: np.dtype, *arrays: object) -> ModuleType:
    """The backend for ``arrays`` of ``dtype``: ``name`` checked, or the fastest for "auto"."""
    device = _device_of(arrays)
    if name == "auto":
        for candidate in AUTO_ORDER[device]:
            module = _try_load(candidate)
            if module is not None and np.dtype(dtype) in module.DTYPES:
                return module
        raise BackendUnavailableError(f"no backend available for {device} arrays of {dtype}")
    module = get_backend(name)
    if module.DEVICE != device:
        raise ValueError(f"backend {name!r} runs on {module.DEVICE} arrays, got {device} arrays")
    if np.dtype(dtype) not in module.DTYPES:
        supporting = [
            n for n in _MODULES if (m := _try_load(n)) is not None and np.dtype(dtype) in m.DTYPES
        ]
        raise TypeError(
            f"backend {name!r} does not support {dtype}; backends that do: {supporting}"
        )
    return module
