"""The report every morph returns, and the measurement of parent-vs-child deviation.

Deviation is measured on probe inputs: given by the caller (``probe``), built from
``input_shape``, or inferred (a Linear first layer gives its input width; a conv first layer is
tried at spatial sizes 8, 16 and 32). When no model input can be found, the replaced layer is
compared with its replacement instead (``scope="layer"``). Relative deviation is
max|y_child − y_parent| / max|y_parent| over every output tensor.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np
import torch
from torch import nn

from .surgery import CONV_TYPES, check_model, count_parameters

Inputs = tuple[torch.Tensor, ...]
INFER_SIZES = (8, 16, 32)


@dataclass(frozen=True)
class ParamSource:
    """Where a child parameter comes from, for carrying optimizer state.

    ``parent``: the parent parameter whose entries it holds (None for a brand-new parameter);
    ``group_of``: the parent parameter whose optimizer param group it joins; ``index``: None when
    the parameter is the parent's unchanged, else one entry per axis, each None (axis unchanged)
    or an integer array mapping child position → parent position (−1: new entry).
    """

    parent: str | None
    group_of: str | None
    index: tuple[np.ndarray | None, ...] | None = None


@dataclass(frozen=True)
class MorphReport:
    """What a morph did and how well the child reproduces the parent.

    Deviations (``None`` when not measured): ``*_f64`` on float64 copies of both models in eval
    mode, the others in the model's own dtype; ``train_*`` on float64 copies in train mode (same
    RNG seed for both), with ``train_mode_holds`` true when train mode is as exact as eval mode.
    ``scope``: "model" (probe through the whole model), "layer" (the replaced layer alone) or
    "none". ``new_nonzero_ratio``: non-zero fraction of the weight entries the morph created.
    ``residual``: the solver's ‖F_last ⊛ … ⊛ F_1 − G~‖/‖G~‖ (0 for exact constructions).
    ``seconds``: time to build the child (measurement excluded). On CUDA, float32 convolutions
    run in TF32 by default (``torch.backends.cudnn.allow_tf32``): that rounding shows in the
    model-dtype deviation, not in the float64 one.
    """

    operation: str
    targets: tuple[str, ...]
    dtype: str
    scope: str
    probe_shapes: tuple[tuple[int, ...], ...]
    max_abs_dev_f64: float | None
    rel_dev_f64: float | None
    max_abs_dev: float | None
    rel_dev: float | None
    train_max_abs_dev_f64: float | None
    train_rel_dev_f64: float | None
    train_mode_holds: bool | None
    params_before: int
    params_after: int
    new_nonzero_ratio: float
    residual: float
    exact: bool
    iterations: int
    seconds: float
    notes: tuple[str, ...] = ()
    param_sources: Mapping[str, ParamSource] = field(default_factory=dict, repr=False)


@dataclass
class Outcome:
    """What an operation's builder tells the runner about the child it built."""

    new_nonzero: int
    new_total: int
    residual: float = 0.0
    exact: bool = True
    iterations: int = 0
    sources: dict[str, ParamSource] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@contextmanager
def eval_mode(*models: nn.Module, train: bool = False) -> Iterator[None]:
    """Every module of ``models`` in eval (or train) mode; the previous flags are restored."""
    saved = [(m, m.training) for model in models for m in model.modules()]
    try:
        for model in models:
            model.train(train)
        yield
    finally:
        for m, flag in saved:
            m.training = flag


def _outputs(y: object) -> list[torch.Tensor]:
    if isinstance(y, torch.Tensor):
        return [y]
    if isinstance(y, Mapping):
        return [t for v in y.values() for t in _outputs(v)]
    if isinstance(y, (list, tuple)):
        return [t for v in y for t in _outputs(v)]
    return []


def _run(model: nn.Module, inputs: Inputs) -> list[torch.Tensor]:
    devices = [t.device for t in inputs if t.is_cuda]
    with torch.no_grad(), torch.random.fork_rng(devices=devices):
        torch.manual_seed(0)
        return _outputs(model(*inputs))


