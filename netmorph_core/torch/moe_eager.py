"""Hugging Face experts computed with the ``"eager"`` implementation while an operation
measures: the default ``grouped_mm`` has no float64 kernel. The parent keeps its setting and
the child gets it."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TypeVar

from torch import nn

R = TypeVar("R")


def _experts_configs(model: nn.Module) -> list[object]:
    """The distinct configs whose ``_experts_implementation`` the model's experts read."""
    configs: dict[int, object] = {}
    for module in model.modules():
        config = getattr(module, "config", None)
        if hasattr(module, "_apply_gate") and hasattr(config, "_experts_implementation"):
            configs[id(config)] = config
    return list(configs.values())


@contextlib.contextmanager
def eager_experts(model: nn.Module) -> Iterator[list[tuple[object, object]]]:
    """While inside, ``model``'s Hugging Face experts compute with the ``"eager"``
    implementation (the others have no float64 kernel); restored on exit. Yields the
    (config, previous value) pairs."""
    saved = [(c, c._experts_implementation) for c in _experts_configs(model)]
    for config, _ in saved:
        config._experts_implementation_internal = "eager"
    try:
        yield saved
    finally:
        for config, value in saved:
            config._experts_implementation_internal = value


def set_implementation(model: nn.Module, value: object) -> None:
    for config in _experts_configs(model):
        config._experts_implementation_internal = value


def run_eager(
    model: nn.Module, operation: Callable[[], tuple[nn.Module, R]]
) -> tuple[nn.Module, R]:
    """``operation()`` (child, report) with ``model``'s experts eager while it runs; the child
    gets the parent's implementation (when all its experts had one)."""
    with eager_experts(model) as saved:
        child, report = operation()
    previous = {v for _, v in saved}
    if len(previous) == 1:
        set_implementation(child, previous.pop())
    return child, report
