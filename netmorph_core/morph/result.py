"""Result types shared by the morphing algorithms."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def nonzero_ratio(filters: tuple[np.ndarray, ...]) -> float:
    """Fraction of the entries of ``filters`` (all together) that are non-zero."""
    total = sum(f.size for f in filters)
    return sum(int(np.count_nonzero(f)) for f in filters) / total


@dataclass(frozen=True)
class MorphResult:
    """The filters a layer G was morphed into, and how well they reproduce it.

    ``filters`` are ordered in the direction of the data flow: (F1, F2) for a depth morph,
    F_l, ..., F_{l+P} for a subnet. ``residual`` is ‖F_last ⊛ … ⊛ F_first − G~‖ / ‖G~‖.
    """

    filters: tuple[np.ndarray, ...]
    residual: float
    iterations: int
    exact: bool
    method: str
    kernel_sizes: tuple[tuple[int, ...], ...] = field(default=())

    @property
    def nonzero_ratio(self) -> float:
        """Non-zero entries over all entries of every new filter."""
        return nonzero_ratio(self.filters)

    @property
    def nonzero_ratios(self) -> tuple[float, ...]:
        """Non-zero ratio of each filter separately."""
        return tuple(nonzero_ratio((f,)) for f in self.filters)
