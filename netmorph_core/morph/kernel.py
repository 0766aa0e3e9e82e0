"""Kernel-size morphing (NetMorph §3.4.2): grow a conv kernel, function preserved.

G (C_out, C_in, *K) is zero-padded symmetrically to (C_out, C_in, *K̃). Cross-correlating with
the padded kernel over an input padded by (K̃ − K)/2 more on each side gives the same output:
the extra input ring only ever meets the zero ring of the kernel (paper Fig. 5).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .. import _validation as v
from .._errors import typed_errors
from .._memory import check_working_set
from ..grouped import check_divisible, check_groups
from ..reference import pad_centered


@dataclass(frozen=True)
class KernelResult:
    """The grown kernel and how much the layer's padding must grow.

    ``filter`` (C_out, C_in, *K̃); ``padding_increase`` (K̃ − K) / 2 per spatial dimension, in
    input samples for an undilated conv. For a conv with dilation d grow the padding by
    d · padding_increase (the kernel taps are d samples apart). Stride is unaffected.
    """

    filter: np.ndarray
    padding_increase: tuple[int, ...]


@typed_errors("morph_kernel")
def morph_kernel(
    g: np.ndarray, kernel_size: int | Sequence[int], *, groups: int = 1
) -> KernelResult:
    """Zero-pad the conv kernel G (C_out, C_in, *K), 1-3 spatial dims, centred to ``kernel_size``.

    ``kernel_size`` is an int (every dimension) or one int per spatial dimension; K̃ − K must be
    non-negative and even in each. Returns a new array of G's dtype; G is not modified.
    A grouped G (C_out, C_in/g, *K) with ``groups`` g is padded the same way (C_out divisible
    by g).
    """
    g = v.as_filter(g, "G")
    check_divisible(g.shape[0], check_groups(groups), "G's output channels")
    ndim = g.ndim - 2
    if ndim == 0:
        raise ValueError(
            f"G must be a convolution kernel with 1 to {v.MAX_SPATIAL_DIMS} spatial dimensions, "
            f"got a linear layer of shape {g.shape}"
        )
    size = v.kernel_tuple(kernel_size, ndim, "kernel_size")
    old = g.shape[2:]
    if any(n < k for n, k in zip(size, old, strict=True)):
        raise ValueError(f"kernel_size {size} must not be smaller than G's kernel {old}")
    if any((n - k) % 2 for n, k in zip(size, old, strict=True)):
        raise ValueError(
            f"kernel_size {size} minus G's kernel {old} must be even in every dimension "
            "so that the kernel grows symmetrically"
        )
    nbytes = 2 * g.shape[0] * g.shape[1] * math.prod(size) * g.dtype.itemsize
    check_working_set(nbytes, f"morph_kernel to kernel_size {size}")
    return KernelResult(
        filter=pad_centered(g, size),
        padding_increase=tuple((n - k) // 2 for n, k in zip(size, old, strict=True)),
    )
