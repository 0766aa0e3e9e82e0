"""Memory of measuring a child that holds more per position than its parent, checked before
the child is built: new hidden layers wider than the layer they replace, and grown kernels.

The measurement runs the child in float64 on the probe. A hidden layer of w channels between
F1 and F2 holds P·w entries per tensor, P the positions (batch × spatial) it produces — at
least those of the replaced layer's output, N·|S_out| — and the P-activation after it holds
:data:`HIDDEN_COPIES` such tensors at once (its input, φ(x), (1 − a)·φ(x), a·x and their sum).
With the new weights (the child's, plus their float64 copy) this is a lower bound of what the
measurement holds, so a refusal is never of a child that would fit.

P needs a forward pass: :func:`hidden_budget` returns a check that reads it from a copy of the
model run on the probe, only when some hidden width (times the layer's stride, for a hidden
layer at the input's resolution) exceeds the layer's output channels — otherwise every hidden
tensor is no larger than what the parent held at that layer. A widened layer's own output is
bounded the same way, one tensor of it (``widen``). :func:`unfold_budget` bounds a
grown kernel's float64 CPU convolution the same way (its unfolded input).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from .._memory import check_working_set, format_bytes

#: float64 tensors of a hidden layer's size alive at once in a P-activation's forward.
HIDDEN_COPIES = 5
_F64 = 8

Inputs = tuple[torch.Tensor, ...]


def layer_positions(
    model: nn.Module, at: str, inputs: Inputs, *, per_sample: bool = False
) -> int | None:
    """Output positions (entries / channels; of one sample when ``per_sample``: a conv's
    spatial size) of layer ``at`` on ``inputs``, the largest over its calls, from a forward
    pass of a copy of ``model`` in eval mode (the caller's RNG state restored); None when the
    model cannot be copied or run, or the layer is not called (the operation reports those
    by name)."""
    try:
        dup = copy.deepcopy(model)
    except Exception:  # e.g. an active torch.nn.utils.prune: refused by name later
        return None
    layer = dup.get_submodule(at)
    found: list[int] = []
    spatial = len(getattr(layer, "kernel_size", ()))

    def record(_module: nn.Module, _args: object, out: object) -> None:
        if isinstance(out, torch.Tensor) and out.dim() >= 1:
            if spatial and per_sample:
                found.append(math.prod(out.shape[out.dim() - spatial :]))
                return
            channels = out.shape[1] if out.dim() >= 3 else out.shape[-1]
            found.append(out.numel() // max(channels, 1))

    layer.register_forward_hook(record)
    devices = sorted({t.device for t in (*dup.parameters(), *inputs) if t.is_cuda}, key=str)
    dup.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            dup(*inputs)
    except Exception:  # the measurement reports the model's own failure by name
        return None
    return max(found) if found else None


def hidden_budget(
    operation: str,
    model: nn.Module,
    at: str,
    layer: nn.Module,
    widths: Sequence[int],
    new_entries: int,
    copies: int = HIDDEN_COPIES,
) -> Callable[[Inputs], None] | None:
    """The check of the measurement's hidden activations for replacing ``layer`` (at ``at``)
    by a chain with hidden ``widths`` and ``new_entries`` new weight entries, ``copies`` float64
    tensors of the widest alive at once; None when no hidden layer is wider than the layer's
    output (see the module docstring)."""
    out_channels = layer.weight.shape[0]
    stride = math.prod(getattr(layer, "stride", (1,)))
    widest = max(widths, default=0)
    if widest * stride <= out_channels:
        return None
    itemsize = layer.weight.element_size()

    def check(inputs: Inputs) -> None:
        positions = layer_positions(model, at, inputs)
        if positions is None:
            return
        hidden = copies * _F64 * positions * widest
        weights = new_entries * (itemsize + _F64)
        check_working_set(
            hidden + weights,
            f"{operation} at={at!r}: measuring the child holds a hidden layer of {widest} "
            f"channels at {positions} positions in float64, {copies} tensors at once "
            f"({format_bytes(hidden)}), and {new_entries} new weights "
            f"({format_bytes(weights)}); it",
        )

    return check


def unfold_budget(
    operation: str, model: nn.Module, at: str, layer: nn.Module, kernel: Sequence[int]
) -> Callable[[Inputs], None] | None:
    """The check of the float64 measurement's convolution by the grown ``kernel`` on the CPU:
    torch computes a float64 CPU convolution by unfolding its input (im2col), at least
    C_in/groups·|K| rows by the output positions of one sample. None on other devices (their
    algorithms need not unfold) or when the kernel does not grow."""
    if layer.weight.device.type != "cpu" or math.prod(kernel) <= math.prod(layer.kernel_size):
        return None
    rows = layer.in_channels // layer.groups * math.prod(kernel)

    def check(inputs: Inputs) -> None:
        positions = layer_positions(model, at, inputs, per_sample=True)
        if positions is None:
            return
        check_working_set(
            _F64 * rows * positions,
            f"{operation} at={at!r} to kernel_size={tuple(kernel)}: measuring the child "
            f"unfolds the layer's float64 input on the CPU into {rows} rows × {positions} "
            "output positions (one sample); it",
        )

    return check
