"""The report every morph returns, and the measurement of parent-vs-child deviation.

Deviation is measured on probe inputs: given by the caller (``probe``), built from
``input_shape``, or inferred (a Hugging Face model gets token ids or images from its config; a
Linear first layer gives its input width; a conv first layer is tried at spatial sizes 8, 16
and 32). When no model input can be found, the replaced layer is
compared with its replacement instead (``scope="layer"``). Relative deviation is
max|y_child − y_parent| / max|y_parent| over every output tensor.

Every forward pass runs on a copy, in a forked RNG: the parent (parameters, buffers such
as BatchNorm statistics or counters, parametrizations, hooks), the returned child's buffers and
the caller's global torch RNG are left as they were. :func:`measure` works on float64 copies of
whole models; :mod:`.streamed` computes the same quantities in float64 one module at a time
(:mod:`.pipeline` chooses).

``tol="auto"`` (the default of every operation) accepts the child when

- of a float64 model: its relative deviation is at most 1e-8, or (on float64 copies) at most
  ``NOISE_FACTOR`` × the parent's own float64 rounding noise where that is larger (one
  rounding of every layer's output, :mod:`.rounding_noise`; measured only past 1e-8);
- of a float32, bfloat16 or float16 model (whose float64 copies hold weights rounded to that
  dtype): its relative deviation in the model's dtype from the parent run in float64 is at
  most ``NOISE_FACTOR`` × the parent's own rounding noise (the parent in its
  dtype against the parent in float64, same inputs) + ``NOISE_FLOOR_EPS`` × eps(dtype) × (1 +
  the number of Conv/Linear layers the child adds);

otherwise it raises :class:`MorphError` with the numbers. A number is a bound on the float64
relative deviation alone; ``None`` measures and reports without raising. A child that fails on
the probe the parent runs on (in eval or in train mode), and a measurement that is not finite,
are refused (MorphError) whatever ``tol``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from .arguments import check_input_memory, check_input_shape, check_probe, check_probe_memory
from .errors import MorphError, OutputShapeChanged
from .forward_kept import kept
from .rounding_noise import rounded_outputs
from .seeded import seeded
from .surgery import CONV_TYPES, LAYER_TYPES
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
#: A child whose train-mode float64 deviation exceeds this (and TRAIN_AMPLIFICATION × its eval
#: deviation, and TRAIN_NOISE_FACTOR × the parent's own train-mode rounding noise), on a probe
#: where the parent's train mode is deterministic, is refused (:mod:`.pipeline`).
TRAIN_BOUND = 1e-6


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
    and in ``parent_noise``, not in the float64 one. ``modes``: the modes ("eval", "train")
    in which the child was verified to compute the parent's function on the probe;
    ``measured_by``: "float64 copies" (whole-model float64 copies), "float64 per module"
    (:mod:`.streamed`: float64 one module at a time, edited regions checked alone), "layer"
    or "none"; ``regions``: (child module, float64 relative deviation) of each edited region
    checked alone.
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
    modes: tuple[str, ...] = ()
    measured_by: str = "none"
    regions: tuple[tuple[str, float], ...] = ()


@dataclass
class Outcome:
    """What an operation's builder tells the pipeline about the child it built
    (``train_exact``: False where the child differs in train mode by design, e.g. a new
    BatchNorm that is the identity in eval mode only)."""

    new_nonzero: int
    new_total: int
    residual: float = 0.0
    exact: bool = True
    iterations: int = 0
    sources: dict[str, ParamSource] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    train_exact: bool = True

    def count_new(self, params: Iterable[torch.Tensor]) -> Outcome:
        """This outcome with ``new_total``/``new_nonzero`` counted over ``params`` (a new
        block's parameters)."""
        fresh = list(params)
        self.new_total = sum(p.numel() for p in fresh)
        self.new_nonzero = sum(int((p != 0).sum()) for p in fresh)
        return self


def block_params(child: nn.Module, prefix: str) -> list[torch.Tensor]:
    """The parameters of ``child`` under the module ``prefix`` (a new block)."""
    return [p for name, p in child.named_parameters() if name.startswith(f"{prefix}.")]


@dataclass(frozen=True)
class Measurement:
    """Deviations of a child from its parent on one set of inputs (see :class:`MorphReport`).
    ``dev64`` is None where nothing checks it (a low-precision model under tol="auto",
    measured one module at a time); ``train_same``: in train mode the parent and the child
    give their eval-mode outputs, bitwise, in the model's dtype (train mode changes nothing
    on the probe, so its deviation is the eval deviation); ``train_noise``: the parent's own
    train-mode rounding noise (:class:`TrainRun`); ``noise64``: its own float64 eval-mode rounding
    noise (:mod:`.rounding_noise`; 0 where not measured), in which the layers ``noise64_lower``
    round at float32 (they compute in float32 inside the float64 model)."""

    dev64: tuple[float, float] | None
    dev: tuple[float, float]
    parent_noise: float
    child_noise: float
    train64: tuple[float, float] | None
    new_layers: int = 0
    train_deterministic: bool = False
    train_same: bool = False
    train_noise: float = 0.0
    noise64: float = 0.0
    noise64_lower: tuple[str, ...] = ()

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


def layer_count(model: nn.Module) -> int:
    """How many Conv/Linear layers ``model`` holds."""
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


def outputs_of(y: object) -> Outputs:
    """Every tensor of a model output (tensors, mappings, lists, tuples), in order."""
    if isinstance(y, torch.Tensor):
        return [y]
    if isinstance(y, Mapping):
        return [t for v in y.values() for t in outputs_of(v)]
    if isinstance(y, (list, tuple)):
        return [t for v in y for t in outputs_of(v)]
    return []


def run_outputs(model: nn.Module, inputs: Inputs, *, train: bool = False, seed: int = 0) -> Outputs:
    """``model``'s outputs on ``inputs`` (no grad, seed ``seed``, caller's RNG state
    restored); runs ``model`` itself: give it a copy."""
    with kept(model), eval_mode(model, train=train), torch.no_grad(), seeded(model, inputs, seed):
        return [t.detach() for t in outputs_of(model(*inputs))]


def copy_model(model: nn.Module, dtype: torch.dtype | None = None) -> nn.Module:
    """A deep copy of ``model`` (cast to ``dtype`` when given)."""
    dup = copy.deepcopy(model)
    return dup if dtype is None else dup.to(dtype)


def as_float64(inputs: Inputs) -> Inputs:
    """The floating tensors of ``inputs`` in float64."""
    return tuple(t.to(torch.float64) if t.is_floating_point() else t for t in inputs)


def compare(reference: Outputs, other: Outputs) -> tuple[float, float]:
    """(max abs, relative) difference of ``other`` from ``reference``: max|o − r| / max|r|
    over every output tensor (the absolute value when max|r| = 0)."""
    if len(reference) != len(other) or any(a.shape != b.shape for a, b in zip(reference, other)):
        raise OutputShapeChanged(
            "the child's outputs do not have the parent's shapes: "
            f"{[tuple(t.shape) for t in reference]} vs {[tuple(t.shape) for t in other]}"
        )
    if not reference:
        return 0.0, 0.0
    err = max(float((a.double() - b.double()).abs().max()) for a, b in zip(reference, other))
    scale = max(float(a.double().abs().max()) for a in reference)
    return err, (err / scale if scale > 0 else err)


def check_finite(outputs: Outputs, who: str) -> None:
    """MorphError naming the outputs of ``who`` that hold NaN or Inf (a non-finite measurement
    is never within a tolerance)."""
    bad = [
        f"output {i} {tuple(t.shape)}"
        for i, t in enumerate(outputs)
        if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all())
    ]
    if bad:
        raise MorphError(
            f"{who}'s outputs on the probe are not finite ({', '.join(bad)}): no deviation can "
            "be measured through them; refused (give a probe on which the parent's outputs "
            "are finite)"
        )


