"""The public growth operations, each sent to the implementation for the model's family.

A state-space (Mamba) model goes to :mod:`.ssm`; every other model to the general operation
(:func:`.moe.grow_ffn`, which sends dense models on to :func:`.transformer.grow_ffn`;
:func:`.transformer.add_heads`, :func:`.transformer.grow_width`, :func:`.transformer.add_block`;
:func:`.kernel.grow_kernel`, whose layer ``at`` goes to :func:`.ssm.grow_kernel` only where it
is a mixer's causal convolution). Each keeps the signature and documentation of the general
operation.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from torch import nn

from . import kernel, moe, ssm, transformer
from .report import MorphReport
from .ssm_layout import find_ssm, is_mixer

Op = Callable[..., tuple[nn.Module, MorphReport]]


def _routed(general: Op, mamba: Op, applies: Callable[..., bool]) -> Op:
    """``general`` with calls on which ``applies`` holds sent to ``mamba`` instead."""

    @functools.wraps(general)
    def op(model: nn.Module, *args: object, **kwargs: object) -> tuple[nn.Module, MorphReport]:
        if applies(model, *args, **kwargs):
            return mamba(model, *args, **kwargs)
        return general(model, *args, **kwargs)

    first = (mamba.__doc__ or "").strip().split("\n\n")[0]
    op.__doc__ = f"{general.__doc__}\n\n    State-space (Mamba) models: {first}"
    return op


def _is_ssm(model: object, *_: object, **__: object) -> bool:
    """Whether ``model`` holds a state-space mixer (:func:`.ssm_layout.find_ssm` then raises
    a MorphError naming any part it does not follow)."""
    return isinstance(model, nn.Module) and find_ssm(model) is not None


def _is_causal_conv(model: object, at: object = None, *_: object, **__: object) -> bool:
    """Whether ``at`` names the convolution of a state-space mixer of ``model``."""
    if not isinstance(model, nn.Module) or not isinstance(at, str) or not at.endswith(".conv1d"):
        return False
    try:
        owner = model.get_submodule(at.removesuffix(".conv1d"))
    except AttributeError:
        return False
    return is_mixer(owner)


grow_ffn = _routed(moe.grow_ffn, ssm.grow_ffn, _is_ssm)
add_heads = _routed(transformer.add_heads, ssm.add_heads, _is_ssm)
grow_width = _routed(transformer.grow_width, ssm.grow_width, _is_ssm)
add_block = _routed(transformer.add_block, ssm.add_block, _is_ssm)
grow_kernel = _routed(kernel.grow_kernel, ssm.grow_kernel, _is_causal_conv)
