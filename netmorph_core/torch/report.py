"""The report every morph returns, and the measurement of parent-vs-child deviation.

Deviation is measured on probe inputs: given by the caller (``probe``), built from
``input_shape``, or inferred (a Hugging Face model gets token ids or images from its config; a
Linear first layer gives its input width; a conv first layer is tried at spatial sizes 8, 16
and 32). When no model input can be found, the replaced layer is
compared with its replacement instead (``scope="layer"``). Relative deviation is
max|y_child − y_parent| / max|y_parent| over every output tensor.

Every forward pass runs on a deep copy, in a forked RNG: the parent (parameters, buffers such
as BatchNorm statistics or counters, parametrizations, hooks), the returned child and the
caller's global torch RNG are left as they were.

``tol="auto"`` (the default of every operation) accepts the child when

- of a float64 model: its relative deviation is at most 1e-8;
- of a float32, bfloat16 or float16 model (whose float64 copies hold weights rounded to that
  dtype): its relative deviation in the model's dtype from the parent run in float64 is at
  most ``NOISE_FACTOR`` × the parent's own rounding noise (the parent in its
  dtype against the parent in float64, same inputs) + ``NOISE_FLOOR_EPS`` × eps(dtype) × (1 +
  the number of Conv/Linear layers the child adds);

otherwise it raises :class:`MorphError` with the numbers. A number is a bound on the float64
relative deviation alone; ``None`` measures and reports without raising. A child that fails on
the probe the parent runs on is refused (MorphError) whatever ``tol``.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np
import torch
from torch import nn

from .._memory import check_working_set
from .arguments import check_input_memory, check_input_shape, check_probe, check_probe_memory
from .errors import MorphError
from .surgery import CONV_TYPES, LAYER_TYPES, check_model, count_parameters
from .tracing import default_inputs
from .transformer_layout import as_matrix, is_conv1d

Inputs = tuple[torch.Tensor, ...]
Outputs = list[torch.Tensor]
INFER_SIZES = (8, 16, 32)
#: tol="auto": bound on the float64 relative deviation.
AUTO_F64_BOUND = 1e-8
#: tol="auto": the child's rounding in the model's dtype may be this multiple of the parent's
#: (a child has more layers, each rounding; the demo's three-layer subnet in float32: 5.8).
NOISE_FACTOR = 8.0
#: tol="auto": plus this many eps of the dtype for the output and for each layer the child
#: adds (its weights are rounded to the dtype; a parent may show almost no rounding noise).
NOISE_FLOOR_EPS = 1.0


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
    ``parent_noise``: the parent's own relative rounding error in its dtype (against the parent
    in float64; 0 for float64 models); ``noise_ratio``: the child's relative error in the
    model's dtype against the parent in float64, divided by ``parent_noise`` (None for float64
    models; about 1 when the child rounds like the parent). ``scope``: "model" (probe through
    the whole model), "layer" (the replaced layer alone) or "none". ``new_nonzero_ratio``:
    non-zero fraction of the weight entries the morph created. ``residual``: the solver's
    ‖F_last ⊛ … ⊛ F_1 − G~‖/‖G~‖ (0 for exact constructions). ``seconds``: time to build the
    child (measurement excluded). On CUDA, float32 convolutions run in TF32 by default
    (``torch.backends.cudnn.allow_tf32``): that rounding shows in the model-dtype deviation
    and in ``parent_noise``, not in the float64 one.
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
    parent_noise: float | None
    noise_ratio: float | None
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


@dataclass(frozen=True)
class Measurement:
    """Deviations of a child from its parent on one set of inputs (see :class:`MorphReport`)."""

    dev64: tuple[float, float]
    dev: tuple[float, float]
    parent_noise: float
    child_noise: float
    train64: tuple[float, float] | None
    new_layers: int = 0

    @property
    def noise_ratio(self) -> float:
        """child_noise / parent_noise (0 when both are 0, inf when only the parent's is)."""
        if self.parent_noise > 0:
            return self.child_noise / self.parent_noise
        return 0.0 if self.child_noise == 0 else math.inf


def check_tol(tol: object) -> float | str | None:
    """``tol``: "auto", None or a finite non-negative real number (ValueError otherwise)."""
    if tol is None or (isinstance(tol, str) and tol == "auto"):
        return tol
    if (
        isinstance(tol, (bool, np.bool_))
        or not isinstance(tol, (int, float, np.integer, np.floating))
        or not math.isfinite(tol)
        or tol < 0
    ):
        raise ValueError(f"tol must be 'auto', None or a finite number ≥ 0, got {tol!r}")
    return float(tol)


def auto_bound(dtype: torch.dtype, parent_noise: float, new_layers: int = 0) -> float:
    """tol="auto"'s bound on the child's relative error in ``dtype`` against the parent in
    float64: NOISE_FACTOR · parent_noise + NOISE_FLOOR_EPS · eps(dtype) · (1 + new_layers)."""
    floor = NOISE_FLOOR_EPS * torch.finfo(dtype).eps * (1 + new_layers)
    return NOISE_FACTOR * parent_noise + floor


def _layer_count(model: nn.Module) -> int:
    return sum(isinstance(m, LAYER_TYPES) for m in model.modules())


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


def _outputs(y: object) -> Outputs:
    if isinstance(y, torch.Tensor):
        return [y]
    if isinstance(y, Mapping):
        return [t for v in y.values() for t in _outputs(v)]
    if isinstance(y, (list, tuple)):
        return [t for v in y for t in _outputs(v)]
    return []


def _devices(model: nn.Module, inputs: Inputs = ()) -> list[torch.device]:
    tensors = (*model.parameters(), *model.buffers(), *inputs)
    return sorted({t.device for t in tensors if t.is_cuda}, key=str)


def _run(model: nn.Module, inputs: Inputs, *, train: bool = False) -> Outputs:
    """``model``'s outputs on ``inputs`` (no grad, seed 0, caller's RNG state restored); runs
    ``model`` itself: give it a copy."""
    with eval_mode(model, train=train), torch.no_grad():
        with torch.random.fork_rng(devices=_devices(model, inputs)):
            torch.manual_seed(0)
            return [t.detach() for t in _outputs(model(*inputs))]


def _copy(model: nn.Module, dtype: torch.dtype | None = None) -> nn.Module:
    dup = copy.deepcopy(model)
    return dup if dtype is None else dup.to(dtype)


def _as_float64(inputs: Inputs) -> Inputs:
    return tuple(t.to(torch.float64) if t.is_floating_point() else t for t in inputs)


def compare(reference: Outputs, other: Outputs) -> tuple[float, float]:
    """(max abs, relative) difference of ``other`` from ``reference``: max|o − r| / max|r|
    over every output tensor (the absolute value when max|r| = 0)."""
    if len(reference) != len(other) or any(a.shape != b.shape for a, b in zip(reference, other)):
        raise MorphError(
            "the child's outputs do not have the parent's shapes: "
            f"{[tuple(t.shape) for t in reference]} vs {[tuple(t.shape) for t in other]}"
        )
    if not reference:
        return 0.0, 0.0
    err = max(float((a.double() - b.double()).abs().max()) for a, b in zip(reference, other))
    scale = max(float(a.double().abs().max()) for a in reference)
    return err, (err / scale if scale > 0 else err)


def measure(
    parent: nn.Module, child: nn.Module, inputs: Inputs, parent_out: Outputs | None = None
) -> Measurement:
    """Every deviation of :class:`MorphReport` on ``inputs`` (in the models' dtype), each
    forward pass on a fresh copy. ``parent_out``: the parent's outputs on ``inputs`` when
    already computed."""
    like = _model_like(parent)
    dtype = like.dtype if like is not None else torch.get_default_dtype()
    in64 = _as_float64(inputs)
    p64, c64 = _copy(parent, torch.float64), _copy(child, torch.float64)
    out_p64 = _run(p64, in64)
    out_c64 = _run(c64, in64)
    try:
        train64 = compare(_run(p64, in64, train=True), _run(c64, in64, train=True))
    except (RuntimeError, ValueError):  # e.g. BatchNorm in train mode on a batch of one
        train64 = None
    del p64, c64
    dev64 = compare(out_p64, out_c64)
    if dtype == torch.float64:
        return Measurement(dev64, dev64, 0.0, dev64[1], train64)
    out_p = _run(_copy(parent), inputs) if parent_out is None else parent_out
    out_c = _run(_copy(child), inputs)
    return Measurement(
        dev64=dev64,
        dev=compare(out_p, out_c),
        parent_noise=compare(out_p64, out_p)[1],
        child_noise=compare(out_p64, out_c)[1],
        train64=train64,
        new_layers=max(0, _layer_count(child) - _layer_count(parent)),
    )


def _model_like(model: nn.Module) -> torch.Tensor | None:
    for t in (*model.parameters(), *model.buffers()):
        if t.is_floating_point():
            return t
    return None


def _try_run(model: nn.Module, inputs: Inputs) -> Outputs | None:
    try:
        return _run(_copy(model), inputs)
    except (RuntimeError, ValueError, TypeError, IndexError, AssertionError):
        return None


def resolve_probe(
    model: nn.Module, probe: object, input_shape: object
) -> tuple[Inputs, Outputs] | None:
    """The model inputs to measure on and the parent's outputs on them (run on a copy):
    ``probe`` (floating tensors cast to the model's dtype and device), a random tensor of
    ``input_shape``, or an inferred input (None when none is found). MorphError naming
    ``probe``/``input_shape`` when the model cannot run on the given inputs."""
    like = _model_like(model)
    device = like.device if like is not None else torch.device("cpu")
    dtype = like.dtype if like is not None else torch.get_default_dtype()
    gen = torch.Generator().manual_seed(0)
    if probe is not None:
        if input_shape is not None:
            raise ValueError("give probe or input_shape, not both")
        items = check_probe(probe)
        check_probe_memory(items, dtype.itemsize)
        given = "probe"
        inputs = tuple(
            t.to(device, dtype) if t.is_floating_point() else t.to(device) for t in items
        )
    elif input_shape is not None:
        shape = check_input_shape(input_shape)
        check_input_memory([shape], dtype.itemsize, "input_shape", generated=True)
        given = "input_shape"
        inputs = (torch.randn(shape, generator=gen).to(device, dtype),)
    else:
        return _infer_probe(model, gen, device, dtype)
    try:
        return inputs, _run(_copy(model), inputs)
    except Exception as exc:
        shapes = ", ".join(
            f"{tuple(t.shape)} {str(t.dtype).removeprefix('torch.')}" for t in inputs
        )
        raise MorphError(
            f"{given} does not fit {type(model).__name__}: on inputs of shape {shapes} its "
            f"forward raised {type(exc).__name__}: {exc}"
        ) from exc


def _infer_probe(
    model: nn.Module, gen: torch.Generator, device: torch.device, dtype: torch.dtype
) -> tuple[Inputs, Outputs] | None:
    given = default_inputs(model)
    if given is not None:
        inputs = tuple(t.to(dtype) if t.is_floating_point() else t for t in given)
        out = _try_run(model, inputs)
        return None if out is None else (inputs, out)
    first = next((m for m in model.modules() if isinstance(m, (*CONV_TYPES, nn.Linear))), None)
    if isinstance(first, nn.Linear):
        candidates = [torch.randn(2, first.in_features, generator=gen)]
    elif first is not None:
        ndim = len(first.kernel_size)
        candidates = [
            torch.randn(2, first.in_channels, *(size,) * ndim, generator=gen)
            for size in INFER_SIZES
        ]
    else:
        return None
    for x in candidates:
        inputs = (x.to(device, dtype),)
        out = _try_run(model, inputs)
        if out is not None:
            return inputs, out
    return None


def layer_probe(layer: nn.Module) -> Inputs:
    """A random input for a Conv/Linear ``layer`` alone, with a border 10× larger than the
    interior so that border errors show."""
    gen = torch.Generator().manual_seed(0)
    like = _model_like(layer)
    device, dtype = like.device, like.dtype
    if isinstance(layer, nn.Linear) or is_conv1d(layer):
        features = as_matrix(layer).shape[1]
        return (torch.randn(2, features, generator=gen).to(device, dtype),)
    pad = layer.padding if isinstance(layer.padding, tuple) else (0,) * len(layer.kernel_size)
    sizes = [
        max(8, 2 * p + d * (k - 1) + 2 * s + 2)
        for p, d, k, s in zip(pad, layer.dilation, layer.kernel_size, layer.stride)
    ]
    x = torch.randn(2, layer.in_channels, *sizes, generator=gen, dtype=torch.float64)
    interior = (slice(None), slice(None), *(slice(1, -1) for _ in sizes))
    border = torch.full_like(x, 10.0)
    border[interior] = 1.0
    return ((x * border).to(device, dtype),)


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


def _state_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))