def same_outputs(a: Outputs, b: Outputs) -> bool:
    """Whether two output lists are identical (shapes and values)."""
    return len(a) == len(b) and all(
        x.shape == y.shape and x.dtype == y.dtype and bool(torch.equal(x, y)) for x, y in zip(a, b)
    )


class TrainRun(NamedTuple):
    """What :func:`train_outputs` found: ``dev64`` (the child's float64 train-mode deviation,
    None when the parent cannot run in train mode on the probe), ``deterministic`` (the
    parent's train mode gives the same outputs with another seed) and ``noise`` (the parent's
    own train-mode rounding noise, :mod:`.rounding_noise`; measured only when the child's
    deviation exceeds ``TRAIN_BOUND`` on a deterministic train mode, else 0)."""

    dev64: tuple[float, float] | None
    deterministic: bool
    noise: float = 0.0


def train_outputs(
    run: Callable[..., Outputs],
    child_run: Callable[..., Outputs],
    eval_out: Outputs | None = None,
    rounded: Callable[[], Outputs] | None = None,
) -> TrainRun:
    """The :class:`TrainRun` from runners of the parent and the child (keyword ``train`` and
    ``seed``) and ``rounded`` (the parent's train-mode outputs with one rounding of every
    layer's output, :func:`.rounding_noise.rounded_outputs`); (None, False) when the parent
    cannot run in train mode on the probe (a BatchNorm on a batch of one). MorphError when the
    child fails where the parent runs. A parent whose train outputs are its eval outputs
    ``eval_out`` is deterministic without a second run."""
    try:
        parent = run(train=True, seed=0)
    except (RuntimeError, ValueError):
        return TrainRun(None, False)
    try:
        child = child_run(train=True, seed=0)
    except Exception as exc:  # the child's forward raises any type
        raise MorphError(
            f"in train mode the child fails on the probe the parent runs on "
            f"({type(exc).__name__}: {exc}): a branch or layer used only in training is not "
            "followed by the morph; refused"
        ) from exc
    same = eval_out is not None and same_outputs(parent, eval_out)
    deterministic = same or same_outputs(parent, run(train=True, seed=1))
    dev64 = compare(parent, child)
    noise = 0.0
    if deterministic and dev64[1] > TRAIN_BOUND and rounded is not None:
        noise = compare(parent, rounded())[1]
    return TrainRun(dev64, deterministic, noise)