def _as_float64(inputs: Inputs) -> Inputs:
    return tuple(t.to(torch.float64) if t.is_floating_point() else t for t in inputs)


def deviation(
    parent: nn.Module, child: nn.Module, inputs: Inputs, *, train: bool = False
) -> tuple[float, float]:
    """(max abs, relative) deviation of ``child`` from ``parent`` on ``inputs``.

    ``train=False`` runs both as they are, in eval mode (flags restored); ``train=True`` must be
    given disposable copies (train-mode BatchNorm updates its running statistics).
    """
    with eval_mode(parent, child, train=train):
        ys = _run(parent, inputs)
        yc = _run(child, inputs)
    if len(ys) != len(yc) or any(a.shape != b.shape for a, b in zip(ys, yc)):
        raise RuntimeError("the child's outputs do not have the parent's shapes")
    if not ys:
        return 0.0, 0.0
    err = max(float((a.double() - b.double()).abs().max()) for a, b in zip(ys, yc))
    scale = max(float(a.double().abs().max()) for a in ys)
    return err, (err / scale if scale > 0 else err)


def _float64_copy(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).to(torch.float64)


def _model_like(model: nn.Module) -> torch.Tensor | None:
    for t in (*model.parameters(), *model.buffers()):
        if t.is_floating_point():
            return t
    return None


def resolve_probe(model: nn.Module, probe: object, input_shape: object) -> Inputs | None:
    """The model inputs to measure on: ``probe`` (floating tensors cast to the model's dtype
    and device), a random tensor of ``input_shape``, or an inferred input (None when none is
    found)."""
    like = _model_like(model)
    device = like.device if like is not None else torch.device("cpu")
    dtype = like.dtype if like is not None else torch.get_default_dtype()
    if probe is not None:
        if input_shape is not None:
            raise ValueError("give probe or input_shape, not both")
        items = (probe,) if isinstance(probe, torch.Tensor) else probe
        if not isinstance(items, (tuple, list)) or not all(
            isinstance(t, torch.Tensor) for t in items
        ):
            raise TypeError(f"probe must be a tensor or a tuple of tensors, got {probe!r}")
        return tuple(t.to(device, dtype) if t.is_floating_point() else t.to(device) for t in items)
    gen = torch.Generator().manual_seed(0)
    if input_shape is not None:
        if not isinstance(input_shape, Sequence) or not all(
            isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in input_shape
        ):
            raise TypeError(f"input_shape must be a tuple of positive ints, got {input_shape!r}")
        return (torch.randn(tuple(input_shape), generator=gen).to(device, dtype),)
    first = next((m for m in model.modules() if isinstance(m, (*CONV_TYPES, nn.Linear))), None)
    if isinstance(first, nn.Linear):
        return (torch.randn(2, first.in_features, generator=gen).to(device, dtype),)
    if first is None:
        return None
    ndim = len(first.kernel_size)
    for size in INFER_SIZES:
        x = torch.randn(2, first.in_channels, *(size,) * ndim, generator=gen).to(device, dtype)
        try:
            with eval_mode(model):
                _run(model, (x,))
        except (RuntimeError, ValueError, TypeError, IndexError):
            continue
        return (x,)
    return None


def layer_probe(layer: nn.Module) -> Inputs:
    """A random input for a Conv/Linear ``layer`` alone, with a border 10× larger than the
    interior so that border errors show."""
    gen = torch.Generator().manual_seed(0)
    w = layer.weight
    if isinstance(layer, nn.Linear):
        return (torch.randn(2, layer.in_features, generator=gen).to(w.device, w.dtype),)
    pad = layer.padding if isinstance(layer.padding, tuple) else (0,) * len(layer.kernel_size)
    sizes = [
        max(8, 2 * p + d * (k - 1) + 2 * s + 2)
        for p, d, k, s in zip(pad, layer.dilation, layer.kernel_size, layer.stride)
    ]
    x = torch.randn(2, layer.in_channels, *sizes, generator=gen, dtype=torch.float64)
    interior = (slice(None), slice(None), *(slice(1, -1) for _ in sizes))
    border = torch.full_like(x, 10.0)
    border[interior] = 1.0
    return ((x * border).to(w.device, w.dtype),)


