"""The error raised when a model's structure does not allow a requested morph."""

from __future__ import annotations


class MorphError(ValueError):
    """A model cannot be morphed as asked: the message names the module and the reason.

    Raised for graph-level problems: a model torch.fx cannot trace when consumers must be found,
    a widened tensor reaching an operation the adapter cannot update, residual partners that are
    not widened together, or widened channels reaching the model's output. Being a ValueError,
    it is caught by ``except ValueError``.
    """


class OutputShapeChanged(MorphError):
    """The child returns outputs whose shapes differ from the parent's (the pipeline refuses
    it naming the operation and the model)."""