def _float64_runs(
    parent: nn.Module, child: nn.Module, inputs: Inputs
) -> tuple[Outputs, Outputs, TrainRun, float, tuple[str, ...]]:
    """Eval outputs of float64 copies of both models, :func:`train_outputs`, the parent's
    own float64 rounding noise (:mod:`.rounding_noise`; measured only when the child deviates
    by more than ``AUTO_F64_BOUND``, else 0) and the layers that round at float32 in it. The
    copies are freed on return."""
    in64 = as_float64(inputs)
    like = model_like(parent)  # the parent's train-mode noise rounds at the model's dtype
    unit = like.dtype if like is not None else None
    p64, c64 = copy_model(parent, torch.float64), copy_model(child, torch.float64)
    out_p64 = run_outputs(p64, in64)
    check_finite(out_p64, f"the parent {type(parent).__name__} (float64)")
    out_c64 = run_outputs(c64, in64)
    check_finite(out_c64, f"the child {type(child).__name__} (float64)")
    noise64 = 0.0  # before the train-mode runs, which update the copies' statistics
    lower: list[str] = []
    if compare(out_p64, out_c64)[1] > AUTO_F64_BOUND:
        rounded = rounded_outputs(p64, lambda: run_outputs(p64, in64), lower)
        noise64 = compare(out_p64, rounded)[1]
    train = train_outputs(
        lambda **kw: run_outputs(p64, in64, **kw),
        lambda **kw: run_outputs(c64, in64, **kw),
        out_p64,
        lambda: rounded_outputs(p64, lambda: run_outputs(p64, in64, train=True), unit=unit),
    )
    return out_p64, out_c64, train, noise64, tuple(lower)


