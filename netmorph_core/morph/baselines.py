"""The Net2Net baselines (Chen et al. 2015) that NetMorph is compared against.

- IdMorph (Net2DeeperNet): insert an identity layer before or after G. Exact for the linear part;
  the identity filter has C non-zeros out of C²·|k| (paper Fig. 3a).
- Net2WiderNet: new units copy random existing units; each copied unit's outgoing weights are
  divided by its number of copies. Copies have equal pre-activations, so the function is preserved
  for any activation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from .. import _validation as v
from .._errors import typed_errors
from .._memory import check_working_set
from ..reference import pad_centered, relative_residual_ref
from .result import MorphResult
from .width import (
    Seed,
    as_bias,
    as_generator,
    check_growth,
    gaussian,
    nonnegative_real,
    target_width,
)


def identity_filter(channels: int, kernel_size: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """δ identity (C, C, *k): 1 at the centre tap of each diagonal entry, 0 elsewhere (k odd)."""
    eye = np.zeros((channels, channels, *kernel_size), dtype=dtype)
    centre = tuple(k // 2 for k in kernel_size)
    idx = np.arange(channels)
    eye[(idx, idx, *centre)] = 1
    return eye


@typed_errors("idmorph")
def idmorph(
    g: np.ndarray,
    kernel_size: int | Sequence[int] = 1,
    *,
    position: Literal["after", "before"] = "after",
) -> MorphResult:
    """IdMorph: split G (C2, C0, *K) into G and an identity layer.

    ``position="after"``: (F1, F2) = (G, I_{C2}); ``"before"``: (F1, F2) = (I_{C0}, G), with
    I_C the δ identity of shape (C, C, *k) for an odd ``kernel_size`` k (1 at the centre tap).
    F2 ⊛ F1 = G zero-padded centred to K + k − 1. For a linear G (no spatial dimension) the
    identity is the C×C identity matrix and ``kernel_size`` must be 1.
    Filters are new arrays of G's dtype; G is not modified.
    """
    g = v.as_filter(g, "G")
    ndim = g.ndim - 2
    if ndim == 0:
        if v.positive_int(kernel_size, "kernel_size") != 1:
            raise ValueError(
                f"kernel_size must be 1 for a linear G of shape {g.shape}, got {kernel_size}"
            )
        k: tuple[int, ...] = ()
    else:
        k = v.kernel_tuple(kernel_size, ndim, "kernel_size")
    if any(n % 2 == 0 for n in k):
        raise ValueError(f"kernel_size must be odd so the identity tap is centred, got {k}")
    if position not in ("after", "before"):
        raise ValueError(f"position must be 'after' or 'before', got {position!r}")
    channels = g.shape[0] if position == "after" else g.shape[1]
    check_working_set(
        8 * (channels * channels * math.prod(k) + 2 * g.size), f"idmorph with kernel_size {k}"
    )

    if position == "after":
        filters = (g.copy(), identity_filter(g.shape[0], k, g.dtype))
    else:
        filters = (identity_filter(g.shape[1], k, g.dtype), g.copy())
    kt = tuple(a + b - 1 for a, b in zip(filters[0].shape[2:], filters[1].shape[2:], strict=True))
    residual = relative_residual_ref(pad_centered(g.astype(np.float64), kt), filters[1], filters[0])
    return MorphResult(
        filters=filters,
        residual=residual,
        iterations=0,
        exact=True,
        method="idmorph",
        kernel_sizes=tuple(tuple(f.shape[2:]) for f in filters),
    )


@dataclass(frozen=True)
class Net2NetWidthResult:
    """A pair of layers widened by Net2WiderNet.

    ``f1`` (C̃1, C0, *K1), ``b1`` (C̃1,) or None, ``f2`` (C2, C̃1, *K2). Channel j of the child blob
    copies parent channel ``mapping[j]``; ``mapping[j] = j`` for j < C1 (the parent's channels keep
    their places) and the new channels j ≥ C1 copy random parent channels.
    F2's column j is F2[:, mapping[j]] / ``counts[mapping[j]]`` (plus the noise, if any).
    ``exact`` is False when symmetry-breaking noise was added to the new outgoing weights.
    """

    f1: np.ndarray
    b1: np.ndarray | None
    f2: np.ndarray
    mapping: np.ndarray
    exact: bool

    @property
    def counts(self) -> np.ndarray:
        """counts[c]: how many child channels carry parent channel c (its replication count)."""
        return np.bincount(self.mapping)

    @property
    def new_channels(self) -> np.ndarray:
        """Boolean mask of the child channels that are new copies."""
        return np.arange(self.mapping.size) >= self.counts.size

    def widen_channels(self, values: np.ndarray) -> np.ndarray:
        """Widen a per-channel array of the blob (axis 0, length C1) by copying, like ``b1``."""
        values = np.asarray(values)
        c1 = self.counts.size
        if values.ndim < 1 or values.shape[0] != c1:
            raise ValueError(
                f"values must have {c1} entries along axis 0, got shape {values.shape}"
            )
        return values[self.mapping]


@typed_errors("net2net_widen")
def net2net_widen(
    f1: np.ndarray,
    f2: np.ndarray,
    width: int,
    *,
    b1: np.ndarray | None = None,
    noise_std: float = 0.0,
    seed: Seed = None,
) -> Net2NetWidthResult:
    """Net2WiderNet: widen the blob between F1 (C1, C0, *K1) and F2 (C2, C1, *K2) to ``width``.

    New channel j ≥ C1 copies a uniformly drawn parent channel g(j): F1's row and b1's entry.
    F2's columns become F2[:, g(j)] / |{j': g(j') = g(j)}| for every child channel j, which
    preserves the function for any activation. With ``noise_std`` > 0, Gaussian noise of that
    absolute std is added to the new channels' outgoing columns of F2 to break the symmetry
    between copies; the function is then NOT preserved (``exact`` is False).
    Outputs keep each input's dtype; the inputs are not modified.
    """
    f1 = v.as_filter(f1, "F1")
    f2 = v.as_filter(f2, "F2")
    v.same_spatial_rank(f2, "F2", f1, "F1")
    v.chain_channels(f2, "F2", f1, "F1")
    c1 = f1.shape[0]
    if b1 is not None:
        b1 = as_bias(b1, c1, "b1")
    width = target_width(width, c1)
    check_growth(f1, f2, width, f"net2net_widen to width={width}")
    noise_std = nonnegative_real(noise_std, "noise_std")
    rng = as_generator(seed)

    mapping = np.concatenate([np.arange(c1), rng.integers(0, c1, size=width - c1)])
    counts = np.bincount(mapping, minlength=c1)
    divisor = counts[mapping].astype(f2.dtype).reshape(1, -1, *(1,) * (f2.ndim - 2))
    f2_out = f2[:, mapping] / divisor
    noisy = noise_std > 0 and width > c1
    if noisy:
        extra = f2_out[:, c1:]
        f2_out[:, c1:] = extra + gaussian(rng, noise_std, extra.shape, f2.dtype, "noise_std")
    return Net2NetWidthResult(
        f1=f1[mapping],
        b1=b1[mapping] if b1 is not None else None,
        f2=f2_out,
        mapping=mapping,
        exact=not noisy,
    )
