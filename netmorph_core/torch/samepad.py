"""TF-style dynamic "same" padding convolutions (timm's Conv2dSame), morphed exactly.

Such a layer pads its input with zeros by P = max((⌈n/s⌉ − 1)·s + d·(K − 1) + 1 − n, 0) per
spatial dimension of size n (⌊P/2⌋ before, the rest after) and applies an unpadded conv, so
its output has ⌈n/s⌉ entries. P depends on n, so no static padding reproduces it, and a grown
kernel cannot simply be given to the same rule (the max(·, 0) clips differently). A morph keeps
the parent's rule as a :class:`DynamicSamePad` (the parent's K, s, d) in front and morphs the
unpadded conv: the growth d·(K̃ − K)/2 is static zero padding after it, exact for every n.
``widen`` keeps the layer itself: its channels grow, and P does not depend on them.

Recognised classes: timm's ``Conv2dSame`` (by module and name) and any class passed to
:func:`register_same_padding_conv`. Either way the rule is verified on the layer itself, in
float64 on inputs of every size residue modulo the stride, before a morph relies on it.
"""

from __future__ import annotations

import copy
import math
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from .errors import MorphError

KNOWN = frozenset(
    {"timm.layers.conv2d_same.Conv2dSame", "timm.models.layers.conv2d_same.Conv2dSame"}
)
_REGISTERED: set[type] = set()


def register_same_padding_conv(cls: type) -> type:
    """Declare that the nn.ConvNd subclass ``cls`` computes TF-style dynamic "same" padding
    followed by its unpadded convolution (the rule is still verified per layer). Returns
    ``cls`` (usable as a class decorator)."""
    if not (isinstance(cls, type) and issubclass(cls, (nn.Conv1d, nn.Conv2d, nn.Conv3d))):
        raise TypeError(f"cls must be an nn.Conv1d/2d/3d subclass, got {cls!r}")
    _REGISTERED.add(cls)
    return cls


def is_same_padding_conv(layer: nn.Module) -> bool:
    """Whether ``layer``'s class is a recognised dynamic "same" padding convolution."""
    cls = type(layer)
    return cls in _REGISTERED or f"{cls.__module__}.{cls.__qualname__}" in KNOWN


def same_pads(n: int, k: int, s: int, d: int) -> tuple[int, int]:
    """(before, after) zeros of the TF "same" rule for one dimension of size ``n``."""
    total = max((math.ceil(n / s) - 1) * s + d * (k - 1) + 1 - n, 0)
    return total // 2, total - total // 2


class DynamicSamePad(nn.Module):
    """Zero-pads (N, C, *spatial) by the TF "same" rule of a conv with ``kernel``, ``stride``,
    ``dilation`` (see :func:`same_pads`), per input size."""

    def __init__(
        self, kernel: tuple[int, ...], stride: tuple[int, ...], dilation: tuple[int, ...]
    ) -> None:
        super().__init__()
        self.kernel, self.stride, self.dilation = tuple(kernel), tuple(stride), tuple(dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sizes = x.shape[x.dim() - len(self.kernel) :]
        pads = [
            same_pads(n, k, s, d)
            for n, k, s, d in zip(sizes, self.kernel, self.stride, self.dilation)
        ]
        return F.pad(x, [v for lo_hi in reversed(pads) for v in lo_hi])

    def extra_repr(self) -> str:
        return f"kernel={self.kernel}, stride={self.stride}, dilation={self.dilation}"


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def verify_same_padding(layer: nn.Module, at: str) -> None:
    """Check on a float64 copy that ``layer`` computes DynamicSamePad → unpadded conv, on
    inputs of every size residue modulo its stride (and sizes below the kernel's reach)."""
    probe = copy.deepcopy(layer).to(torch.float64).eval()
    ndim = len(probe.kernel_size)
    pad = DynamicSamePad(probe.kernel_size, probe.stride, probe.dilation)
    gen = torch.Generator().manual_seed(0)
    reach = max(d * (k - 1) + 1 for k, d in zip(probe.kernel_size, probe.dilation))
    for extra in range(max(probe.stride)):
        for base in (1, reach + 1):
            shape = tuple(base + extra + i for i in range(ndim))
            x = torch.randn(2, probe.in_channels, *shape, generator=gen, dtype=torch.float64)
            with torch.no_grad():
                want = _CONV[ndim](
                    pad(x), probe.weight, probe.bias, probe.stride, 0, probe.dilation, probe.groups
                )
                try:
                    got = probe(x)
                    ok = got.shape == want.shape and torch.allclose(got, want, 1e-12, 1e-12)
                except (RuntimeError, ValueError, TypeError, IndexError) as exc:
                    ok, got = False, exc
            if not ok:
                raise MorphError(
                    f"{at!r} is {type(layer).__qualname__}, recognised as a dynamic 'same' "
                    f"padding conv, but it does not compute that rule (input {tuple(x.shape)}"
                    f"{': ' + type(got).__name__ if isinstance(got, Exception) else ''}); refused"
                )


def split_same_padding(layer: nn.Module, geo: object) -> tuple[nn.Module | None, object]:
    """(DynamicSamePad of ``layer``, its geometry without padding) for a dynamic "same"
    padding conv; (None, ``geo``) for any other layer."""
    if not is_same_padding_conv(layer):
        return None, geo
    pad = DynamicSamePad(geo.kernel, geo.stride, geo.dilation)
    return pad, replace(geo, pads=tuple((0, 0) for _ in geo.kernel), padding_mode="zeros")
