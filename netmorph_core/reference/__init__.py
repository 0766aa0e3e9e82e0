"""The NumPy reference of every numerical routine: the oracle every backend is tested against."""

from .compose import compose_ref, pad_at, pad_centered, swap_channels
from .deconv import (
    deconv_inner_ref,
    deconv_outer_ref,
    outer_operator,
    relative_residual_ref,
    solve_nearest,
)
from .grouped import compose_grouped_ref, deconv_grouped_ref
from .two_sided import deconv_two_sided_ref, two_sided_operator

__all__ = [
    "compose_grouped_ref",
    "compose_ref",
    "deconv_grouped_ref",
    "deconv_inner_ref",
    "deconv_outer_ref",
    "deconv_two_sided_ref",
    "outer_operator",
    "pad_at",
    "pad_centered",
    "relative_residual_ref",
    "solve_nearest",
    "swap_channels",
    "two_sided_operator",
]
