"""The public growth operations, each sent to the implementation for the model's family.

A state-space (Mamba) model goes to :mod:`.ssm`, a Swin transformer to :mod:`.swin`, a
hierarchical vision transformer (SegFormer, PVT-v2, GLPN) to :mod:`.hierarchical`, a
ConvNeXt to :mod:`.convnext`; every other
model to the general operation:
:func:`.moe.grow_ffn` (which sends dense models on through :func:`.encdec.grow_ffn`),
:func:`.encdec.add_heads`, :func:`.encdec.grow_width`, :func:`.encdec.add_block` (which send
models other than encoder–decoders on to :mod:`.transformer`),
:func:`.kernel.grow_kernel` and :func:`.width.widen` (the last two go to :mod:`.ssm` only where
the layer ``at`` is a mixer's causal convolution or one of its inner layers; ``widen`` of an
attention projection goes to :mod:`.head_dim`, and of a feed-forward input layer the graph
cannot follow to the block's ``grow_ffn``, :mod:`.ffn_widen`). Each takes the
arguments of the general operation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from types import ModuleType

import numpy as np
from torch import nn

from . import bottleneck, convnext, encdec, hierarchical, kernel, moe, ssm, swin
from . import width as general_width
from .errors import MorphError
from .ffn_widen import FeedForwardInput, feed_forward_input
from .head_dim import widen_head_dim
from .head_dim_find import attention_projection
from .report import MorphReport
from .ssm_layout import find_ssm, is_mixer


def _is_ssm(model: object) -> bool:
    """Whether ``model`` is a state-space model :mod:`.ssm` follows; a model it does not
    (a hybrid stack of state-space, attention and mixture-of-experts blocks such as Jamba,
    whose experts :func:`.moe.grow_ffn` grows) goes to the general operation, which grows it
    or refuses it by name."""
    if not isinstance(model, nn.Module):
        return False
    try:
        return find_ssm(model) is not None
    except MorphError:
        return False


def _hierarchical(model: object, stage: object) -> bool:
    """Whether ``model`` is a hierarchical vision transformer (:mod:`.hierarchical`); a
    ``stage`` given for another model is refused (ValueError)."""
    found = isinstance(model, nn.Module) and hierarchical.recognise(model) is not None
    if stage is not None and not found:
        raise ValueError(
            f"stage={stage!r}: {type(model).__name__} has no stages of their own width "
            "(SegFormer, PVT-v2, GLPN, ConvNeXt, Swin); leave stage None"
        )
    return found


def _convnext(model: object) -> bool:
    """Whether ``model`` is a ConvNeXt (:mod:`.convnext`); MorphError where its blocks look
    like ConvNeXt blocks but are not understood."""
    return isinstance(model, nn.Module) and convnext.recognise(model) is not None


def _swin(model: object) -> bool:
    """Whether ``model`` is a Swin transformer (:mod:`.swin`); MorphError where its window
    attention blocks are not understood."""
    return isinstance(model, nn.Module) and swin.recognise(model) is not None


def _staged(model: object, stage: object) -> ModuleType | None:
    """The module whose operations take ``stage`` for ``model``: :mod:`.swin` for a Swin
    transformer, :mod:`.convnext` for a ConvNeXt, :mod:`.hierarchical` for a hierarchical
    vision transformer; None otherwise."""
    if _swin(model):
        return swin
    if _convnext(model):
        return convnext
    if _hierarchical(model, stage):
        return hierarchical
    return None


def _bottleneck(model: object) -> bool:
    """Whether ``model`` is made of bottleneck blocks (MobileBERT, :mod:`.bottleneck`)."""
    return isinstance(model, nn.Module) and bottleneck.recognise(model) is not None


def _mixer_part(model: object, at: object, parts: Sequence[str]) -> bool:
    """Whether ``at`` names one of ``parts`` of a state-space mixer of ``model``."""
    if not isinstance(model, nn.Module) or not isinstance(at, str):
        return False
    owner, _, part = at.rpartition(".")
    if part not in parts:
        return False
    try:
        return is_mixer(model.get_submodule(owner))
    except AttributeError:
        return False


def grow_ffn(
    model: nn.Module,
    width: int,
    *,
    shared_width: int | None = None,
    layers: object = None,
    stage: object = None,
    method: str = "netmorph",
    probe: object = None,
    tol: float | str | None = "auto",
    seed: int | np.random.Generator | None = None,
    inplace: bool = False,
) -> tuple[nn.Module, MorphReport]:
    """The feed-forward hidden size grows to ``width``: every expert of a mixture-of-experts
    model and each shared expert to ``shared_width`` (:func:`.moe.grow_ffn`), the blocks
    ``layers`` of a dense transformer (:func:`.transformer.grow_ffn`), the Mix-FFN of the
    blocks ``layers`` or stages ``stage`` of a hierarchical vision transformer
    (:func:`.hierarchical.grow_ffn`), or the inner width of the mixers ``layers`` of a
    state-space (Mamba) model (:func:`.ssm.grow_ffn`), or the MLP of the blocks ``layers`` or
    stages ``stage`` of a ConvNeXt (:func:`.convnext.grow_ffn`), or every feed-forward of the
    blocks ``layers`` of a model of bottleneck blocks (:func:`.bottleneck.grow_ffn`)."""
    if stage is None and shared_width is None and _bottleneck(model):
        return bottleneck.grow_ffn(
            model,
            width,
            layers=layers,
            method=method,
            probe=probe,
            tol=tol,
            seed=seed,
            inplace=inplace,
        )
    staged = _staged(model, stage)
    if staged is not None:
        return staged.grow_ffn(
            model,
            width,
            shared_width=shared_width,
            layers=layers,
            stage=stage,
            method=method,
            probe=probe,
            tol=tol,
            seed=seed,
            inplace=inplace,
        )
    if not _is_ssm(model):
        return moe.grow_ffn(
            model,
            width,
            shared_width=shared_width,
            layers=layers,
            method=method,
            probe=probe,
            tol=tol,
            seed=seed,
            inplace=inplace,
        )
    if shared_width is not None:
        raise ValueError(
            f"shared_width={shared_width!r}: {type(model).__name__} is a state-space model "
            "(no shared expert); leave it None"
        )
    return ssm.grow_ffn(
        model, width, layers=layers, method=method, probe=probe, tol=tol, seed=seed, inplace=inplace
    )


def add_heads(
    model: nn.Module,
    heads: int,
    *,
    kv_heads: int | None = None,
    layers: object = None,
    stage: object = None,
    method: str = "netmorph",
    probe: object = None,
    tol: float | str | None = "auto",
    seed: int | np.random.Generator | None = None,
    inplace: bool = False,
) -> tuple[nn.Module, MorphReport]:
    """The blocks ``layers`` of a transformer get ``heads`` query heads (and ``kv_heads``
    key/value heads) of the same head_dim (:func:`.encdec.add_heads`; the blocks ``layers`` or
    stages ``stage`` of a hierarchical vision transformer: :func:`.hierarchical.add_heads`); a
    Mamba-2 model's mixers get them by whole groups; a Mamba model or a ConvNeXt has none and
    is refused by name (:func:`.ssm.add_heads`, :func:`.convnext.add_heads`); bottleneck
    blocks: :func:`.bottleneck.add_heads`."""
    if stage is None and _bottleneck(model):
        return bottleneck.add_heads(
            model,
            heads,
            kv_heads=kv_heads,
            layers=layers,
            method=method,
            probe=probe,
            tol=tol,
            seed=seed,
            inplace=inplace,
        )
    if _convnext(model):
        return convnext.add_heads(model, heads)
    staged = swin if _swin(model) else hierarchical if _hierarchical(model, stage) else None
    if staged is not None:
        return staged.add_heads(
            model,
            heads,
            kv_heads=kv_heads,
            layers=layers,
            stage=stage,
            method=method,
            probe=probe,
            tol=tol,
            seed=seed,
            inplace=inplace,
        )
    if _is_ssm(model):
        return ssm.add_heads(
            model,
            heads,
            kv_heads=kv_heads,
            layers=layers,
            method=method,
            probe=probe,
            tol=tol,
            seed=seed,
            inplace=inplace,
        )
    return encdec.add_heads(
        model,
        heads,
        kv_heads=kv_heads,
        layers=layers,
        method=method,
        probe=probe,
        tol=tol,
        seed=seed,
        inplace=inplace,
    )


def grow_width(
    model: nn.Module,
    d_model: int,
    *,
    stage: int | None = None,
    noise: float = 0.01,
    probe: object = None,
    tol: float | str | None = "auto",
    seed: int | np.random.Generator | None = None,
    inplace: bool = False,
) -> tuple[nn.Module, MorphReport]:
    """The residual stream grows from d to ``d_model`` = k·d + r: the writers write
    [x; …; x; a], the norms are rescaled, the readers read k column blocks summing to W
    (:func:`.encdec.grow_width`; a state-space model: :func:`.ssm.grow_width`; the stage
    ``stage`` of a hierarchical vision transformer, to a multiple of its width:
    :func:`.hierarchical.grow_width`; of a ConvNeXt: :func:`.convnext.grow_width`; bottleneck
    blocks are refused by name, :func:`.bottleneck.grow_width`)."""
    if stage is None and _bottleneck(model):
        return bottleneck.grow_width(model, d_model)
    staged = _staged(model, stage)
    if staged is not None:
        return staged.grow_width(
            model,
            d_model,
            stage=stage,
            noise=noise,
            probe=probe,
            tol=tol,
            seed=seed,
            inplace=inplace,
        )
    op = ssm.grow_width if _is_ssm(model) else encdec.grow_width
    return op(model, d_model, noise=noise, probe=probe, tol=tol, seed=seed, inplace=inplace)


def add_block(
    model: nn.Module,
    at: int | str,
    *,
    stage: int | None = None,
    method: str = "netmorph",
    probe: object = None,
    tol: float | str | None = "auto",
    seed: int | np.random.Generator | None = None,
    inplace: bool = False,
) -> tuple[nn.Module, MorphReport]:
    """A new block, whose branches add exactly zero, inserted before block ``at`` (``at`` =
    number of blocks: at the end) (:func:`.encdec.add_block`; a state-space model:
    :func:`.ssm.add_block`; a hierarchical vision transformer, ``at`` within the stage
    ``stage`` when given: :func:`.hierarchical.add_block`; a ConvNeXt:
    :func:`.convnext.add_block`; bottleneck blocks: :func:`.bottleneck.add_block`)."""
    if stage is None and _bottleneck(model):
        return bottleneck.add_block(
            model, at, method=method, probe=probe, tol=tol, seed=seed, inplace=inplace
        )
    staged = _staged(model, stage)
    if staged is not None:
        return staged.add_block(
            model,
            at,
            stage=stage,
            method=method,
            probe=probe,
            tol=tol,
            seed=seed,
            inplace=inplace,
        )
    op = ssm.add_block if _is_ssm(model) else encdec.add_block
    return op(model, at, method=method, probe=probe, tol=tol, seed=seed, inplace=inplace)


def grow_kernel(
    model: nn.Module,
    at: str,
    kernel_size: int | Sequence[int],
    *,
    probe: object = None,
    input_shape: Sequence[int] | None = None,
    tol: float | str | None = "auto",
) -> tuple[nn.Module, MorphReport]:
    """The kernel of the Conv1d/2d/3d layer ``at`` grows to ``kernel_size``, zero-padded
    symmetrically (:func:`.kernel.grow_kernel`); a state-space mixer's causal convolution
    grows at its past end instead (:func:`.ssm.grow_kernel`)."""
    op = ssm.grow_kernel if _mixer_part(model, at, ("conv1d",)) else kernel.grow_kernel
    return op(model, at, kernel_size, probe=probe, input_shape=input_shape, tol=tol)


def widen(
    model: nn.Module,
    at: str | Sequence[str],
    width: int,
    *,
    zero_side: str = "auto",
    seed: int | np.random.Generator | None = None,
    probe: object = None,
    input_shape: Sequence[int] | None = None,
    tol: float | str | None = "auto",
) -> tuple[nn.Module, MorphReport]:
    """The outputs of the Conv/Linear layer ``at`` widen to ``width`` channels, their
    consumers following (:func:`.width.widen`); a layer writing a state-space mixer's inner
    channels grows its block's inner width instead (:func:`.ssm.widen`), and a transformer
    block's query, key or value projection its heads' head_dim
    (:func:`.head_dim.widen_head_dim`); a transformer block's feed-forward input layer that the
    graph widen refuses grows its block's hidden size (:mod:`.ffn_widen`)."""
    if attention_projection(model, at) is not None:
        return widen_head_dim(
            model, at, width, seed=seed, probe=probe, input_shape=input_shape, tol=tol
        )
    if isinstance(at, str) and _mixer_part(model, at, tuple(ssm.INNER_WRITERS)):
        return ssm.widen(
            model,
            at,
            width,
            zero_side=zero_side,
            seed=seed,
            probe=probe,
            input_shape=input_shape,
            tol=tol,
        )
    try:
        return general_width.widen(
            model,
            at,
            width,
            zero_side=zero_side,
            seed=seed,
            probe=probe,
            input_shape=input_shape,
            tol=tol,
        )
    except MorphError as refusal:
        ffn = feed_forward_input(model, at)
        if ffn is None:
            raise
        reason = str(refusal)
    return _widen_ffn(model, ffn, width, reason, seed=seed, probe=probe, tol=tol)


