"""``grow_width`` of a model that returns its residual stream (a base model's
``last_hidden_state``, a backbone's features): the child returns the wider stream.

A child of width D' = k·d + r cannot return the parent's (…, d) stream; it returns
ỹ = [y; …; y; 0] (k copies of the parent's y, then r zeros: the final norm's output under the
construction of :func:`.transformer.grow_width`, or whole copies). The parent's output stays
recoverable as ỹ[..., :d]. A pooled output of width d grows the same way where its head grows
with the stream (SigLIP's attention pooling: [o; …; o], :mod:`.attention_pool`); every other
output (BERT's pooler, a projection) keeps its shape.

:func:`stream_view` is what the pipeline measures on: a view of the model whose forward
returns its outputs in d-wide parts — a parent's (…, d) output y as k copies of y and r zeros,
a child's (…, D') output as its k d-wide copies and its last r coordinates — so that the
parent's and the child's parts are compared one to one, exactly like any other output; an
output of another width passes as it is.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from collections.abc import Sequence

import torch
from torch import nn

from .report import MorphReport, outputs_of


def _parts(t: torch.Tensor, d: int, copies: int, extra: int) -> list[torch.Tensor]:
    """``t`` in the d-wide parts the parent's and the child's outputs are compared in."""
    if t.dim() and t.shape[-1] == d:  # the parent's stream, or an output that keeps width d
        zeros = [t.new_zeros((*t.shape[:-1], extra))] if extra else []
        return [t] * copies + zeros
    if t.dim() and t.shape[-1] == copies * d + extra:  # the child's stream
        rest = [t[..., copies * d :]] if extra else []
        return [t[..., j * d : (j + 1) * d] for j in range(copies)] + rest
    return [t]


def stream_view(model: nn.Module, d: int, copies: int, extra: int) -> nn.Module:
    """A shallow copy of ``model`` (the same modules and attributes) whose forward returns
    every output tensor in :func:`_parts`; the pipeline builds the child on a copy of it, whose
    class :func:`restored` gives back."""
    cls = type(model)

    @functools.wraps(cls.forward)  # its signature: the default probe reads it (NaFlex inputs)
    def forward(self: nn.Module, *args: object, **kwargs: object) -> tuple[torch.Tensor, ...]:
        out = cls.forward(self, *args, **kwargs)
        return tuple(p for t in outputs_of(out) for p in _parts(t, d, copies, extra))

    view = copy.copy(model)
    view.__class__ = type(cls.__name__, (cls,), {"forward": forward, "__module__": cls.__module__})
    return view


def restored(
    child: nn.Module,
    report: MorphReport,
    model: nn.Module,
    d: int,
    copies: int,
    extra: int,
    pools: Sequence[str] = (),
) -> tuple[nn.Module, MorphReport]:
    """``child`` (built on a :func:`stream_view` of ``model``) with ``model``'s class, and
    ``report`` with a note on the child's wider stream output (and the pooled output of the
    heads ``pools``, grown with it)."""
    child.__class__ = type(model)
    zeros = f", then {extra} zeros" if extra else ""
    pooled = f"; so is the pooled output of {', '.join(map(repr, pools))}" if pools else ""
    note = (
        f"the model returns a residual stream (its last hidden state, an encoder's output): "
        f"the child's is {copies * d + extra} wide, the parent's {d} coordinates repeated "
        f"{copies} times{zeros} (measured so; the parent's output is the child's [..., :{d}])"
        f"{pooled}; every other output keeps its shape"
    )
    return child, dataclasses.replace(report, notes=(*report.notes, note))
