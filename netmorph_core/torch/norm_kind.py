"""Whether a norm is a LayerNorm or an RMSNorm, read from what it computes, not from its class.

A LayerNorm subtracts the mean of its last axis, n = (x − mean(x)) / √(var(x) + ε), so adding
one constant c to every coordinate leaves its output unchanged; an RMSNorm,
n = x / √(mean(x²) + ε), moves with c. Cohere's LayerNorm has no bias and Llama-style RMSNorms
have no ``bias`` attribute either, so neither the class nor the parameters decide it.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

#: The constant added to every coordinate of the probe, and the probe's tokens.
SHIFT, PROBE_ROWS = 5.0, 4


def _width(norm: nn.Module) -> int | None:
    weight = getattr(norm, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.dim() == 1:
        return int(weight.shape[0])
    shape = getattr(norm, "normalized_shape", None)
    if isinstance(shape, (tuple, list)) and len(shape) == 1:
        return int(shape[0])
    return None


def _declared_kind(norm: nn.Module) -> str:
    return "layer" if isinstance(norm, nn.LayerNorm) or hasattr(norm, "bias") else "rms"


def norm_kind(norm: nn.Module) -> str:
    """ "layer" when ``norm`` subtracts its input's mean over the last axis, else "rms".

    Decided on a float64 copy with unit gain and zero bias (the parent is not touched): its
    outputs on x (``PROBE_ROWS`` × width) and on x + ``SHIFT`` agree exactly when it centres.
    A norm on the meta device, or one without a readable width, is judged by its class (a
    ``torch.nn.LayerNorm``, or a module with a ``bias`` attribute, is a LayerNorm).
    """
    width = _width(norm)
    if width is None or any(t.is_meta for t in (*norm.parameters(), *norm.buffers())):
        return _declared_kind(norm)
    probe = copy.deepcopy(norm).to(torch.float64)
    with torch.no_grad():
        for name, value in (("weight", 1.0), ("bias", 0.0)):
            param = getattr(probe, name, None)
            if isinstance(param, torch.Tensor):
                param.fill_(value)
        x = torch.randn(
            PROBE_ROWS, width, dtype=torch.float64, generator=torch.Generator().manual_seed(0)
        )
        try:
            y, shifted = probe(x), probe(x + SHIFT)
        except Exception:  # a norm that needs other inputs: its class decides
            return _declared_kind(norm)
    if not isinstance(y, torch.Tensor) or y.shape != x.shape:
        return _declared_kind(norm)
    scale = float(y.abs().max())
    return (
        "layer"
        if scale > 0 and bool(torch.allclose(y, shifted, rtol=0.0, atol=1e-6 * scale))
        else "rms"
    )
