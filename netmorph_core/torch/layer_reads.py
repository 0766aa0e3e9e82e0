"""What a layer's ancestors read of it in their forward, and the Sequential that replaces a
layer whose parent reads only its weight's dtype or device.

Operations that replace a layer by several (``deepen``, ``morph_subnet``, ``morph_module``,
``deepen_projection``) put an ``nn.Sequential`` in its place. An ancestor that reads an
attribute of the layer (``self.conv1.stride[0]``) would fail on it or read something else, so
such layers are refused — except for ``self.<layer>.weight.dtype`` / ``.weight.device`` and
``isinstance(self.<layer>.weight, …)``, which CLIP, SigLIP, ViT, DeiT and DINOv2 read of their
patch embedding, T5 of its feed-forward output and Mamba of its head, to cast the input:
:class:`Chain` answers those with its first layer's weight; and ``self.<layer>.stride``, which
Whisper's encoder reads of ``conv1`` and ``conv2``: :class:`Chain` answers the product of its
convolutions' strides, checked against the replaced layer's; and ``kernel_size`` /
``dilation``, which a parent computing TensorFlow "same" padding reads (Hugging Face MobileNet
hands the conv to such a function): a chain of one convolution and 1×…×1 ones answers that
convolution's, checked likewise.
"""

from __future__ import annotations

import inspect
import math
import re
from functools import lru_cache
from typing import NamedTuple

import torch
from torch import fx, nn

#: Reads of a replaced layer that :class:`Chain` answers exactly (``stride``: checked against
#: the replaced layer's when the chain is put in place, :func:`.surgery.replace_module`).
CHAIN_READS = frozenset({"weight.dtype", "weight.device", "stride", "kernel_size", "dilation"})
#: The geometry a :class:`Chain` answers, checked against the replaced layer's.
CHAIN_GEOMETRY = ("stride", "kernel_size", "dilation")
CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


class Chain(nn.Sequential):
    """An ``nn.Sequential`` in place of one layer; ``weight`` is the weight of its first layer
    that has one, so that a parent's ``layer.weight.dtype`` / ``.device`` reads still hold (the
    layers share the parent layer's dtype and device). Not a parameter of its own: the state
    dict is the Sequential's. ``stride``: the chain's overall stride (:func:`overall_stride`;
    Whisper's encoder reads ``conv1.stride[0]`` to check its input length)."""

    @property
    def weight(self) -> torch.Tensor:
        for module in self:
            weight = getattr(module, "weight", None)
            if isinstance(weight, torch.Tensor):
                return weight
        raise AttributeError(f"{type(self).__name__} holds no layer with a weight")

    @property
    def stride(self) -> tuple[int, ...]:
        return self._geometry("stride")

    @property
    def kernel_size(self) -> tuple[int, ...]:
        return self._geometry("kernel_size")

    @property
    def dilation(self) -> tuple[int, ...]:
        return self._geometry("dilation")

    def _geometry(self, name: str) -> tuple[int, ...]:
        try:
            return chain_geometry(self, name)
        except ValueError as exc:
            raise AttributeError(str(exc)) from None


def chain_geometry(chain: nn.Sequential, name: str) -> tuple[int, ...]:
    """The ``stride`` (:func:`overall_stride`), ``kernel_size`` or ``dilation`` that ``chain``
    maps its input with: the latter two of its one convolution whose kernel is not 1×…×1 (the
    first one when every kernel is), where every other convolution is 1×…×1 of stride 1 with
    no padding, so that a parent padding its input from the layer's kernel size and stride
    (TensorFlow "same" padding, Hugging Face MobileNet) pads as for that convolution;
    ValueError naming what is not so."""
    stride = overall_stride(chain)
    if name == "stride":
        return stride
    convs = [m for m in chain if isinstance(m, CONVS)]
    spatial = [c for c in convs if any(k > 1 for k in c.kernel_size)]
    main = spatial[0] if len(spatial) == 1 else None if spatial else convs[0]
    others = [c for c in convs if c is not main]
    if main is None or any(tuple(c.stride) != (1,) * len(stride) for c in others) or any(
        not _pads_nothing(c) for c in others
    ):
        raise ValueError(
            f"the layers {[type(m).__name__ for m in chain]} of kernels "
            f"{[tuple(c.kernel_size) for c in convs]} have no one convolution's {name}"
        )
    return tuple(getattr(main, name))


def overall_stride(chain: nn.Sequential) -> tuple[int, ...]:
    """The stride of ``chain`` along each axis, the product of its convolutions' strides,
    where that is well defined (ValueError naming what is not): convolutions of one dimension
    and element-wise modules only, every convolution after the first padding nothing or keeping
    the length before its stride (2·padding = dilation·(kernel − 1)), so that the chain maps
    lengths as one convolution of that stride does."""
    convs = [m for m in chain if isinstance(m, CONVS)]
    others = [type(m).__name__ for m in chain if not isinstance(m, CONVS) and not _pointwise(m)]
    if not convs or others or len({type(c) for c in convs}) > 1:
        raise ValueError(
            f"the layers {[type(m).__name__ for m in chain]} have no overall stride "
            "(convolutions of one dimension and element-wise modules only)"
        )
    for conv in convs[1:]:
        if not (_pads_nothing(conv) or _keeps_length(conv)):
            raise ValueError(
                f"a later {type(conv).__name__} pads {conv.padding} with kernel "
                f"{conv.kernel_size}: the layers have no overall stride"
            )
    return tuple(math.prod(axis) for axis in zip(*(c.stride for c in convs)))