def same_parameters(parent: nn.Module, child: nn.Module, skip: Mapping[str, ParamSource]) -> dict:
    """ParamSource of every child parameter not in ``skip``: the parent's same-named one."""
    parent_names = dict(parent.named_parameters())
    sources = dict(skip)
    for name, p in child.named_parameters():
        if name in sources:
            continue
        if name not in parent_names or parent_names[name].shape != p.shape:
            raise RuntimeError(f"child parameter {name!r} has no recorded source")
        sources[name] = ParamSource(name, name)
    return sources


def run_morph(
    operation: str,
    model: nn.Module,
    targets: tuple[str, ...],
    build: Callable[[nn.Module], Outcome],
    *,
    probe: object = None,
    input_shape: object = None,
    tol: float | None = None,
    layer_scope: bool = True,
) -> tuple[nn.Module, MorphReport]:
    """Build the child on a deep copy of ``model`` with ``build`` and report on it.

    ``layer_scope``: fall back to comparing the single target layer when no model input is
    found. Raises ValueError when ``tol`` is given and the float64 relative deviation exceeds
    it (or cannot be measured). ``model`` itself is never modified.
    """
    check_model(model)
    if tol is not None and (isinstance(tol, bool) or not isinstance(tol, (int, float)) or tol < 0):
        raise ValueError(f"tol must be a non-negative real number, got {tol!r}")
    inputs = resolve_probe(model, probe, input_shape)
    like = _model_like(model)
    dtype = like.dtype if like is not None else torch.get_default_dtype()
    start = time.perf_counter()
    child = copy.deepcopy(model)
    outcome = build(child)
    seconds = time.perf_counter() - start
    notes = list(outcome.notes)

    scope = "model" if inputs is not None else "none"
    old, new = model, child
    if inputs is None and layer_scope and len(targets) == 1:
        scope = "layer"
        old, new = model.get_submodule(targets[0]), child.get_submodule(targets[0])
        inputs = layer_probe(old)
        notes.append("no model input found: deviation measured on the replaced layer alone")
    dev = dev64 = train64 = (None, None)
    holds = None
    if inputs is not None:
        old64, new64 = _float64_copy(old), _float64_copy(new)
        in64 = _as_float64(inputs)
        dev64 = deviation(old64, new64, in64)
        dev = dev64 if dtype == torch.float64 else deviation(old, new, inputs)
        train64 = deviation(old64, new64, in64, train=True)
        holds = train64[1] <= max(1e-9, 10 * dev64[1])
    elif tol is None:
        notes.append("no model input found: pass probe= or input_shape= to measure deviation")
    if tol is not None and dev64[1] is None:
        raise ValueError(
            f"{operation} at {list(targets)}: tol={tol} was given but the deviation could not "
            "be measured; pass probe= or input_shape="
        )
    if tol is not None and dev64[1] > tol:
        raise ValueError(
            f"{operation} at {list(targets)}: float64 relative deviation {dev64[1]:.3e} is "
            f"above tol={tol}"
        )
    report = MorphReport(
        operation=operation,
        targets=targets,
        dtype=str(dtype).removeprefix("torch."),
        scope=scope,
        probe_shapes=tuple(tuple(t.shape) for t in inputs) if inputs is not None else (),
        max_abs_dev_f64=dev64[0],
        rel_dev_f64=dev64[1],
        max_abs_dev=dev[0],
        rel_dev=dev[1],
        train_max_abs_dev_f64=train64[0],
        train_rel_dev_f64=train64[1],
        train_mode_holds=holds,
        params_before=count_parameters(model),
        params_after=count_parameters(child),
        new_nonzero_ratio=outcome.new_nonzero / outcome.new_total if outcome.new_total else 1.0,
        residual=float(outcome.residual),
        exact=bool(outcome.exact),
        iterations=int(outcome.iterations),
        seconds=seconds,
        notes=tuple(notes),
        param_sources=MappingProxyType(same_parameters(model, child, outcome.sources)),
    )
    return child, report
