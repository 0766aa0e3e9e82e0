"""What a layer's ancestors read of it in their forward, and the Sequential that replaces a
layer whose parent reads only its weight's dtype or device.

Operations that replace a layer by several (``deepen``, ``morph_subnet``, ``morph_module``,
``deepen_projection``) put an ``nn.Sequential`` in its place. An ancestor that reads an
attribute of the layer (``self.conv1.stride[0]``) would fail on it or read something else, so
such layers are refused — except for ``self.<layer>.weight.dtype`` / ``.weight.device`` and
``isinstance(self.<layer>.weight, …)``, which CLIP, SigLIP, ViT, DeiT and DINOv2 read of their
patch embedding, T5 of its feed-forward output and Mamba of its head, to cast the input:
:class:`Chain` answers those with its first layer's weight.
"""

from __future__ import annotations

import inspect
import re
from functools import lru_cache
from typing import NamedTuple

import torch
from torch import fx, nn

#: Reads of a replaced layer that :class:`Chain` answers exactly.
CHAIN_READS = frozenset({"weight.dtype", "weight.device"})


class Chain(nn.Sequential):
    """An ``nn.Sequential`` in place of one layer; ``weight`` is the weight of its first layer
    that has one, so that a parent's ``layer.weight.dtype`` / ``.device`` reads still hold (the
    layers share the parent layer's dtype and device). Not a parameter of its own: the state
    dict is the Sequential's."""

    @property
    def weight(self) -> torch.Tensor:
        for module in self:
            weight = getattr(module, "weight", None)
            if isinstance(weight, torch.Tensor):
                return weight
        raise AttributeError(f"{type(self).__name__} holds no layer with a weight")


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
        path = "".join(
            rf"(?:\.{p}|\[{p}\])" if p.isdigit() else rf"\.{re.escape(p)}" for p in rel.split(".")
        )
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


def needs_chain(model: nn.Module, at: str) -> bool:
    """Whether ancestors of ``at`` read its weight's dtype or device and nothing else."""
    reads = attribute_reads(model, at)
    return bool(reads) and all(r.chain for r in reads)


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