def _pointwise(module: nn.Module) -> bool:
    """An element-wise module: an activation, the identity (or netmorph's P-activation)."""
    return (
        isinstance(module, nn.Identity)
        or type(module).__module__ == nn.modules.activation.__name__
        or type(module).__name__ == "PActivation"
    )


def _pads_nothing(conv: nn.Module) -> bool:
    return conv.padding == "valid" or (not isinstance(conv.padding, str) and not any(conv.padding))


def _keeps_length(conv: nn.Module) -> bool:
    """Whether ``conv`` keeps its input's length along every axis before its stride."""
    if isinstance(conv.padding, str):
        return conv.padding == "same" or all(k == 1 for k in conv.kernel_size)
    return all(
        2 * p == d * (k - 1) for p, d, k in zip(conv.padding, conv.dilation, conv.kernel_size)
    )


@lru_cache(maxsize=256)
def _forward_source(cls: type) -> str | None:
    try:
        return inspect.getsource(cls.forward)
    except (OSError, TypeError):
        return None


class Read(NamedTuple):
    """One read of a layer in an ancestor's forward: ``where`` (the ancestor, described),
    ``attr`` (``rel.stride``: the path from the ancestor and the attribute) and ``chain``
    (whether :class:`Chain` answers it: ``weight.dtype``, ``weight.device``)."""

    where: str
    attr: str
    chain: bool


def _path_pattern(rel: str) -> str:
    """A regex for the attribute path ``rel`` after ``self`` (``blocks.0`` as ``.blocks[0]``
    or ``.blocks.0``)."""
    return "".join(
        rf"(?:\.{p}|\[{p}\])" if p.isdigit() else rf"\.{re.escape(p)}" for p in rel.split(".")
    )


def attribute_reads(model: nn.Module, at: str) -> list[Read]:
    """Every ``self.<path to at>.<attr>`` in the forward source of an ancestor of the submodule
    ``at`` (``self.blocks[0]`` for ``blocks.0``). An ancestor without source is not
    inspected."""
    parts = at.split(".")
    found = []
    for i in range(len(parts)):
        name, rel = ".".join(parts[:i]), ".".join(parts[i:])
        owner = model.get_submodule(name) if name else model
        source = _forward_source(type(owner))
        if source is None:
            continue
        path = _path_pattern(rel)
        cls = type(owner).__qualname__
        where = f"{name!r} ({cls})" if name else f"the model ({cls})"
        pattern = rf"(isinstance\(\s*)?self{path}\.([A-Za-z_]\w*)(\.[A-Za-z_]\w*)?"
        for read in re.finditer(pattern, source):
            attr = read.group(2)
            chain = attr + (read.group(3) or "") in CHAIN_READS or (
                read.group(1) is not None and attr == "weight" and not read.group(3)
            )
            found.append(Read(where, f"{rel}.{attr}", chain))
    return found


def handed_off(model: nn.Module, at: str) -> bool:
    """Whether an ancestor's forward passes the layer ``at`` itself to a function besides
    calling it (``apply_tf_padding(features, self.convolution)``, then
    ``self.convolution(features)``: Hugging Face MobileNet pads from the conv's kernel size,
    stride and dilation), so that the function reads its attributes. A layer the forward
    never calls itself (``checkpoint(self.conv, x)``) is handed over to be called."""
    parts = at.split(".")
    for i in range(len(parts)):
        name, rel = ".".join(parts[:i]), ".".join(parts[i:])
        owner = model.get_submodule(name) if name else model
        source = _forward_source(type(owner))
        path = _path_pattern(rel)
        if source is None or not re.search(rf"[(,]\s*self{path}\s*[,)]", source):
            continue
        if re.search(rf"self{path}\s*\(", source):
            return True
    return False


def needs_chain(model: nn.Module, at: str) -> bool:
    """Whether ancestors of ``at`` read only what a :class:`Chain` answers of it (its weight's
    dtype or device, its geometry), or hand the layer itself to a function."""
    reads = attribute_reads(model, at)
    if reads:
        return all(r.chain for r in reads)
    return handed_off(model, at)


def metadata_read(node: fx.Node) -> bool:
    """Whether a traced read (get_attr) of a parameter only asks its dtype or device (T5's
    ``hidden.to(self.wo.weight.dtype)``; an ``isinstance`` test leaves no user): a widened
    layer keeps both, and a replacing :class:`Chain` answers them."""
    return all(
        user.op == "call_function"
        and user.target is getattr
        and len(user.args) > 1
        and user.args[1] in ("dtype", "device")
        for user in node.users
    )
