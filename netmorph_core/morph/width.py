"""Width morphing (NetMorph §3.4.1): widen the blob between two layers, function preserved.

F1 (C1, C0, *K1) produces the blob, F2 (C2, C1, *K2) consumes it (2-D arrays are linear layers).
The blob is widened from C1 to C̃1 channels. With F̃1 = [F1; N1] and F̃2 = [F2, N2],

    F̃2 ⊛ F̃1 = F2 ⊛ F1 + N2 ⊛ N1,

so the function is preserved when N2 ⊛ N1 = 0 (paper eq. 18): one side is zero, the other random
noise on the scale of the existing weights. The widened channels are then permuted randomly,
which changes nothing downstream (paper: it keeps the zeros and the noise from clustering).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from .. import _validation as v
from .._arrays import from_torch
from .._errors import typed_errors
from .._memory import check_working_set
from .._scaling import ldexp_float, normalise, scale_back
from ..grouped import check_divisible, stack, unstack

ZeroSide = Literal["inner", "outer", "auto"]
Seed = int | np.integer | np.random.Generator | None


def as_generator(seed: object, name: str = "seed") -> np.random.Generator:
    """A NumPy Generator from ``seed``: None (fresh entropy), a non-negative int, or a Generator."""
    return v.as_generator(seed, name)


def as_bias(b: object, channels: int, name: str) -> np.ndarray:
    """``b`` as a finite float32/float64 vector of length ``channels`` (a NumPy array, or a
    torch tensor viewed as one on the host)."""
    if type(b).__module__.startswith("torch"):
        b = from_torch(b, name, host=True)
    if not isinstance(b, np.ndarray):
        raise TypeError(f"{name} must be a NumPy array or a torch tensor, got {v.type_name(b)}")
    if b.dtype not in v.SUPPORTED_DTYPES:
        raise TypeError(f"{name} must have dtype float32 or float64, got {b.dtype}")
    if b.shape != (channels,):
        raise ValueError(f"{name} must have shape ({channels},), got {b.shape}")
    if not np.isfinite(b).all():
        raise ValueError(f"{name} contains NaN or Inf")
    return b


def target_width(width: object, current: int) -> int:
    """The new channel count: a positive int no smaller than ``current``."""
    width = v.positive_int(width, "width")
    if width < current:
        raise ValueError(
            f"width must be at least the current number of channels {current}, got {width}"
        )
    return width


def noise_scale(x: np.ndarray) -> float:
    """The scale of the existing weights: their std (their RMS when all entries are equal),
    computed on x normalised by a power of two so that no square overflows or underflows."""
    x64, e = normalise(x.astype(np.float64, copy=False))
    std = float(np.std(x64))
    return ldexp_float(std if std > 0 else float(np.sqrt(np.mean(x64 * x64))), e)


def gaussian(
    rng: np.random.Generator, sigma: float, shape: tuple[int, ...], dtype: np.dtype, what: str
) -> np.ndarray:
    """Gaussian noise of std ``sigma`` in ``dtype``; ``ValueError`` naming ``what`` when it
    would overflow ``dtype`` (never inf)."""
    m, e = np.frexp(sigma)
    return scale_back(rng.standard_normal(shape) * float(m), int(e), dtype, what)


def check_growth(f1: np.ndarray, f2: np.ndarray, width: int, what: str) -> None:
    """Working set of widening F1 (C1, C0, *K1), F2 (C2, C1, *K2) to ``width`` channels."""
    per_channel = f1[0].size + f2[:, 0].size + 1
    check_working_set(3 * 8 * width * per_channel, what)


def nonnegative_real(x: object, name: str) -> float:
    """``x`` as a finite, non-negative Python float (bool, NaN and ±Inf refused)."""
    return v.real_number(x, name, low=0.0)


@dataclass(frozen=True)
class WidthResult:
    """A widened pair of layers.

    ``f1`` (C̃1, C0, *K1), ``b1`` (C̃1,) or None, ``f2`` (C2, C̃1, *K2). Let F1ext be F1 with the
    C̃1 − C1 new rows appended after the old ones (and likewise b1ext, F2ext's columns); then
    ``f1 = F1ext[permutation]``, ``b1 = b1ext[permutation]``, ``f2 = F2ext[:, permutation]``:
    channel j of the child blob is parent channel ``permutation[j]`` when that is < C1, and a new
    channel otherwise. ``new_channels`` is ``permutation >= C1``; parent channel c sits at
    ``np.argsort(permutation)[c]``. ``zero_side`` is the side that was zeroed ("inner": F1's new
    rows and b1's new entries; "outer": F2's new columns). The morph is always exact.
    """

    f1: np.ndarray
    b1: np.ndarray | None
    f2: np.ndarray
    permutation: np.ndarray
    zero_side: Literal["inner", "outer"]
    new_channels: np.ndarray

    @property
    def exact(self) -> bool:
        """Width morphing preserves the function exactly (N2 ⊛ N1 = 0 by construction)."""
        return True

    def widen_channels(self, values: np.ndarray, fill: float = 0.0) -> np.ndarray:
        """Widen a per-channel array of the blob (axis 0, length C1) the same way as ``b1``.

        The new channels get ``fill``; e.g. for a BatchNorm between F1 and F2.
        """
        values = np.asarray(values)
        c1 = int(np.count_nonzero(~self.new_channels))
        if values.ndim < 1 or values.shape[0] != c1:
            raise ValueError(
                f"values must have {c1} entries along axis 0, got shape {values.shape}"
            )
        extra = np.full((self.permutation.size - c1, *values.shape[1:]), fill, dtype=values.dtype)
        return np.concatenate([values, extra])[self.permutation]


def _resolve_side(
    zero_side: object, zero_preserving: bool, inner_params: int, outer_params: int
) -> Literal["inner", "outer"]:
    if zero_side not in ("inner", "outer", "auto"):
        raise ValueError(f"zero_side must be 'inner', 'outer' or 'auto', got {zero_side!r}")
    if zero_side == "inner" and not zero_preserving:
        raise ValueError(
            "zero_side='inner' needs zero_preserving=True: zeroed new rows of F1 only give zero "
            "channels when a zero pre-activation stays zero through bias, BN and the activation"
        )
    if zero_side == "auto":
        return "inner" if zero_preserving and inner_params < outer_params else "outer"
    return zero_side  # type: ignore[return-value]


@typed_errors("morph_width")
def morph_width(
    f1: np.ndarray,
    f2: np.ndarray,
    width: int,
    *,
    b1: np.ndarray | None = None,
    zero_side: ZeroSide = "auto",
    zero_preserving: bool = True,
    seed: Seed = None,
    scale: float | None = None,
    groups: int = 1,
) -> WidthResult:
    """Widen the blob between F1 (C1, C0, *K1) and F2 (C2, C1, *K2) to ``width`` channels.

    The new rows of F1 (and entries of ``b1``) and the new input columns of F2 satisfy
    N2 ⊛ N1 = 0: one side is zero, the other Gaussian noise with std ``scale`` (default: the
    std of the existing filter on that side; new bias entries use the std of ``b1``).
    ``zero_side``: "inner" zeros F1's new rows and b1's new entries (valid only when
    ``zero_preserving``: φ(BN(0 + 0)) = 0 for the layers between F1 and F2); "outer" zeros F2's
    new columns (exact for any activation); "auto" zeros the side with fewer parameters when
    ``zero_preserving`` (the paper's rule; ties go to "outer"), else "outer".
    The widened channels are then permuted randomly (``seed``); see :class:`WidthResult`.
    Outputs keep each input's dtype; the inputs are not modified.
    ``groups`` = g: F1 (C1, C0/g, *K1) and F2 (C2, C1/g, *K2) are grouped; every group gets
    (width − C1)/g new channels (see :func:`grouped_width`).
    """
    f1 = v.as_filter(f1, "F1")
    f2 = v.as_filter(f2, "F2")
    v.same_spatial_rank(f2, "F2", f1, "F1")
    groups = v.positive_int(groups, "groups")
    if groups == 1:
        v.chain_channels(f2, "F2", f1, "F1")
    c1 = f1.shape[0]
    if b1 is not None:
        b1 = as_bias(b1, c1, "b1")
    width = target_width(width, c1)
    check_growth(f1, f2, width, f"morph_width to width={width}")
    if not isinstance(zero_preserving, (bool, np.bool_)):
        raise TypeError(f"zero_preserving must be a bool, got {zero_preserving!r}")
    if scale is not None:
        scale = nonnegative_real(scale, "scale")
    rng = as_generator(seed)

    extra = width - c1
    per_row = int(np.prod(f1.shape[1:])) + (1 if b1 is not None else 0)
    per_col = f2.shape[0] // groups * int(np.prod(f2.shape[2:]))  # a new column per group
    side = _resolve_side(zero_side, bool(zero_preserving), extra * per_row, extra * per_col)
    if groups != 1:
        return grouped_width(f1, f2, width, groups=groups, b1=b1, side=side, seed=rng, scale=scale)

    new_rows = np.zeros((extra, *f1.shape[1:]), dtype=f1.dtype)
    new_bias = np.zeros(extra, dtype=b1.dtype) if b1 is not None else None
    new_cols = np.zeros((f2.shape[0], extra, *f2.shape[2:]), dtype=f2.dtype)
    if side == "inner":
        sigma = noise_scale(f2) if scale is None else scale
        new_cols[...] = gaussian(rng, sigma, new_cols.shape, f2.dtype, "morph_width's noise")
    else:
        sigma = noise_scale(f1) if scale is None else scale
        new_rows[...] = gaussian(rng, sigma, new_rows.shape, f1.dtype, "morph_width's noise")
        if b1 is not None:
            new_bias[...] = gaussian(rng, noise_scale(b1), (extra,), b1.dtype, "b1's noise")

    permutation = rng.permutation(width)
    f1_out = np.concatenate([f1, new_rows])[permutation]
    f2_out = np.concatenate([f2, new_cols], axis=1)[:, permutation]
    b1_out = np.concatenate([b1, new_bias])[permutation] if b1 is not None else None
    return WidthResult(
        f1=f1_out,
        b1=b1_out,
        f2=f2_out,
        permutation=permutation,
        zero_side=side,
        new_channels=permutation >= c1,
    )


def grouped_width(
    f1: np.ndarray,
    f2: np.ndarray,
    width: int,
    *,
    groups: int,
    b1: np.ndarray | None,
    side: str,
    seed: object,
    scale: float | None,
) -> WidthResult:
    """:func:`netmorph_core.morph.width.morph_width` for grouped F1 (C1, C0/g, *K1) and
    F2 (C2, C1/g, *K2): each group gets (width − C1)/g new channels, permuted within the
    group. ``permutation`` indexes F1ext (old rows, then the new rows group after group) as in
    :class:`WidthResult`; F2's new columns are appended per group and permuted the same way
    within it. ``side`` is already resolved ("inner" or "outer")."""
    c1 = f1.shape[0]
    width = target_width(width, c1)
    check_divisible(c1, groups, "F1's output channels")
    check_divisible(width, groups, "width")
    if f2.shape[1] * groups != c1:
        raise ValueError(
            f"F2 has {f2.shape[1]} input channels per group but F1 has {c1} output channels "
            f"in {groups} groups; they must match"
        )
    rng = as_generator(seed)
    c1g, wg = c1 // groups, width // groups
    extra = wg - c1g
    new_rows = np.zeros((groups, extra, *f1.shape[1:]), dtype=f1.dtype)
    new_bias = None if b1 is None else np.zeros((groups, extra), dtype=b1.dtype)
    f2g = stack(f2, groups, "F2")
    new_cols = np.zeros((groups, f2g.shape[1], extra, *f2.shape[2:]), dtype=f2.dtype)
    if side == "inner":
        new_cols[...] = rng.normal(0.0, noise_scale(f2) if scale is None else scale, new_cols.shape)
    else:
        new_rows[...] = rng.normal(0.0, noise_scale(f1) if scale is None else scale, new_rows.shape)
        if b1 is not None:
            new_bias[...] = rng.normal(0.0, noise_scale(b1), new_bias.shape)
    local = np.stack([rng.permutation(wg) for _ in range(groups)])  # (g, wg)
    group = np.arange(groups)[:, None]
    permutation = np.where(local < c1g, group * c1g + local, c1 + group * extra + local - c1g)
    permutation = permutation.reshape(-1)
    f1_out = np.concatenate([f1, new_rows.reshape(-1, *f1.shape[1:])])[permutation]
    cols = np.concatenate([f2g, new_cols], axis=2)
    f2_out = unstack(np.stack([cols[j][:, local[j]] for j in range(groups)]))
    b1_out = None
    if b1 is not None:
        b1_out = np.concatenate([b1, new_bias.reshape(-1)])[permutation]
    return WidthResult(
        f1=f1_out,
        b1=b1_out,
        f2=f2_out,
        permutation=permutation,
        zero_side=side,  # type: ignore[arg-type]
        new_channels=permutation >= c1,
    )
