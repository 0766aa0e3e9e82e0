"""Environment variables read on every call, without the cost of a miss.

``os.environ.get`` of a variable that is not set raises and catches two ``KeyError`` (in
``os.environ.__getitem__`` and in ``Mapping.get``): 1–2 µs, a visible share of a 0.1 ms kernel
call that reads its settings (``NETMORPH_MAX_BYTES``, ``NETMORPH_NUM_THREADS``) each time.
:func:`getenv` looks the name up in the dict ``os.environ`` keeps its variables in (CPython's
``_data``, which every assignment and deletion through ``os.environ`` updates), with the
mapping's own key and value codecs, and falls back to ``os.environ.get`` for any other mapping.
"""

from __future__ import annotations

import os


def getenv(name: str) -> str | None:
    """``os.environ.get(name)``: the variable's value, or None when it is not set."""
    env = os.environ
    try:
        data, encode, decode = env._data, env.encodekey, env.decodevalue  # type: ignore[attr-defined]
    except AttributeError:  # os.environ replaced by another mapping
        return env.get(name)
    raw = data.get(encode(name))
    return None if raw is None else decode(raw)
