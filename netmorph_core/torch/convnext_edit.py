"""Edits of a ConvNeXt's layers through the :class:`~.transformer._Editor`: pointwise layers
(``Linear`` or 1×1 ``Conv2d``) as (out, in) matrices, and per-channel parameters (a layer
scale γ of shape (d,) or (d, 1, 1), a GRN gain of shape (1, 1, 1, m) or (m,), a depthwise
conv's (d, 1, k, k) kernels, a norm's gain and bias) along their one channel axis."""

from __future__ import annotations

import numpy as np
import torch

from .convnext_layout import as_matrix4
from .transformer import _Editor, _gather_rows

__all__ = ["channel_axis", "gather_channels", "pointwise", "put_pointwise", "tile_channels"]


def put_pointwise(
    edit: _Editor,
    name: str,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    rows: np.ndarray | None,
    cols: np.ndarray | None,
) -> None:
    """The Linear or 1×1 Conv2d ``name`` gets the (out, in) ``weight`` (and ``bias`` where it
    has one); ``rows``/``cols``: child → parent index per axis (−1 new, None unchanged)."""
    module = edit.child.get_submodule(name)
    if module.weight.dim() == 4:
        edit.put(f"{name}.weight", weight[:, :, None, None].contiguous(), (rows, cols, None, None))
    else:
        edit.put(f"{name}.weight", weight, (rows, cols))
    if bias is not None and module.bias is not None:
        edit.put(f"{name}.bias", bias, (rows,))


def pointwise(edit: _Editor, name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The (out, in) weight and the bias of the pointwise layer ``name`` (read only)."""
    module = edit.child.get_submodule(name)
    b = module.bias.detach() if module.bias is not None else None
    return as_matrix4(module).detach(), b


def channel_axis(p: torch.Tensor, channels: int) -> int:
    """The axis of a per-channel parameter that holds its ``channels``: axis 0 where it has
    that size (a depthwise kernel (d, 1, k, k), a norm's gain, γ (d, 1, 1)), else the last
    axis of that size (a GRN gain (1, 1, 1, m))."""
    if p.shape[0] == channels:
        return 0
    return max(axis for axis, size in enumerate(p.shape) if size == channels)


def gather_channels(edit: _Editor, name: str, src: np.ndarray, channels: int) -> None:
    """Parameter ``name`` of ``channels`` channels gathered along its channel axis at ``src``
    (−1: a zero entry)."""
    p = edit.child.get_parameter(name).detach()
    axis = channel_axis(p, channels)
    index: list[np.ndarray | None] = [None] * p.dim()
    index[axis] = src
    edit.put(name, _gather_rows(p, src, axis), tuple(index))


def tile_channels(edit: _Editor, name: str, channels: int, copies: int) -> None:
    """Parameter ``name`` of ``channels`` channels repeated ``copies`` times along its
    channel axis."""
    gather_channels(edit, name, np.tile(np.arange(channels), copies), channels)
