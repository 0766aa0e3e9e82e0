"""Parts of the residual stream of speech and NaFlex vision encoders that the trace finds.

Convolutions that read the stream before the first block and add to it:

Speech encoders (Wav2Vec2, HuBERT, WavLM) add a convolutional position embedding to the
stream their feature projection writes: x ← x + gelu(conv(x)), ``conv`` a grouped Conv1d of d
channels over time (weight-normed: ``parametrizations.weight``). Such a convolution is
neither a writer (with the writers zero its bias alone moves the stream) nor a block: the
trace (:func:`stream_convs`) finds it as a Conv1d of d → d channels that runs before block 0
on a view of a writer's output; :func:`entry_norms` keeps, of the norms before block 0, those
that run after the stream's first writer (the feature projection's norm of the convolution
features is no norm of the stream).

Tables read by their weight: SigLIP-2 resizes its position embedding's weight to each image's
grid of patches without calling the embedding; :func:`weight_tables` adds such embeddings of
width d that never ran to the writers (the zero check proves them).
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
    """The names (relative to the stream's owner ``root``) among ``started`` of the Conv1d
    layers of d → d channels that read the stream, in ``calls`` (the calls before block 0,
    writer candidates named ``W:<name>``): the first whose input is a view of the output of a
    layer that writes width d before it, or that runs before any layer of ``root`` has run
    (it reads the stream entering ``root``: its writers sit in a module above); then every
    later such Conv1d before block 0 (a stack of them: Data2Vec-Audio's)."""
    found: list[str] = []
    written: set[int | None] = set()
    ran = False
    for call in calls:
        if not call.name.startswith("W:"):
            continue
        name = call.name[2:].removesuffix(":start")
        module = root.get_submodule(name) if name else root
        if call.out is not None:
            ran = ran or name != ""
            if name not in found and _writes_width(module, d):
                written.add(_storage(call.out))
            continue
        conv = isinstance(module, nn.Conv1d) and module.in_channels == module.out_channels == d
        if conv and name in started and (found or not ran or _storage(call.inp) in written):
            found.append(name)
    return tuple(dict.fromkeys(found))


def _writes_width(module: nn.Module, d: int) -> bool:
    """Whether ``module`` is a linear layer or convolution of d outputs."""
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return module.out_channels == d
    return isinstance(module, nn.Linear) and module.out_features == d


def holders(convs: Sequence[str]) -> str | None:
    """The module holding every convolution of ``convs`` and the layers between them: the
    common prefix of their parents (None for none)."""
    if not convs:
        return None
    parts = [c.split(".")[:-1] for c in convs]
    common = []
    for group in zip(*parts):
        if len(set(group)) != 1:
            break
        common.append(group[0])
    return ".".join(common)


def entry_norms(
    before: Sequence[Call], calls: Sequence[Call], writers: Sequence[str], convs: Sequence[str]
) -> list:
    """The norm calls of ``before`` (named ``O:<name>``) that run after the start of the first
    of ``writers`` that is a module call in ``calls`` (all of them where none is), outside
    the module holding the stream convolutions ``convs`` (:func:`holders`; where it is not
    the owner itself)."""
    names = {f"W:{w}:start" for w in writers}
    first = next((i for i, c in enumerate(calls) if c.name in names), 0)
    later = {id(c) for c in calls[first:]}
    held = holders(convs)
    return [
        c for c in before if id(c) in later and not (held and c.name[2:].startswith(f"{held}."))
    ]


def bias_names(root: nn.Module, convs: Sequence[str]) -> tuple[str, ...]:
    """The bias parameters of ``convs`` (names relative to ``root``): zero with the writers,
    the stream entering the blocks is zero."""
    return tuple(
        f"{c}.bias" for c in convs if getattr(root.get_submodule(c), "bias", None) is not None
    )


def weight_tables(root: nn.Module, started: Sequence[str], d: int, blocks: str) -> tuple[str, ...]:
    """The embeddings of width d of ``root`` outside ``blocks`` that are not among ``started``
    (the writer candidates that ran before block 0): a table its forward reads by weight."""
    return tuple(
        name
        for name, module in root.named_modules()
        if isinstance(module, nn.Embedding)
        and module.embedding_dim == d
        and name not in started
        and not (name == blocks or name.startswith(blocks + "."))
    )
