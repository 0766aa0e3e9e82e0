"""The layers that write a transformer's residual stream when its embeddings are narrower.

ELECTRA (``embedding_size`` < ``hidden_size``) normalises its embeddings at their own width e
and maps them into the stream of width d with one linear layer (``embeddings_project``), as
ALBERT does with ``encoder.embedding_hidden_mapping_in`` (named by its family). That layer is
then the stream's writer: ``grow_width`` grows its output rows like an embedding's columns
(its input, the embeddings and their norm keep width e), and the embeddings' norm is not a
norm of the stream.

The projection is found by structure: the one ``nn.Linear`` of the stream's owner, outside
the blocks, with weight (d, e) where the token embedding has width e ≠ d.
"""

from __future__ import annotations

import torch
from torch import nn

from .errors import MorphError
from .transformer_layout import Layout


def _get(model: nn.Module, name: str) -> nn.Module | None:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def embedding_projection(model: nn.Module, layout: Layout) -> str | None:
    """The qualified name of the linear layer that maps the token embeddings (width e) into the
    stream (width d), or None where the family's first writer already writes width d (or is
    no embedding); MorphError when several layers could be it."""
    fam = layout.family
    embed = _get(model, layout.name(fam.writers[0]))
    d = layout.d_model
    if not isinstance(embed, nn.Embedding) or embed.embedding_dim == d:
        return None
    e = embed.embedding_dim
    owner = model.get_submodule(layout.owner) if layout.owner else model
    found = [
        layout.name(name)
        for name, m in owner.named_modules()
        if isinstance(m, nn.Linear)
        and tuple(m.weight.shape) == (d, e)
        and not name.startswith(f"{fam.blocks}.")
    ]
    if len(found) > 1:
        raise MorphError(
            f"the embeddings have width {e}, the stream {d}, and several layers map {e} → {d} "
            f"({', '.join(repr(n) for n in found)}): which one writes the stream is not "
            "understood; refused"
        )
    return found[0] if found else None


def stream_writers(model: nn.Module, layout: Layout) -> tuple[str, ...]:
    """Qualified names of the writers of the stream: the embedding projection (then the
    family's writers of width d, if any) or the family's writers."""
    names = tuple(layout.name(rel) for rel in layout.family.writers)
    projection = embedding_projection(model, layout)
    if projection is None:
        return names
    return (projection, *(n for n in names if _width(model, n) == layout.d_model))


def stream_norms(model: nn.Module, layout: Layout) -> list[str]:
    """Qualified names of the family's norms that write the stream and have its width (an
    embedding norm before a projection has the embeddings' width)."""
    found = []
    for rel in layout.family.stream_norms:
        name = layout.name(rel)
        norm = _get(model, name)
        shape = getattr(norm, "normalized_shape", None)
        if norm is not None and (shape is None or tuple(shape)[-1:] == (layout.d_model,)):
            found.append(name)
    return found


def follow_embedding_size(config: object, model: nn.Module, layout: Layout, d_model: int) -> None:
    """A config's ``embedding_size`` equal to the stream's width, where the token embedding
    writes the stream itself (ELECTRA with embedding_size = hidden_size, built without a
    projection), becomes ``d_model`` with it: a stock model built from the config would
    otherwise add a projection from the old width."""
    embed = _get(model, layout.name(layout.family.writers[0]))
    size = getattr(config, "embedding_size", None)
    if isinstance(embed, nn.Embedding) and size == layout.d_model == embed.embedding_dim:
        config.embedding_size = d_model


def _width(model: nn.Module, name: str) -> int | None:
    """The width a writer writes: a parameter's last axis, an embedding's columns."""
    owner, _, attr = name.rpartition(".")
    try:
        obj = getattr(model.get_submodule(owner) if owner else model, attr)
    except AttributeError:
        return None
    if isinstance(obj, torch.Tensor):
        return obj.shape[-1]
    if isinstance(obj, nn.Embedding):
        return obj.embedding_dim
    return None
