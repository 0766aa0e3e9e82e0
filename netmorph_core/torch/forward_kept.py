"""A model's own state kept across the forward passes the adapter runs.

Some models change themselves when they run: BigBird replaces its block-sparse attention by
full attention on an input too short for its blocks, and rotary embeddings grow their caches.
The adapter runs the parent (to trace its layout) and the child (to measure it), and neither
may come back changed. :func:`kept` restores, on exit, every module's class, attributes,
submodules, parameters and buffers (the objects themselves, shallowly) and the model's config.

A forward that replaced a submodule ran in another mode than the one the model is in: a child
checked on it would be checked in a mode it does not start in, so that run is refused by name.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn
from torch.nn.parameter import is_lazy

from .errors import MorphError

#: The per-module tables that a forward can change in place.
_TABLES = ("_modules", "_parameters", "_buffers", "_non_persistent_buffers_set")


def _state(obj: object) -> dict[str, object]:
    """A shallow copy of ``obj``'s attributes, its tables copied one level deeper."""
    attrs = dict(vars(obj))
    for name in _TABLES:
        if name in attrs:
            attrs[name] = type(attrs[name])(attrs[name])
    return attrs


def _restore(obj: object, attrs: dict[str, object]) -> None:
    own = vars(obj)
    for name in _TABLES:
        if name in own and name in attrs:
            table = own[name]
            table.clear()
            table.update(attrs[name])  # the same table object: views of it stay valid
    for name in [n for n in own if n not in attrs]:
        del own[name]
    own.update({n: v for n, v in attrs.items() if n not in _TABLES})


def _replaced(model: nn.Module, saved: dict[int, dict[str, object]]) -> str | None:
    """'name (Old → New)' of the first submodule a forward replaced, or None."""
    for name, module in model.named_modules():
        before = saved.get(id(module))
        if before is None:
            continue
        now = vars(module)["_modules"]
        for key, old in before["_modules"].items():
            new = now.get(key)
            if new is not old:
                where = f"{name}.{key}" if name else key
                return f"{where!r} ({type(old).__name__} → {type(new).__name__})"
    return None


def check_initialised(model: nn.Module) -> None:
    """MorphError naming the parameters and buffers of ``model`` that lazy modules have not
    initialised yet (a forward would draw them)."""
    lazy = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if is_lazy(t)]
    if lazy:
        raise MorphError(
            f"{', '.join(lazy[:8])} are not initialised yet (lazy modules take their shapes "
            "from their first input): run the model once on an input first; refused"
        )


@contextmanager
def kept(model: nn.Module) -> Iterator[None]:
    """Run a forward of ``model`` inside: on exit every module and the config are as they were
    on entry. MorphError when the forward replaced one of ``model``'s submodules, or before it
    runs when a lazy module is not initialised."""
    check_initialised(model)
    modules = list(model.modules())
    saved = {id(m): _state(m) for m in modules}
    classes = [(m, type(m)) for m in modules]
    config = getattr(model, "config", None)
    config_state = dict(vars(config)) if hasattr(config, "__dict__") else None
    failed = True
    try:
        yield
        failed = False
    finally:
        changed = None if failed else _replaced(model, saved)
        for m, cls in classes:
            _restore(m, saved[id(m)])
            if type(m) is not cls:  # a lazy module becomes its materialised class
                m.__class__ = cls
        if config_state is not None:
            vars(config).clear()
            vars(config).update(config_state)
    if changed is not None:
        raise MorphError(
            f"{type(model).__name__} replaces its own module {changed} when it runs on the "
            "probe: it ran in another mode than the one it is in, where the child cannot be "
            "checked; refused (give a probe on which it keeps its modules, or put the model "
            "and its config in that mode first)"
        )