def _widen_ffn(
    model: nn.Module,
    ffn: FeedForwardInput,
    width: int,
    reason: str,
    *,
    seed: int | np.random.Generator | None,
    probe: object,
    tol: float | str | None,
) -> tuple[nn.Module, MorphReport]:
    """``widen`` of the feed-forward input layer ``ffn`` that the graph widen refused (for
    ``reason``): its block's hidden size grows to ``width`` / rows per unit
    (:mod:`.ffn_widen`)."""
    if width % ffn.rows:
        raise ValueError(
            f"width={width}: {ffn.name!r} holds {ffn.rows} rows per hidden unit ([gate; up]); "
            f"widen it to a multiple of {ffn.rows}"
        )
    child, report = grow_ffn(
        model, width // ffn.rows, layers=[ffn.block], seed=seed, probe=probe, tol=tol
    )
    shared = f", run at all {ffn.depths} depths, grows once" if ffn.depths > 1 else ""
    note = (
        f"{ffn.name!r}{shared}: its block's feed-forward hidden size grows to "
        f"{width // ffn.rows} (grow_ffn of block {ffn.block}), as the exported graph does not "
        f"follow it ({reason})"
    )
    done = dataclasses.replace(report, operation="widen", targets=(ffn.name,))
    return child, dataclasses.replace(done, notes=(note, *report.notes))
