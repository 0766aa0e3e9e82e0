"""``grow_width`` of a stream convolution (:mod:`.speech_stream`): x ← x + gelu(conv(x)).

With the child's stream x̃ = [x; …; x] (k whole copies), the convolution of G groups over d
channels becomes one of k·G groups over k·d channels whose weight is the parent's repeated k
times along its output axis: output group c·G + j reads input channels of copy c's group j
with the parent's weights of group j, so conv(x̃) = [conv(x); …; conv(x)] exactly and every
element-wise function after it keeps the copies. A weight norm w = g·v/‖v‖
(``parametrizations.weight``, the norm over every axis but ``dim``) keeps v repeated the
same way and g repeated (dim 0) or multiplied by √k (the norm spans the copies). Extra
coordinates (d_model = k·d + r, r > 0) would need mean(gelu(conv(x))) over the channels,
which no convolution of the stream gives: refused naming the convolution.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from .errors import MorphError
from .speech_stream import holders
from .support import check_no_hooks, check_understood

#: Config fields that record a stream convolution's groups (Wav2Vec2, HuBERT, WavLM).
GROUPS_FIELDS = ("num_conv_pos_embedding_groups",)

Put = Callable[[str, torch.Tensor, tuple], None]


def _norm_dim(conv: nn.Module, name: str) -> int | None:
    """The ``dim`` of the weight norm that parametrizes ``conv.weight`` (None: the norm spans
    the whole tensor), MorphError for any other parametrization."""
    chain = conv.parametrizations["weight"]
    kinds = [type(p).__name__ for p in chain]
    dim = getattr(chain[0], "dim", "absent") if len(chain) == 1 else "absent"
    if set(conv.parametrizations) != {"weight"} or kinds != ["_WeightNorm"] or dim == "absent":
        raise MorphError(
            f"{name!r}: its parametrizations {kinds} are not one weight norm of its weight "
            "(torch.nn.utils.parametrizations.weight_norm); the stream it reads and writes "
            "cannot be widened; refused"
        )
    return None if dim is None or dim == -1 else int(dim) % 3


def check_stream_convs(model: nn.Module, names: Sequence[str], d: int, d_model: int) -> None:
    """MorphError naming the first stream convolution ``names`` (qualified) that cannot be
    widened to ``d_model``: not a whole multiple of d, not a Conv1d of d channels, another
    parametrization than a weight norm, or a hook."""
    for name in names:
        conv = model.get_submodule(name)
        if d_model % d:
            raise MorphError(
                f"d_model={d_model} is not a multiple of {d}: {name!r} reads the stream and adds "
                "gelu(conv(x)) to it, whose mean over the channels (the extra coordinates of a "
                "stream of k·d + r) no convolution gives; use a multiple of the width"
            )
        if not isinstance(conv, nn.Conv1d) or conv.in_channels != d or conv.out_channels != d:
            raise MorphError(f"{name!r} is not a Conv1d of {d} → {d} channels; refused")
        weight_norm = parametrize.is_parametrized(conv)
        if weight_norm:
            _norm_dim(conv, name)
        _holder_norms(model, names, d)
        for rel, sub in conv.named_modules():
            where = f"{name}.{rel}" if rel else name
            if not (rel.startswith("parametrizations") or (weight_norm and not rel)):
                check_understood(sub, where)
            check_no_hooks(sub, where, parametrized=weight_norm and not rel)


def _holder_norms(model: nn.Module, convs: Sequence[str], d: int) -> list[str]:
    """The LayerNorms of width d inside the module holding a stack of stream convolutions
    (:func:`.speech_stream.holders`; Data2Vec-Audio's norm after each convolution);
    MorphError naming any other module with parameters there."""
    held = holders(convs)
    if not held:
        return []
    found = []
    for rel, module in model.get_submodule(held).named_modules():
        name = f"{held}.{rel}" if rel else held
        if any(name == c or name.startswith(c + ".") for c in convs):
            continue
        if isinstance(module, nn.LayerNorm) and tuple(module.normalized_shape) == (d,):
            found.append(name)
        elif any(True for _ in module.parameters(recurse=False)):
            raise MorphError(
                f"{name!r} ({type(module).__name__}) sits between the convolutions that read "
                "the stream and is not a LayerNorm of its width: the stream cannot be widened "
                "through it; refused"
            )
    return found


def check_outside(model: nn.Module, convs: Sequence[str]) -> None:
    """No module outside the stream convolutions ``convs`` may carry a hook or be a type of
    :mod:`.wrappers` (:func:`.support.check_subtree` of the whole model but for them)."""
    for name, module in model.named_modules():
        if any(name == c or name.startswith(c + ".") for c in convs):
            continue
        check_understood(module, name)
        check_no_hooks(module, name or type(model).__name__)


def widen_stream_convs(
    child: nn.Module, names: Sequence[str], copies: int, put: Put, config: object | None
) -> None:
    """Widen the stream convolutions ``names`` (qualified) of ``child`` in place for k =
    ``copies`` copies of the stream; ``config``'s field of :data:`GROUPS_FIELDS` that holds a
    convolution's groups records the new ones."""
    if not names:
        return
    d = child.get_submodule(names[0]).out_channels
    rows = np.tile(np.arange(d), copies)
    for name in _holder_norms(child, names, d):  # LN([c; …; c]) = [LN(c); …; LN(c)]
        norm = child.get_submodule(name)
        for attr in ("weight", "bias"):
            t = getattr(norm, attr, None)
            if isinstance(t, nn.Parameter):
                put(f"{name}.{attr}", torch.cat([t.detach()] * copies), (rows,))
        norm.normalized_shape = (d * copies,)
    old = child.get_submodule(names[0]).groups
    for name in names:
        new = _widen(child, name, copies, put)
    for field in GROUPS_FIELDS:
        if config is not None and getattr(config, field, None) == old:
            setattr(config, field, new)


def _widen(child: nn.Module, name: str, copies: int, put: Put) -> int:
    """Widen the stream convolution ``name`` of ``child`` in place for k = ``copies`` copies of
    the stream (module docstring); ``put(parameter, value, index)`` stores each new parameter.
    Returns its new groups."""
    conv = child.get_submodule(name)
    d, groups = conv.out_channels, conv.groups
    rows = np.tile(np.arange(d), copies)
    if parametrize.is_parametrized(conv):
        dim = _norm_dim(conv, name)
        base = f"{name}.parametrizations.weight"
        g = child.get_parameter(f"{base}.original0").detach()
        v = child.get_parameter(f"{base}.original1").detach()
        put(f"{base}.original1", torch.cat([v] * copies), (rows, None, None))
        if dim == 0:
            put(f"{base}.original0", torch.cat([g] * copies), (rows, None, None))
        else:
            put(f"{base}.original0", g.double() * math.sqrt(copies), (None,) * g.dim())
    else:
        w = conv.weight.detach()
        put(f"{name}.weight", torch.cat([w] * copies), (rows, None, None))
    if conv.bias is not None:
        put(f"{name}.bias", torch.cat([conv.bias.detach()] * copies), (rows,))
    conv.groups = groups * copies
    conv.in_channels = conv.out_channels = d * copies
    return conv.groups