def check_preserved(
    operation: str,
    targets: tuple[str, ...],
    tol: float | str | None,
    dtype: torch.dtype,
    m: Measurement,
) -> None:
    """Raise MorphError when measurement ``m`` breaks ``tol`` (see the module docstring)."""
    if tol is None:
        return
    where = f"{operation} at {list(targets)}"
    if tol != "auto" or dtype == torch.float64:
        bound64 = AUTO_F64_BOUND if tol == "auto" else tol
        if m.dev64[1] > bound64:
            raise MorphError(
                f"{where}: the child deviates from the parent by {m.dev64[1]:.3e} (relative, "
                f"float64 copies), above tol={tol!r} (bound {bound64:.1e}); pass tol=None to "
                "accept an inexact child"
            )
        return
    bound = auto_bound(dtype, m.parent_noise, m.new_layers)
    if m.child_noise > bound:
        name = str(dtype).removeprefix("torch.")
        raise MorphError(
            f"{where}: in {name} the child deviates from the float64 parent by "
            f"{m.child_noise:.3e} (relative), above tol='auto''s bound {bound:.3e} = "
            f"{NOISE_FACTOR:g} × the parent's own {name} rounding noise {m.parent_noise:.3e} + "
            f"{NOISE_FLOOR_EPS * (1 + m.new_layers):g} eps (the output and {m.new_layers} new "
            f"layers); noise ratio {m.noise_ratio:.3g}, float64 deviation {m.dev64[1]:.3e}; "
            "pass tol=None to accept it"
        )


