"""Position tables that a model computes from its config instead of saving them.

Speech2Text adds sinusoidal positions to its stream (``Speech2TextSinusoidalPositionalEmbedding``,
its buffer ``weights`` (positions, d): sin and cos of d/2 frequencies 10000^(−i/(d/2 − 1)),
not saved with the weights and rebuilt from ``d_model`` whenever the model is built or an input
needs more positions). Marian holds its sinusoids as a parameter that its class never saves
(``_keys_to_ignore_on_save``) and recomputes when it is built. Such a table is a writer of the
stream
(:func:`.transformer_stream.buffer_table`): with it and the other writers zero the stream
entering the blocks is zero.

``grow_width`` gives the child the stream x̃ = [x; …; x] (k copies), so the table added to it
would have to be [p; …; p]. The child's class rebuilds it from the new width d' instead: sin
and cos of d'/2 other frequencies, which are no copies of the parent's, and which no layer
before the stream can turn into them (sinusoids of different frequencies are linearly
independent over the positions, and the layers see the input, not the position). No wider
child reloads exactly: :func:`check_no_tables` refuses before any work, naming the table.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from .errors import MorphError
from .transformer_stream import buffer_table


def tables(model: nn.Module, writers: Iterable[str], d: int) -> list[str]:
    """The modules among ``writers`` (qualified names; absent ones skipped) that hold a
    position table of width d as a buffer."""
    found = []
    for name in writers:
        try:
            module = model.get_submodule(name)
        except AttributeError:  # a parameter or buffer, or a writer this model does not hold
            owner, _, attr = name.rpartition(".")
            holder = _get(model, owner)
            if holder is not None and attr in dict(holder.named_buffers(recurse=False)):
                found.append(name)  # a table the owner holds itself (CTRL's pos_encoding)
            continue
        if _unsaved_table(model, name, module, d) is not None:
            found.append(name)
    return found


def _unsaved_table(model: nn.Module, name: str, module: nn.Module, d: int) -> str | None:
    """'buffer <attr>' or 'parameter <attr>' of the table of width d that ``module`` (named
    ``name`` in ``model``) holds and the model never saves; None where it holds none."""
    table = buffer_table(module)
    if table is not None:
        return f"buffer {table!r}" if module.get_buffer(table).shape[-1] == d else None
    unsaved = set(getattr(model, "_keys_to_ignore_on_save", None) or ())
    for attr, p in module.named_parameters(recurse=False):
        if f"{name}.{attr}" in unsaved and p.dim() == 2 and p.shape[-1] == d:
            return f"parameter {attr!r}"
    return None


def _get(model: nn.Module, name: str) -> nn.Module | None:
    try:
        return model.get_submodule(name) if name else model
    except AttributeError:
        return None


def check_no_tables(model: nn.Module, writers: Iterable[str], d: int, d_model: int) -> None:
    """MorphError naming the first of ``writers`` that adds a buffer position table of width
    d to the stream (module docstring): the stream cannot grow to ``d_model``."""
    for name in tables(model, writers, d):
        module = _get(model, name)
        what = (
            f"({type(module).__name__}) adds to the stream a position table the model computes "
            f"from its width ({_unsaved_table(model, name, module, d)}"
            if module is not None
            else "is a position table the model computes from its width and adds to the "
            "stream (a buffer"
        )
        raise MorphError(
            f"d_model={d_model}: {name!r} {what}, not saved with the weights): the child's "
            "stream [x; …; x] needs the parent's table repeated, [p; …; p], and a model of "
            "the new width builds a table of other frequencies instead, so no wider child "
            "reloads exactly; refused"
        )
