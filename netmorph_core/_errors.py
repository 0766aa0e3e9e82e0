"""Only typed errors leave the public API: numerical failures become ``ValueError``.

A factorisation that does not converge (``LinAlgError``), a floating-point trap, an overflow
in a Python float or a failed allocation is reported as a ``ValueError`` (``ResourceLimitError``
for memory) naming the routine, never as the library's internal exception.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import numpy as np

from ._memory import ResourceLimitError

P = ParamSpec("P")
R = TypeVar("R")

#: Numerical exceptions converted to ``ValueError`` at the public boundary.
NUMERICAL = (np.linalg.LinAlgError, FloatingPointError, OverflowError, ZeroDivisionError)


def typed_errors(what: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a public routine so that only ``ValueError``/``TypeError`` escape it."""

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return fn(*args, **kwargs)
            except MemoryError as exc:
                raise ResourceLimitError(
                    f"{what} ran out of memory ({exc}); use smaller inputs or set "
                    "NETMORPH_MAX_BYTES to fail before allocating"
                ) from exc
            except NUMERICAL as exc:
                raise ValueError(
                    f"{what} failed numerically ({type(exc).__name__}: {exc}); the inputs are "
                    "too ill-conditioned for this solve"
                ) from exc

        return wrapper

    return decorate
