"""Convolutions that read the residual stream before the first block and add to it.

Speech encoders (Wav2Vec2, HuBERT, WavLM) add a convolutional position embedding to the
stream their feature projection writes: x ← x + gelu(conv(x)), ``conv`` a grouped Conv1d of d
channels over time (weight-normed: ``parametrizations.weight``). Such a convolution is
neither a writer (with the writers zero its bias alone moves the stream) nor a block: the
trace (:func:`stream_convs`) finds it as a Conv1d of d → d channels that runs before block 0
on a view of a writer's output; :func:`entry_norms` keeps, of the norms before block 0, those
that run after the stream's first writer (the feature projection's norm of the convolution
features is no norm of the stream).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
from torch import nn


class Call(Protocol):
    """A recorded module call (:class:`.transformer_trace._Call`)."""

    name: str
    inp: torch.Tensor | None
    out: torch.Tensor | None


def _storage(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.untyped_storage().data_ptr()


def stream_convs(
    root: nn.Module, calls: Sequence[Call], started: Sequence[str], d: int
) -> tuple[str, ...]:
    """The names (relative to the stream's owner ``root``) among ``started`` of Conv1d layers
    of d → d channels whose input, in ``calls`` (the calls before block 0, writer candidates
    named ``W:<name>``), is a view of the output of another layer of width d that ran before
    them, or that run before any such layer (they read the stream entering ``root``: its
    writers sit in a module above)."""
    found = []
    written: set[int] = set()
    for call in calls:
        if not call.name.startswith("W:"):
            continue
        name = call.name[2:].removesuffix(":start")
        module = root.get_submodule(name) if name else root
        if call.out is None and name in started:  # the call's start: its input
            conv = isinstance(module, nn.Conv1d) and module.in_channels == module.out_channels == d
            if conv and (not written or _storage(call.inp) in written):
                found.append(name)
            continue
        if call.out is not None and call.out.shape[-1] == d and name not in found:
            written.add(_storage(call.out))
    return tuple(dict.fromkeys(found))


def entry_norms(before: Sequence[Call], calls: Sequence[Call], writers: Sequence[str]) -> list:
    """The norm calls of ``before`` that run after the start of the first of ``writers`` that
    is a module call in ``calls`` (all of them where none is)."""
    names = {f"W:{w}:start" for w in writers}
    first = next((i for i, c in enumerate(calls) if c.name in names), None)
    if first is None:
        return list(before)
    later = {id(c) for c in calls[first:]}
    return [c for c in before if id(c) in later]


def bias_names(root: nn.Module, convs: Sequence[str]) -> tuple[str, ...]:
    """The bias parameters of ``convs`` (names relative to ``root``): zero with the writers,
    the stream entering the blocks is zero."""
    return tuple(
        f"{c}.bias" for c in convs if getattr(root.get_submodule(c), "bias", None) is not None
    )
