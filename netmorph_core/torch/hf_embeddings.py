"""A model's token embedding and output embedding as Hugging Face models report them.

``get_input_embeddings``/``get_output_embeddings`` raise ``NotImplementedError`` on models
that have none (SegFormer, PVT-v2) and are absent from plain modules: both read as None here.
"""

from __future__ import annotations

from torch import nn


def _reported(model: nn.Module, accessor: str) -> nn.Module | None:
    get = getattr(model, accessor, None)
    if not callable(get):
        return None
    try:
        found = get()
    except (NotImplementedError, AttributeError):
        return None
    return found if isinstance(found, nn.Module) else None


def input_embedding(model: nn.Module) -> nn.Module | None:
    """``model.get_input_embeddings()``, or None where the model has or reports none."""
    return _reported(model, "get_input_embeddings")


def output_embedding(model: nn.Module) -> nn.Module | None:
    """``model.get_output_embeddings()``, or None where the model has or reports none."""
    return _reported(model, "get_output_embeddings")
