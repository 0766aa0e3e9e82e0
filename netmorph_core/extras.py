"""Optional dependencies: which extra installs each, and one line saying what to install.

The core needs NumPy and SciPy only; torch, CuPy, and the experiments' matplotlib, tqdm and
scikit-learn come with extras (``pip install "netmorph[experiments]"``); checkpoint growth
(``netmorph grow``) needs transformers and safetensors (``netmorph[hf]``).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from types import MappingProxyType

#: import name → (distribution name, the extra that installs it).
OPTIONAL = MappingProxyType(
    {
        "torch": ("torch", "torch"),
        "cupy": ("cupy", "cupy"),
        "matplotlib": ("matplotlib", "experiments"),
        "tqdm": ("tqdm", "experiments"),
        "sklearn": ("scikit-learn", "experiments"),
        "transformers": ("transformers", "hf"),
        "safetensors": ("safetensors", "hf"),
        "pytest": ("pytest", "test"),
        "pytest_benchmark": ("pytest-benchmark", "test"),
    }
)


def missing(modules: Iterable[str]) -> list[str]:
    """The names in ``modules`` (keys of :data:`OPTIONAL`) that cannot be imported."""
    absent = []
    for name in modules:
        if name not in OPTIONAL:
            raise ValueError(f"{name!r} is not an optional dependency: {', '.join(OPTIONAL)}")
        try:
            importlib.import_module(name)
        except ModuleNotFoundError:
            absent.append(name)
    return absent


def install_hint(command: str, modules: Iterable[str]) -> str:
    """``netmorph demo needs matplotlib, tqdm: pip install "netmorph[experiments]"``."""
    modules = list(modules)
    packages = ", ".join(OPTIONAL[m][0] for m in modules)
    extras = ",".join(dict.fromkeys(OPTIONAL[m][1] for m in modules))
    return f'{command} needs {packages}: pip install "netmorph[{extras}]"'


def top_module(error: ModuleNotFoundError) -> str | None:
    """The optional dependency whose absence raised ``error`` (None: not an optional one)."""
    root = (error.name or "").split(".")[0]
    return root if root in OPTIONAL else None