def measure(
    parent: nn.Module, child: nn.Module, inputs: Inputs, parent_out: Outputs | None = None
) -> Measurement:
    """Every deviation of :class:`MorphReport` on ``inputs`` (in the models' dtype), each
    forward pass on a fresh copy (float64 copies of the whole models). ``parent_out``: the
    parent's outputs on ``inputs`` when already computed."""
    like = model_like(parent)
    dtype = like.dtype if like is not None else torch.get_default_dtype()
    out_p64, out_c64, train, noise64, lower = _float64_runs(parent, child, inputs)
    return combine(
        *(parent, child, out_p64, out_c64, inputs, parent_out, train, dtype),
        noise64=noise64,
        noise64_lower=lower,
    )


def combine(
    parent: nn.Module,
    child: nn.Module,
    out_p64: Outputs,
    out_c64: Outputs,
    inputs: Inputs,
    parent_out: Outputs | None,
    train: TrainRun,
    dtype: torch.dtype,
    child_out: Outputs | None = None,
    train_same: bool = False,
    noise64: float = 0.0,
    noise64_lower: tuple[str, ...] = (),
) -> Measurement:
    """The :class:`Measurement` from float64 outputs of both models (the child's None: not
    measured, see :class:`Measurement`); the model-dtype outputs (``parent_out``,
    ``child_out``) are computed on copies when not given."""
    dev64 = compare(out_p64, out_c64) if out_c64 is not None else None
    if dtype == torch.float64 and dev64 is not None:
        return Measurement(
            dev64,
            dev64,
            0.0,
            dev64[1],
            train.dev64,
            0,
            train.deterministic,
            train_same=train_same,
            train_noise=train.noise,
            noise64=noise64,
            noise64_lower=noise64_lower,
        )
    out_p = run_outputs(copy_model(parent), inputs) if parent_out is None else parent_out
    out_c = run_outputs(copy_model(child), inputs) if child_out is None else child_out
    check_finite(out_p, f"the parent {type(parent).__name__}")
    check_finite(out_c, f"the child {type(child).__name__}")
    return Measurement(
        dev64=dev64,
        dev=compare(out_p, out_c),
        parent_noise=compare(out_p64, out_p)[1],
        child_noise=compare(out_p64, out_c)[1],
        train64=train.dev64,
        new_layers=max(0, layer_count(child) - layer_count(parent)),
        train_deterministic=train.deterministic,
        train_same=train_same,
        train_noise=train.noise,
        noise64=noise64,
        noise64_lower=noise64_lower,
    )


def model_like(model: nn.Module) -> torch.Tensor | None:
    """The first floating parameter or buffer of ``model`` (its dtype and device)."""
    for t in (*model.parameters(), *model.buffers()):
        if t.is_floating_point():
            return t
    return None


Runner = Callable[[Inputs], Outputs]


def _try_run(run: Runner, inputs: Inputs) -> Outputs | None:
    try:
        return run(inputs)
    except (RuntimeError, ValueError, TypeError, IndexError, AssertionError):
        return None


def resolve_probe(
    model: nn.Module, probe: object, input_shape: object, run: Runner | None = None
) -> tuple[Inputs, Outputs] | None:
    """The model inputs to measure on and the parent's outputs on them: ``probe`` (floating
    tensors cast to the model's dtype and device), a random tensor of ``input_shape``, or an
    inferred input (None when none is found). ``run`` computes the parent's outputs (default:
    on a fresh copy of ``model``; never on ``model`` itself). MorphError naming
    ``probe``/``input_shape`` when the model cannot run on the given inputs."""
    run = run or (lambda inputs: run_outputs(copy_model(model), inputs))
    like = model_like(model)
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
        return _infer_probe(model, run, gen, device, dtype)
    try:
        return inputs, run(inputs)
    except MorphError:
        raise
    except Exception as exc:
        shapes = ", ".join(
            f"{tuple(t.shape)} {str(t.dtype).removeprefix('torch.')}" for t in inputs
        )
        raise MorphError(
            f"{given} does not fit {type(model).__name__}: on inputs of shape {shapes} its "
            f"forward raised {type(exc).__name__}: {exc}"
        ) from exc


