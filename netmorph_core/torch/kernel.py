"""Kernel-size morphing of a conv layer inside a model (NetMorph §3.4.2).

The kernel is zero-padded symmetrically to K̃ and the padding grows by d·(K̃ − K)/2 per side
(:func:`netmorph_core.morph.kernel.morph_kernel`); "same" padding stays "same", which grows by
exactly that amount. The stride, dilation and padding mode are kept, so the layer stays an
nn.ConvNd with the same parameter names (except for reflect/circular padding, see
:func:`grow_kernel`). A weight-standardised conv with a gain (:mod:`.standardized`) keeps its
class: the new taps are zero in its standardised weight Ŵ (W's new taps at each filter's mean,
the gain rescaled for the variance, :func:`.standardized.regrow`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from .. import _validation as v
from ..morph.kernel import morph_kernel
from .budget import unfold_budget
from .layer_reads import handed_off
from .pipeline import Request, run
from .report import MorphReport, Outcome, ParamSource
from .samepad import split_same_padding
from .standardized import check_gain, is_weight_standardised
from .standardized import gain_index as standardised_gain_index
from .standardized import install as install_standardised
from .standardized import note as standardised_note
from .standardized import regrow as regrow_standardised
from .streamed import Region
from .support import check_new_entries
from .surgery import (
    CONV_TYPES,
    ConvGeometry,
    find_layer,
    pad_module,
    replace_module,
    to_numpy64,
    to_tensor,
)
from .weight_normed import install, is_weight_normed, regrow
from .weight_normed import note as weight_note
from .weight_normed import sources as weight_sources


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
    tol: float | str | None = "auto",
) -> tuple[nn.Module, MorphReport]:
    """Grow the kernel of the Conv1d/2d/3d layer ``at`` to ``kernel_size`` (an int or one per
    spatial dimension; K̃ − K even and ≥ 0). ``probe``/``input_shape``/``tol`` as in
    :func:`deepen`. Returns (child, report); ``model`` is unchanged.

    The layer becomes its nn.ConvNd base class (a subclass that reaches here computes the same
    function) and keeps its parameter names and, where its parent hands the unpadded layer to
    a function that pads from its kernel size (Hugging Face MobileNet), its zero padding;
    except with reflect or circular padding and a growing kernel: those modes bound the input
    size, so the layer becomes
    ``nn.Sequential(<pad p in its mode>, <conv K̃ with zero padding d·(K̃ − K)/2>)``
    (parameters ``at.1.weight``/``at.1.bias``; with p = 0 just the conv, zero-padded) and
    accepts the inputs the parent accepts. A dynamic "same" padding conv (:mod:`.samepad`)
    becomes ``nn.Sequential(DynamicSamePad(parent's K, s, d), <conv K̃, zero padding>)``.
    A grouped conv keeps its ``groups``. A weight-normed conv keeps its weight norm (same dim;
    parameters ``….parametrizations.weight.original0``/``original1``): new taps are zero in W
    (:func:`.weight_normed.regrow`). A weight-standardised conv with a gain keeps its class,
    weight and gain names (:func:`.standardized.regrow`); one without a gain is refused (the
    new taps' variance cannot be absorbed).
    """
    layer = find_layer(
        model,
        at,
        CONV_TYPES,
        same_padding=True,
        grouped=True,
        weight_norm=True,
        standardised=True,
        aliases_ok=True,
    )
    old = tuple(layer.kernel_size)
    size = v.kernel_tuple(kernel_size, len(old), "kernel_size")
    v.effective_size(old, size, (1,) * len(old), "kernel_size")
    if size != old and is_weight_standardised(layer):
        check_gain(layer, at, "new kernel taps")
    entries = layer.in_channels // layer.groups * layer.out_channels * math.prod(size)
    check_new_entries(entries, layer.weight, f"grow_kernel at={at!r} to kernel_size={size}")
    budget = unfold_budget("grow_kernel", model, at, layer, size)
    # a parent that hands the unpadded layer to a function pads from its kernel size itself
    padded_outside = not isinstance(layer.padding, str) and not any(layer.padding)
    padded_outside = padded_outside and size != old and handed_off(model, at)

    def build(child: nn.Module) -> Outcome:
        conv = child.get_submodule(at)
        same, geo = split_same_padding(conv, ConvGeometry.of(conv))
        grown = morph_kernel(to_numpy64(conv.weight), size).filter
        inner, outer = geo.split_pads(size)
        split = same is not None or any(lo or hi for lo, hi in outer)
        if same is not None:  # geo has no padding of its own: the growth only
            padding: object = tuple(lo for lo, _ in geo.grown_pads(size))
        elif split:
            padding = tuple(lo for lo, _ in outer)
        elif conv.padding == "same":
            padding = "same"
        elif padded_outside:
            padding = conv.padding
        else:
            padding = tuple(lo for lo, _ in geo.grown_pads(size))
        index = (None, None, *(_centred_index(n, k) for n, k in zip(size, old)))
        standardised = is_weight_standardised(conv)
        if standardised:  # kept, with its weight and gain regrown
            regrown = regrow_standardised(conv, to_tensor(grown, conv.weight), index)
            new = conv
            new.kernel_size, new.padding = size, padding
            new.padding_mode = "zeros" if split else conv.padding_mode
            install_standardised(new, regrown)
        else:
            base = next(c for c in CONV_TYPES if isinstance(conv, c))  # same function
            new = base(
                conv.in_channels,
                conv.out_channels,
                size,
                stride=conv.stride,
                padding=padding,
                dilation=conv.dilation,
                bias=conv.bias is not None,
                padding_mode="zeros" if split else conv.padding_mode,
                groups=conv.groups,
                device=conv.weight.device,
                dtype=conv.weight.dtype,
            )
        normed = is_weight_normed(conv)
        with torch.no_grad():
            if normed:
                kept = regrow(conv, to_tensor(grown, conv.weight), index)
                install(new, kept, conv)
            elif not standardised:
                new.weight.copy_(to_tensor(grown, conv.weight))
            if conv.bias is not None and new is not conv:
                new.bias.copy_(conv.bias)
        wrapped = same is not None or (split and any(lo or hi for lo, hi in inner))
        if wrapped:
            pad = same if same is not None else pad_module(inner, geo.padding_mode)
            replace_module(child, at, nn.Sequential(pad, new))
        else:
            replace_module(child, at, new)
        name = f"{at}.1" if wrapped else at
        if normed:
            found = weight_sources(name, at, conv, index).items()
            sources = {k: ParamSource(p, p, i) for k, (p, i) in found}
        else:
            sources = {f"{name}.weight": ParamSource(f"{at}.weight", f"{at}.weight", index)}
        if wrapped and conv.bias is not None:
            sources[f"{name}.bias"] = ParamSource(f"{at}.bias", f"{at}.bias")
        notes = [weight_note(at, conv, kept)] if normed else []
        if standardised:
            notes.append(standardised_note(at, regrown))
            if regrown.gain is not None:
                sources[f"{name}.gain"] = ParamSource(
                    f"{at}.gain", f"{at}.gain", standardised_gain_index(index)
                )
        if same is not None:
            notes.append(
                "dynamic 'same' padding kept as DynamicSamePad (the parent's rule), the growth "
                "padded with zeros after it"
            )
        elif split:
            notes.append(
                f"{geo.padding_mode} padding kept at the parent's size, the growth padded with "
                "zeros (it only meets the grown kernel's zero ring)"
            )
        elif padded_outside:
            notes.append(
                "padding kept at 0: the parent hands the layer to a function that pads its "
                "input from the layer's kernel size (TensorFlow 'same' padding), which grows "
                "with the kernel"
            )
        return Outcome(
            new_nonzero=int(torch.count_nonzero(new.weight)),
            new_total=new.weight.numel(),
            sources=sources,
            notes=notes,
        )

    return run(
        Request(
            "grow_kernel",
            model,
            (at,),
            build,
            edits=(at,),
            aliases=True,
            regions=(Region(at, at),),
            same_padding=True,
            probe=probe,
            input_shape=input_shape,
            tol=tol,
            budget=budget,
            weight_norm=True,
            standardised=True,
        )
    )
