"""Kernel-size morphing of a conv layer inside a model (NetMorph §3.4.2).

The kernel is zero-padded symmetrically to K̃ and the padding grows by d·(K̃ − K)/2 per side
(:func:`netmorph_core.morph.kernel.morph_kernel`); "same" padding stays "same", which grows by
exactly that amount. The stride, dilation and padding mode are kept, so the layer stays the
same module class with the same parameter names.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from .. import _validation as v
from ..morph.kernel import morph_kernel
from .report import MorphReport, Outcome, ParamSource, run_morph
from .surgery import CONV_TYPES, ConvGeometry, find_layer, replace_module, to_numpy64, to_tensor


def _centred_index(new: int, old: int) -> np.ndarray:
    """Child tap → parent tap of a kernel grown centred from ``old`` to ``new`` (−1: new)."""
    ring = np.full((new - old) // 2, -1)
    return np.concatenate([ring, np.arange(old), ring])


def grow_kernel(
    model: nn.Module,
    at: str,
    kernel_size: int | Sequence[int],
    *,
    probe: object = None,
    input_shape: Sequence[int] | None = None,
    tol: float | None = None,
) -> tuple[nn.Module, MorphReport]:
    """Grow the kernel of the Conv1d/2d/3d layer ``at`` to ``kernel_size`` (an int or one per
    spatial dimension; K̃ − K even and ≥ 0). ``probe``/``input_shape``/``tol`` as in
    :func:`deepen`. Returns (child, report); ``model`` is unchanged."""
    layer = find_layer(model, at, CONV_TYPES, grouped=True)
    old = tuple(layer.kernel_size)
    size = v.kernel_tuple(kernel_size, len(old), "kernel_size")
    v.effective_size(old, size, (1,) * len(old), "kernel_size")

    def build(child: nn.Module) -> Outcome:
        conv = child.get_submodule(at)
        geo = ConvGeometry.of(conv)
        grown = morph_kernel(to_numpy64(conv.weight), size).filter
        padding = "same" if conv.padding == "same" else tuple(lo for lo, _ in geo.grown_pads(size))
        new = type(conv)(
            conv.in_channels,
            conv.out_channels,
            size,
            stride=conv.stride,
            padding=padding,
            dilation=conv.dilation,
            bias=conv.bias is not None,
            padding_mode=conv.padding_mode,
            groups=conv.groups,
            device=conv.weight.device,
            dtype=conv.weight.dtype,
        )
        with torch.no_grad():
            new.weight.copy_(to_tensor(grown, conv.weight))
            if conv.bias is not None:
                new.bias.copy_(conv.bias)
        replace_module(child, at, new)
        index = (None, None, *(_centred_index(n, k) for n, k in zip(size, old)))
        return Outcome(
            new_nonzero=int(torch.count_nonzero(new.weight)),
            new_total=new.weight.numel(),
            sources={f"{at}.weight": ParamSource(f"{at}.weight", f"{at}.weight", index)},
        )

    return run_morph(
        "grow_kernel", model, (at,), build, probe=probe, input_shape=input_shape, tol=tol
    )
