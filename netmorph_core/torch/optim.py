"""Carry an optimizer over from a parent model to its morphed child.

Each child parameter is matched to its parent parameter (by the morph report's
:class:`ParamSource`, else by qualified name): unchanged parameters keep their state
(momentum buffer, Adam moments, step); widened or grown ones keep the state of their old
entries and start the new entries at zero; brand-new parameters start with no state and join
the param group of the parameter whose role they take (the replaced layer's weight or bias).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping

import torch
from torch import nn

from .report import MorphReport, ParamSource
from .surgery import check_model, gather

SUPPORTED = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW)


def _role_by_name(name: str, shape: torch.Size, parent: Mapping[str, nn.Parameter]) -> ParamSource:
    """Without a report: the same name (same shape: unchanged, else new), or the parameter of
    the nearest enclosing replaced module with the same leaf name ("weight"/"bias")."""
    if name in parent:
        return ParamSource(name if parent[name].shape == shape else None, name)
    prefix, _, leaf = name.rpartition(".")
    role = "bias" if leaf.endswith("bias") else "weight"
    while prefix:
        prefix = prefix.rpartition(".")[0]
        for candidate in (f"{prefix}.{role}", f"{prefix}.weight"):
            if candidate.lstrip(".") in parent:
                return ParamSource(None, candidate.lstrip("."))
    return ParamSource(None, None)


def _remap_state(value: object, old: nn.Parameter, source: ParamSource) -> object:
    if not isinstance(value, torch.Tensor):
        return value
    if value.shape != old.shape or source.index is None:
        return value.clone()
    out = value
    for axis, index in enumerate(source.index):
        if index is not None:
            out = gather(out, index, axis, 0.0)
    return out.clone()


def remap_optimizer(
    old_optimizer: torch.optim.Optimizer,
    parent: nn.Module,
    child: nn.Module,
    *,
    report: MorphReport | None = None,
) -> torch.optim.Optimizer:
    """A new optimizer of the same type and hyper-parameters over ``child``'s parameters.

    ``old_optimizer`` (SGD, Adam or AdamW) must optimise ``parent``'s parameters. Child
    parameters whose parent parameter was not optimised are left out. The old optimizer and
    the parent are not modified.
    """
    if not isinstance(old_optimizer, SUPPORTED):
        names = ", ".join(c.__name__ for c in SUPPORTED)
        raise TypeError(f"old_optimizer must be one of {names}, got {type(old_optimizer).__name__}")
    check_model(parent)
    check_model(child)
    if report is not None and not isinstance(report, MorphReport):
        raise TypeError(f"report must be a MorphReport, got {type(report).__name__}")
    parent_params = dict(parent.named_parameters())
    name_of = {id(p): n for n, p in parent_params.items()}
    group_of: dict[str, int] = {}
    for i, group in enumerate(old_optimizer.param_groups):
        for p in group["params"]:
            if id(p) not in name_of:
                raise ValueError("old_optimizer holds parameters that are not parent's")
            group_of[name_of[id(p)]] = i
    groups = [
        {k: v for k, v in g.items() if k != "params"} | {"params": []}
        for g in old_optimizer.param_groups
    ]
    chosen: list[tuple[nn.Parameter, ParamSource]] = []
    for name, p in child.named_parameters():
        if report is not None:
            if name not in report.param_sources:
                raise ValueError(f"report does not describe child parameter {name!r}")
            source = report.param_sources[name]
        else:
            source = _role_by_name(name, p.shape, parent_params)
        if source.group_of in group_of:
            groups[group_of[source.group_of]]["params"].append(p)
            chosen.append((p, source))
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise ValueError("no child parameter corresponds to a parameter of old_optimizer")
    accepted = inspect.signature(type(old_optimizer).__init__).parameters
    defaults = {k: v for k, v in old_optimizer.defaults.items() if k in accepted}
    new = type(old_optimizer)(groups, **defaults)
    for p, source in chosen:
        if source.parent is None:
            continue
        old_p = parent_params[source.parent]
        state = old_optimizer.state.get(old_p)
        if state:
            new.state[p] = {k: _remap_state(v, old_p, source) for k, v in state.items()}
    return new
