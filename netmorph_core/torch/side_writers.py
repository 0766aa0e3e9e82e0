"""Modules beside the stream's owner that write the stream for inputs a probe may not give.

A vision-language model (Llava, Fuyu) runs its language model as the stream's owner; beside it,
under the modules on the path from the root to the owner, sit a vision tower and a projector
whose output, an image feature of the stream's width d, replaces the image tokens' embeddings.
A probe of token ids alone never runs them, so the trace does not see the projector write the
stream. :func:`side_writers` finds them by structure among those siblings (the output head and
the owner's readers aside):

- an MLP of linear layers whose last layer writes width d, with norms over the image
  features' width (not d) before it (Llava's, InternVL's and Mistral-3's
  ``multi_modal_projector``, Fuyu's ``vision_embed_tokens``) and nothing but dropout
  registered after its last layer: a writer, its last layer grown as every writer is
  ([W; …; W; 0]);
- a projection held as one parameter outside any layer whose last axis alone has width d,
  beside norms over the image features' width (Gemma-3's ``mm_input_projection_weight``,
  features · W): a writer, grown along that axis;
- a vision tower whose only tensors of width d are the linear layers that write d from
  another width (its patch mergers: Qwen2-VL's ``visual.merger``, Qwen3-VL's deepstack
  mergers, whose features are added to the stream inside the language model): each a writer;
- a module whose last linear layer writes width d otherwise, or that holds another parameter
  with an axis of width d outside any layer: refused by name, its output not followed;
- anything else (a tower whose output is another width) is left as it is.
"""

from __future__ import annotations

from torch import nn

from .errors import MorphError

#: Modules whose own parameters are a layer's (not a raw tensor a forward multiplies by).
LAYERS = (nn.Linear, nn.Embedding, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.LayerNorm, nn.RMSNorm)


def _siblings(model: nn.Module, owner: str) -> list[tuple[str, nn.Module]]:
    """(qualified name, module) of the children of every module on the path from the root to
    ``owner``, the path itself aside."""
    parts = owner.split(".") if owner else []
    found = []
    for i in range(len(parts)):
        parent_name = ".".join(parts[:i])
        parent = model.get_submodule(parent_name) if parent_name else model
        on_path = ".".join(parts[: i + 1])
        for name, child in parent.named_children():
            qualified = f"{parent_name}.{name}" if parent_name else name
            if qualified != on_path:
                found.append((qualified, child))
    return found


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, (nn.LayerNorm, nn.RMSNorm)) or type(module).__name__.endswith("Norm")


def _widths(module: nn.Module) -> set[int]:
    return {int(p.shape[-1]) for p in module.parameters(recurse=False) if p.dim() >= 1}


def _raw_width_d(module: nn.Module, d: int) -> str | None:
    """The first parameter of ``module`` held outside any layer with an axis of width d."""
    for name, sub in module.named_modules():
        if isinstance(sub, LAYERS) or type(sub).__name__.endswith("Norm"):
            continue
        for pname, p in sub.named_parameters(recurse=False):
            if d in p.shape and p.dim() >= 2:
                return f"{name}.{pname}" if name else pname
    return None


def _ends_with(module: nn.Module, layer: str) -> bool:
    """Whether nothing but dropout runs after ``layer`` in the module holding it inside
    ``module``, as far as its registered layers say (an activation registered after it, whose
    value at 0 need not be 0, would put other values in the new coordinates)."""
    parent_name = layer.rpartition(".")[0]
    parent = module.get_submodule(parent_name) if parent_name else module
    leaves = [(n, m) for n, m in parent.named_modules() if n and next(m.children(), None) is None]
    names = [n for n, _ in leaves]
    own = layer[len(parent_name) + 1 :] if parent_name else layer
    after = leaves[names.index(own) + 1 :] if own in names else []
    return all(isinstance(m, (nn.Dropout, nn.Identity)) for _, m in after)


def _mergers(module: nn.Module, d: int) -> list[str]:
    """The linear layers of ``module`` that write width d from another width, where nothing
    else in it has an axis of width d (a vision tower whose patch mergers end it: Qwen2-VL's
    ``merger``, Qwen3-VL's deepstack mergers); empty otherwise."""
    writers = [
        (n, m)
        for n, m in module.named_modules()
        if isinstance(m, nn.Linear) and m.out_features == d and m.in_features != d
    ]
    mine = {id(p) for _, m in writers for p in m.parameters()}
    rest = [p for p in module.parameters() if id(p) not in mine]
    if not writers or any(d in p.shape for p in rest):
        return []
    return [n for n, _ in writers]


def _projection(module: nn.Module, d: int) -> str | None:
    """The one parameter of ``module`` held outside any layer whose last axis alone has width
    d (Gemma-3's ``mm_input_projection_weight``, image features · W), where every other
    parameter is a norm's over another width and no linear layer reads or writes width d;
    None otherwise."""
    raw = [
        (f"{n}.{pn}" if n else pn, p)
        for n, sub in module.named_modules()
        if not isinstance(sub, LAYERS) and not _is_norm(sub)
        for pn, p in sub.named_parameters(recurse=False)
    ]
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    norms = [m for m in module.modules() if _is_norm(m)]
    if len(raw) != 1 or any(d in (m.in_features, m.out_features) for m in linears):
        return None
    name, p = raw[0]
    if p.dim() != 2 or p.shape[-1] != d or p.shape[0] == d or any(d in _widths(m) for m in norms):
        return None
    return name


def side_writers(
    model: nn.Module, owner: str, d: int, known: tuple[str, ...] = ()
) -> tuple[str, ...]:
    """Qualified names of the last linear layers of the MLPs beside ``owner`` that write width
    ``d`` (module docstring); ``known``: modules already followed (the output head, readers,
    pooling heads), skipped with what they hold. MorphError naming a module beside the owner
    that may write the stream but is not followed."""
    found = []
    for name, module in _siblings(model, owner):
        if any(name == k or k.startswith(f"{name}.") or name.startswith(f"{k}.") for k in known):
            continue
        linears = [(n, m) for n, m in module.named_modules() if isinstance(m, nn.Linear)]
        last = linears[-1] if linears else None
        if last is not None and last[1].out_features == d:
            norms = [m for _, m in module.named_modules() if _is_norm(m) and d not in _widths(m)]
            owned = {id(p) for m in (*(m for _, m in linears), *norms) for p in m.parameters()}
            if all(id(p) in owned for p in module.parameters()) and _ends_with(module, last[0]):
                found.append(f"{name}.{last[0]}" if last[0] else name)
                continue
            mergers = _mergers(module, d)
            if mergers and all(_ends_with(module, n) for n in mergers):
                found += [f"{name}.{n}" for n in mergers]
                continue
            raise MorphError(
                f"{name!r} ({type(module).__name__}) sits beside the stream's owner {owner!r} "
                f"and its last linear layer writes width {d}: it may write the stream for inputs "
                "the probe does not give (image features), and its other layers are not "
                "followed; the stream's width cannot grow; refused"
            )
        table = _projection(module, d)
        if table is not None:
            found.append(f"{name}.{table}")
            continue
        raw = _raw_width_d(module, d)
        if raw is not None:
            raise MorphError(
                f"{name!r} ({type(module).__name__}) sits beside the stream's owner {owner!r} "
                f"and holds '{name}.{raw}' with an axis of width {d}: it may write the stream "
                "for inputs the probe does not give (image features); the stream's width cannot "
                "grow; refused"
            )
    return tuple(found)