def _measure_child(
    operation: str,
    targets: tuple[str, ...],
    model: nn.Module,
    child: nn.Module,
    inputs: Inputs,
    parent_out: Outputs,
) -> Measurement:
    """:func:`measure`; a child that fails on inputs the parent runs on (a use of the morphed
    layers the adapter did not see) is refused with a MorphError naming the operation, the
    layers and the error."""
    try:
        return measure(model, child, inputs, parent_out)
    except MorphError:
        raise
    except Exception as exc:  # the child's forward raises any type
        raise MorphError(
            f"{operation} at {list(targets)}: the child fails on the probe the parent runs "
            f"({type(exc).__name__}: {exc}); the model uses the morphed layers in a way the "
            "adapter does not follow; refused"
        ) from exc


def run_morph(
    operation: str,
    model: nn.Module,
    targets: tuple[str, ...],
    build: Callable[[nn.Module], Outcome],
    *,
    probe: object = None,
    input_shape: object = None,
    tol: float | str | None = "auto",
    layer_scope: bool = True,
    budget: Callable[[Inputs], None] | None = None,
) -> tuple[nn.Module, MorphReport]:
    """Build the child on a deep copy of ``model`` with ``build``, measure it, check ``tol``
    (module docstring; MorphError when broken or, unless ``tol`` is None, when nothing can be
    measured) and report.

    ``layer_scope``: fall back to comparing the single target layer when no model input is
    found. ``budget``: checks the memory of measuring the child on the model inputs found,
    before the child is built (:mod:`.budget`). ``model``, the caller's torch RNG state and
    the returned child are not changed by the measurement.
    """
    check_model(model)
    tol = check_tol(tol)
    like = _model_like(model)
    dtype = like.dtype if like is not None else torch.get_default_dtype()
    itemsize = like.element_size() if like is not None else 4
    check_working_set(
        _state_bytes(model) * (2 + 16 / itemsize), f"{operation}: the child and its measurement"
    )
    with torch.random.fork_rng(devices=_devices(model)):
        resolved = resolve_probe(model, probe, input_shape)
        if budget is not None and resolved is not None:
            budget(resolved[0])
        start = time.perf_counter()
        child = copy.deepcopy(model)
        outcome = build(child)
        seconds = time.perf_counter() - start
        notes = list(outcome.notes)

        scope, measured, inputs = "none", None, None
        if resolved is not None:
            scope, (inputs, parent_out) = "model", resolved
            measured = _measure_child(operation, targets, model, child, inputs, parent_out)
        elif layer_scope and len(targets) == 1:
            scope = "layer"
            old = _copy(model.get_submodule(targets[0]))
            new = _copy(child.get_submodule(targets[0]))
            inputs = layer_probe(old)
            measured = measure(old, new, inputs)
            notes.append("no model input found: deviation measured on the replaced layer alone")
        elif tol is None:
            notes.append("no model input found: pass probe= or input_shape= to measure deviation")
        else:
            raise MorphError(
                f"{operation} at {list(targets)}: tol={tol!r} but the deviation could not be "
                "measured (no model input found); pass probe= or input_shape=, or tol=None"
            )
    if measured is not None:
        check_preserved(operation, targets, tol, dtype, measured)
    train64 = measured.train64 if measured else None
    if measured and train64 is None:
        notes.append("train mode could not run on the probe: its deviation is not measured")
    report = MorphReport(
        operation=operation,
        targets=targets,
        dtype=str(dtype).removeprefix("torch."),
        scope=scope,
        probe_shapes=tuple(tuple(t.shape) for t in inputs) if inputs is not None else (),
        max_abs_dev_f64=measured.dev64[0] if measured else None,
        rel_dev_f64=measured.dev64[1] if measured else None,
        max_abs_dev=measured.dev[0] if measured else None,
        rel_dev=measured.dev[1] if measured else None,
        parent_noise=measured.parent_noise if measured else None,
        noise_ratio=measured.noise_ratio if measured and dtype != torch.float64 else None,
        train_max_abs_dev_f64=train64[0] if train64 else None,
        train_rel_dev_f64=train64[1] if train64 else None,
        train_mode_holds=train64[1] <= max(1e-9, 10 * measured.dev64[1]) if train64 else None,
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