def _infer_probe(
    model: nn.Module, run: Runner, gen: torch.Generator, device: torch.device, dtype: torch.dtype
) -> tuple[Inputs, Outputs] | None:
    given = default_inputs(model)
    if given is not None:
        inputs = tuple(t.to(dtype) if t.is_floating_point() else t for t in given)
        out = _try_run(run, inputs)
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
        out = _try_run(run, inputs)
        if out is not None:
            return inputs, out
    return None


def layer_probe(layer: nn.Module) -> Inputs:
    """A random input for a Conv/Linear ``layer`` alone, with a border 10× larger than the
    interior so that border errors show."""
    gen = torch.Generator().manual_seed(0)
    like = model_like(layer)
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


def _first_names(model: nn.Module) -> dict[str, str]:
    """Every name of a parameter of ``model`` → the one ``named_parameters()`` gives it (a
    module registered under several names holds its parameters under each)."""
    first: dict[int, str] = {}
    names = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names[name] = first.setdefault(id(p), name)
    return names


def _renamed(source: ParamSource, names: Mapping[str, str]) -> ParamSource:
    """``source`` naming the parent's parameters as ``named_parameters()`` does."""
    return replace(
        source,
        parent=names.get(source.parent, source.parent),
        group_of=names.get(source.group_of, source.group_of),
    )


def same_parameters(parent: nn.Module, child: nn.Module, skip: Mapping[str, ParamSource]) -> dict:
    """ParamSource of every child parameter not in ``skip``: the parent's same-named one
    (every name as ``named_parameters()`` gives it)."""
    parent_names = dict(parent.named_parameters(remove_duplicate=False))
    first_parent, first_child = _first_names(parent), _first_names(child)
    sources = {first_child.get(k, k): _renamed(v, first_parent) for k, v in skip.items()}
    for name, p in child.named_parameters():
        if name in sources:
            continue
        if name not in parent_names or parent_names[name].shape != p.shape:
            raise RuntimeError(f"child parameter {name!r} has no recorded source")
        sources[name] = ParamSource(name, name)
    return sources


def state_bytes(model: nn.Module) -> int:
    """Bytes of ``model``'s parameters and buffers."""
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))


def check_preserved(
    operation: str,
    targets: tuple[str, ...],
    tol: float | str | None,
    dtype: torch.dtype,
    m: Measurement,
) -> None:
    """Raise MorphError when measurement ``m`` breaks ``tol`` (see the module docstring) or,
    whatever ``tol``, when one of its deviations is not finite."""
    where = f"{operation} at {list(targets)}"
    values = {
        **({"float64 deviation": m.dev64[1]} if m.dev64 is not None else {}),
        "deviation": m.dev[1],
        "parent noise": m.parent_noise,
        "child noise": m.child_noise,
    }
    bad = [k for k, x in values.items() if not math.isfinite(x)]
    if bad:
        raise MorphError(
            f"{where}: the measured {', '.join(bad)} is not finite "
            f"({', '.join(f'{k} {values[k]}' for k in bad)}); refused"
        )
    if tol is None:
        return
    if tol != "auto" or dtype == torch.float64:
        bound64 = max(AUTO_F64_BOUND, NOISE_FACTOR * m.noise64) if tol == "auto" else tol
        if m.dev64[1] > bound64:
            own = (
                f" (the parent's own float64 rounding noise is {m.noise64:.1e})"
                if tol == "auto" and m.noise64
                else ""
            )
            raise MorphError(
                f"{where}: the child deviates from the parent by {m.dev64[1]:.3e} (relative, "
                f"float64 copies), above tol={tol!r} (bound {bound64:.1e}){own}; pass tol=None "
                "to accept an inexact child"
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
            f"layers); noise ratio {m.noise_ratio:.3g}; pass tol=None to accept it"
        )
