"""The morph pipeline: every public operation of :mod:`netmorph_core.torch` is a
:class:`Request` run through the same steps, in order (:data:`STEPS`):

1. ``resolve`` — the model and ``tol`` are valid; the model can be copied and measured
   (:func:`.support.check_model_state`: no TorchScript, no active pruning, every parameter
   finite); the measurement is chosen and its memory checked before anything is allocated:
   whole-model float64 copies for a model of at most :data:`WHOLE_COPY_LIMIT` parameters whose
   copies fit, else float64 one module at a time (:mod:`.streamed`);
2. ``support`` — every module the operation edits or replaces is understood
   (:func:`.support.check_editable`), every module it copies or rewrites whole carries no hook
   and no wrapper (:func:`.support.check_subtree`);
3. ``probe`` — the probe inputs and the parent's outputs on them, computed on a copy (never on
   the parent; the caller's RNG restored);
4. ``build`` — the operation edits that copy into the child (an untyped exception from the
   edit, e.g. a RuntimeError on a layout the operation does not follow, becomes a MorphError);
   a Hugging Face child's config is made to describe it, or marked so that a stock
   ``from_pretrained`` refuses it (:func:`.hf_config.sync_config`);
5. ``measure`` — the child against the parent on the probe, in eval and train mode (a child
   that fails where the parent runs is refused); with the streamed measurement, each edited
   :class:`~.streamed.Region` is also run alone on the inputs it receives in the parent;
6. ``accept`` — the deviations are checked against ``tol`` (:func:`.report.check_preserved`;
   a non-finite one is refused whatever ``tol``) and the :class:`~.report.MorphReport` is
   written.

An operation only validates its arguments and describes its edit (the builder, the modules it
touches, its regions, the bytes of its new parameters); it cannot skip a step.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import torch
from torch import nn

from .._memory import ResourceLimitError, check_working_set, memory_limit
from . import report
from .errors import MorphError, OutputShapeChanged
from .hf_config import sync_config
from .moe_eager import run_eager
from .report import (
    AUTO_F64_BOUND,
    TRAIN_BOUND,
    Inputs,
    Measurement,
    MorphReport,
    Outcome,
    Outputs,
    TrainRun,
    check_finite,
    check_preserved,
    check_tol,
    combine,
    copy_model,
    layer_probe,
    model_like,
    resolve_probe,
    same_outputs,
    same_parameters,
    state_bytes,
    train_outputs,
)
from .rounding_noise import TRAIN_NOISE_FACTOR, rounded_outputs
from .seeded import model_devices
from .streamed import (
    Captured,
    Region,
    float64_bytes,
    in_float64,
    run_low_precision,
    run_model,
)
from .streamed import check_regions as check_regions_alone
from .support import check_editable, check_model_state, check_subtree
from .surgery import check_model, count_parameters, untie

#: Models with more parameters are measured one module at a time in float64 (:mod:`.streamed`)
#: instead of through whole-model float64 copies.
WHOLE_COPY_LIMIT = 50_000_000
#: Train-mode normalisation divides by the batch's own spread, not the running one, and so
#: magnifies the child's eval-mode rounding (a float32 ResNet-18 with fresh running statistics:
#: 360×); a train-only branch the adapter did not see deviates by far more than this.
TRAIN_AMPLIFICATION = 1e4
#: The key of the parent's train-mode run with one rounding of every layer's output.
ROUNDED = "rounded"
STEPS = ("resolve", "support", "probe", "build", "measure", "accept")
COPIES, STREAMED = "float64 copies", "float64 per module"


@dataclass(frozen=True)
class Request:
    """One morph: ``build`` edits a copy of ``model`` into the child.

    ``targets``: the modules the report names; ``edits``: modules edited or replaced (each
    must be understood, :func:`.support.check_editable`); ``copies``: subtrees copied or
    rewritten whole (no hooks, no wrappers); ``regions``: parts whose function the child keeps,
    checked alone by the streamed measurement; ``new_bytes``: bytes of the new parameters (the
    memory estimate); ``same_padding``: the operation handles dynamic "same" padding convs;
    ``inplace``: the child is built in ``model`` itself (the parent is consumed; measured one
    module at a time, so no copy of the model is made); ``replaced``: modules whose
    parameters ``build`` replaces by new tensors (never writes): the copy the child is built on
    holds the parent's own tensors there instead of copies of them (:func:`child_copy`);
    ``layer_scope``: without a model
    input, compare the single target layer alone; ``budget``: checks the memory of measuring
    the child on the model inputs found, before the child is built (:mod:`.budget`);
    ``untie``: the operation replaces ``edits``, whose parameters shared with other modules
    (a tied head) get their own copy in the child instead of being refused; ``weight_norm``:
    the operation keeps the weight norm of a weight-normed layer of ``edits``
    (:mod:`.weight_normed`); ``standardised``: it keeps a weight-standardised conv of ``edits``
    and regrows its weight and gain (:mod:`.standardized`); ``aliases``: it puts a module
    computing the same function in place of ``edits``, under every name one is registered
    under (:func:`.surgery.replace_module`), so such a module may be registered under several.
    """

    operation: str
    model: nn.Module
    targets: tuple[str, ...]
    build: Callable[[nn.Module], Outcome]
    edits: tuple[str, ...] = ()
    copies: tuple[str, ...] = ()
    regions: tuple[Region, ...] = ()
    new_bytes: int = 0
    same_padding: bool = False
    inplace: bool = False
    replaced: tuple[str, ...] = ()
    probe: object = None
    input_shape: object = None
    tol: object = "auto"
    layer_scope: bool = True
    budget: Callable[[Inputs], None] | None = None
    untie: bool = False
    weight_norm: bool = False
    standardised: bool = False
    aliases: bool = False


@dataclass(frozen=True)
class Plan:
    """What ``resolve`` settled: the checked ``tol``, the model's dtype, the measurement."""

    tol: float | str | None
    dtype: torch.dtype
    measured_by: str
    params_before: int


@dataclass
class Baseline:
    """What ``probe`` found: the inputs and the parent's outputs on them (None: no model input
    was found); for the streamed measurement also the copy the child is built on, the parent's
    float64 outputs, its train-mode runs and its captured regions."""

    inputs: Inputs | None
    parent_out: Outputs | None
    work: nn.Module | None = None
    parent64: Outputs | None = None
    train: object = None
    captured: list[Captured] | None = None
    train_same: bool = False


def _where(request: Request) -> str:
    """The operation and what it morphs, for messages: "deepen at ['fc']"."""
    return f"{request.operation} at {list(request.targets)}"


def resolve(request: Request) -> Plan:
    """Step 1: the model, ``tol``, the model's state and the measurement's memory."""
    model = check_model(request.model)
    tol = check_tol(request.tol)
    check_model_state(model)
    like = model_like(model)
    dtype = like.dtype if like is not None else torch.get_default_dtype()
    itemsize = like.element_size() if like is not None else 4
    state = state_bytes(model)
    whole = state * (2 + 16 / itemsize) + request.new_bytes * 3
    n = count_parameters(model)
    if not request.inplace and n <= WHOLE_COPY_LIMIT and whole <= memory_limit():
        check_working_set(whole, f"{_where(request)}: the child and its measurement")
        return Plan(tol, dtype, COPIES, n)
    region_bytes = max(
        (state_bytes(model.get_submodule(r.parent)) for r in request.regions), default=0
    )
    streamed = (
        (0 if request.inplace else state)
        + request.new_bytes
        + float64_bytes(model)
        + region_bytes * (1 + 8 / itemsize)
        + sum(b.numel() * b.element_size() for b in model.buffers())
    )
    check_working_set(streamed, f"{_where(request)}: the child and its per-module measurement")
    return Plan(tol, dtype, STREAMED, n)


def _shared(model: nn.Module, replaced: Sequence[str]) -> dict[int, nn.Parameter]:
    """The parameters of the modules ``replaced`` (and their submodules), by id."""
    return {id(p): p for name in replaced for p in model.get_submodule(name).parameters()}


def child_copy(model: nn.Module, replaced: Sequence[str]) -> nn.Module:
    """A deep copy of ``model`` except the parameters of the modules ``replaced``, which are
    the parent's own tensors: the build replaces them by new ones, so copying them first
    would only cost time and memory. :func:`unshare` clones any the build left."""
    return copy.deepcopy(model, memo=dict(_shared(model, replaced)))


def unshare(parent: nn.Module, child: nn.Module) -> None:
    """Every parameter of ``child`` that holds storage of one of ``parent``'s tensors becomes
    a copy of it (tied parameters stay tied): the child never shares memory with its parent."""
    owned = {
        t.untyped_storage().data_ptr()
        for t in (*parent.parameters(), *parent.buffers())
        if t.device.type != "meta"
    }
    clones: dict[int, torch.Tensor] = {}
    for module in child.modules():
        for table in (module._parameters, module._buffers):
            for name, t in table.items():
                if t is None or t.device.type == "meta":
                    continue
                if t.untyped_storage().data_ptr() not in owned:
                    continue
                if id(t) not in clones:
                    copied = t.detach().clone()
                    is_param = isinstance(t, nn.Parameter)
                    clones[id(t)] = (
                        nn.Parameter(copied, requires_grad=t.requires_grad) if is_param else copied
                    )
                table[name] = clones[id(t)]


def support(request: Request) -> None:
    """Step 2: every module the operation edits, replaces, copies or rewrites is understood."""
    if request.edits:
        check_editable(
            request.model,
            request.edits,
            request.same_padding,
            request.untie,
            request.weight_norm,
            request.standardised,
            request.aliases,
        )
    check_subtree(request.model, request.copies)


def probe(request: Request, plan: Plan) -> Baseline:
    """Step 3: the probe and the parent's outputs, on a copy of the parent."""
    model = request.model
    if plan.measured_by == COPIES:
        found = resolve_probe(model, request.probe, request.input_shape)
        if found is not None and request.budget is not None:
            request.budget(found[0])
        return Baseline(*(found or (None, None)))
    # the copy becomes the child: the parent itself never runs (unless consumed: inplace)
    work = model if request.inplace else child_copy(model, request.replaced)
    found = resolve_probe(
        model,
        request.probe,
        request.input_shape,
        run=lambda inputs: run_model(work, inputs, float64=False)[0],
    )
    if found is None:
        if request.inplace:
            raise MorphError(
                f"{request.operation}: inplace=True needs a model input to measure on (none "
                "was found); pass probe= or input_shape="
            )
        return Baseline(None, None, work)
    inputs, parent_out = found
    if request.budget is not None:
        request.budget(inputs)
    try:
        parent64, captured = run_model(
            work, inputs, float64=True, capture=[r.parent for r in request.regions]
        )
    except MorphError:
        raise
    except Exception as exc:  # the model's forward raises any type
        raise MorphError(
            f"{request.operation}: {type(model).__name__} cannot be computed in float64 one "
            f"module at a time ({type(exc).__name__}: {exc}); a module probably reads another "
            "module's parameters directly; refused (a model whose float64 copies fit in "
            f"memory and has at most {WHOLE_COPY_LIMIT} parameters is measured on copies)"
        ) from exc
    check_finite(parent64, f"the parent {type(model).__name__} (float64)")
    if plan.dtype != torch.float64:
        run_low_precision(work, request.regions, captured, plan.dtype)
    same = _train_same(work, inputs, parent_out)
    train = {0: parent64, 1: parent64} if same else _train_runs(work, inputs, parent64, plan.dtype)
    return Baseline(inputs, parent_out, work, parent64, train, captured, same)


def _train_same(model: nn.Module, inputs: Inputs, eval_out: Outputs) -> bool:
    """Whether ``model``'s train-mode outputs in its dtype are its eval-mode outputs
    ``eval_out``, bitwise: train mode changes nothing on the probe (no dropout, no batch
    statistics, no train-only branch that shows), and its float64 train-mode outputs are taken
    to be its float64 eval-mode ones."""
    try:
        out = run_model(model, inputs, float64=False, train=True)[0]
    except Exception:  # train mode fails on the probe: the float64 runs record the error
        return False
    return same_outputs(out, eval_out)


def _train_runs(
    model: nn.Module, inputs: Inputs, eval_out: Outputs, dtype: torch.dtype
) -> dict[int | str, Outputs | Exception]:
    """The float64 train-mode outputs of ``model`` with seeds 0 and 1 (or the error); seed 1
    is not run when seed 0 gives the eval outputs ``eval_out`` (train mode changes nothing on
    the probe, so it is deterministic). A deterministic train mode that changes the outputs is
    also run with one rounding of every layer's output at the model's ``dtype`` (key
    ``ROUNDED``, :mod:`.rounding_noise`): the parent's own train-mode noise, which the child
    is built over."""
    runs: dict[int | str, Outputs | Exception] = {}
    for seed in (0, 1):
        if seed == 1 and not isinstance(runs[0], Exception) and same_outputs(runs[0], eval_out):
            runs[1] = runs[0]
            return runs
        try:
            runs[seed] = run_model(model, inputs, float64=True, train=True, seed=seed)[0]
        except (RuntimeError, ValueError) as exc:
            runs[seed] = exc
    first, second = runs[0], runs[1]
    if not isinstance(first, Exception) and not isinstance(second, Exception):
        if same_outputs(first, second):
            runs[ROUNDED] = rounded_outputs(
                model, lambda: run_model(model, inputs, float64=True, train=True)[0], unit=dtype
            )
    return runs


def build(request: Request, baseline: Baseline) -> tuple[nn.Module, Outcome, float]:
    """Step 4: the child, built on a copy of the parent; (child, outcome, seconds)."""
    start = time.perf_counter()
    child = baseline.work if baseline.work is not None else copy.deepcopy(request.model)
    inplace = child is request.model
    shared = [] if inplace else list(_shared(request.model, request.replaced).values())
    versions = [p._version for p in shared]
    try:
        untied = untie(child, request.edits) if request.untie else []
        outcome = request.build(child)
        if child is not request.model:
            unshare(request.model, child)
        outcome.notes = [*untied, *outcome.notes, *sync_config(child)]
    except ResourceLimitError as exc:  # the solver's own estimate: say which layers it was for
        raise ResourceLimitError(f"{_where(request)}: {exc}") from None
    except (MorphError, ValueError, TypeError):  # typed answers
        raise
    except Exception as exc:  # an edit the model's layout does not allow: RuntimeError, …
        raise MorphError(
            f"{request.operation} at {list(request.targets)}: the child cannot be built "
            f"({type(exc).__name__}: {exc}); the model is laid out in a way the operation "
            "does not follow; refused"
        ) from exc
    written = [p for p, version in zip(shared, versions) if p._version != version]
    if written:  # a defect of the operation, never the caller's: say so loudly
        raise RuntimeError(
            f"{request.operation}: the build wrote into {len(written)} of the parent's tensors "
            "it declared replaced (Request.replaced) instead of replacing them"
        )
    return child, outcome, time.perf_counter() - start


def measure(
    request: Request, plan: Plan, baseline: Baseline, child: nn.Module
) -> tuple[Measurement | None, str, tuple[tuple[str, float], ...], list[str]]:
    """Step 5: (measurement, scope, regions checked alone, notes)."""
    model, targets, op = request.model, request.targets, request.operation
    if baseline.inputs is None:
        if request.layer_scope and len(targets) == 1:
            old = copy_model(model.get_submodule(targets[0]))
            new = copy_model(child.get_submodule(targets[0]))
            note = "no model input found: deviation measured on the replaced layer alone"
            measured = measure_models(op, targets, old, new, layer_probe(old), None)
            return measured, "layer", (), [note]
        if plan.tol is None:
            note = "no model input found: pass probe= or input_shape= to measure deviation"
            return None, "none", (), [note]
        raise MorphError(
            f"{op} at {list(targets)}: tol={plan.tol!r} but the deviation could not be "
            "measured (no model input found); pass probe= or input_shape=, or tol=None"
        )
    if plan.measured_by == COPIES:
        measured = measure_models(op, targets, model, child, baseline.inputs, baseline.parent_out)
        return measured, "model", (), []
    inputs = baseline.inputs
    regions = check_regions_alone(
        op, child, request.regions, baseline.captured or [], plan.dtype, plan.tol
    )
    try:
        child_out = run_model(child, inputs, float64=False)[0]
    except Exception as exc:  # the child's forward raises any type
        raise _fails(op, targets, exc) from exc
    same = False
    if baseline.train_same:
        try:
            same = same_outputs(run_model(child, inputs, float64=False, train=True)[0], child_out)
        except Exception as exc:  # the child's forward raises any type
            raise MorphError(
                f"{op} at {list(targets)}: in train mode the child fails on the probe the "
                f"parent runs on ({type(exc).__name__}: {exc}): a branch or layer used only in "
                "training is not followed by the morph; refused"
            ) from exc
    child64 = None
    if in_float64(plan.dtype, plan.tol) or not same:
        try:
            child64 = run_model(child, inputs, float64=True)[0]
        except Exception as exc:  # the child's forward raises any type
            raise _fails(op, targets, exc) from exc
        check_finite(child64, f"the child {type(child).__name__} (float64)")
    if same:
        measured = combine(
            model,
            child,
            baseline.parent64,
            child64,
            inputs,
            baseline.parent_out,
            TrainRun(None, True),
            plan.dtype,
            child_out=child_out,
            train_same=True,
        )
        return measured, "model", regions, []
    runs = baseline.train

    def parent_train(train: bool, seed: int | str) -> Outputs:
        out = runs[seed]
        if isinstance(out, Exception):
            raise out
        return out

    train = train_outputs(
        parent_train,
        lambda **kw: run_model(child, inputs, float64=True, **kw)[0],
        rounded=lambda: parent_train(train=True, seed=ROUNDED if ROUNDED in runs else 0),
    )
    measured = combine(
        model,
        child,
        baseline.parent64,
        child64,
        inputs,
        baseline.parent_out,
        train,
        plan.dtype,
        child_out=child_out,
    )
    return measured, "model", regions, []


def _lower_note(names: tuple[str, ...]) -> str:
    """Which layers of the parent round at float32 inside its float64 forward."""
    if not names:
        return ""
    more = f" and {len(names) - 2} more" if len(names) > 2 else ""
    return (
        f" (at float32 for {', '.join(repr(n) for n in names[:2])}{more}, which compute in "
        "float32 inside the float64 model: the parent carries float32 rounding)"
    )


def _fails(op: str, targets: Sequence[str], exc: Exception) -> MorphError:
    return MorphError(
        f"{op} at {list(targets)}: the child fails on the probe the parent runs "
        f"({type(exc).__name__}: {exc}); the model uses the morphed layers in a way the "
        "adapter does not follow; refused"
    )


def _shape_changed(request: Request, exc: OutputShapeChanged) -> MorphError:
    return MorphError(
        f"{request.operation} at {list(request.targets)} on {type(request.model).__name__}: "
        f"{exc}; the child returns outputs of other shapes: the model returns the grown "
        "hidden states or stream itself (morph a model with an output head: lm_head, "
        "classifier), or its forward reads the layer's sizes (padding computed from "
        "kernel_size); refused"
    )


def measure_models(
    op: str,
    targets: Sequence[str],
    parent: nn.Module,
    child: nn.Module,
    inputs: Inputs,
    parent_out: Outputs | None,
) -> Measurement:
    """:func:`.report.measure` on whole-model copies; a child that fails on inputs the parent
    runs on is refused with a MorphError naming the operation, the layers and the error."""
    try:
        return report.measure(parent, child, inputs, parent_out)
    except MorphError:
        raise
    except Exception as exc:  # the child's forward raises any type
        raise _fails(op, targets, exc) from exc


def accept(
    request: Request,
    plan: Plan,
    child: nn.Module,
    outcome: Outcome,
    seconds: float,
    found: tuple[Measurement | None, str, tuple[tuple[str, float], ...], list[str]],
    inputs: Inputs | None,
) -> MorphReport:
    """Step 6: check ``tol`` and write the report."""
    measured, scope, regions, extra = found
    op, targets, tol, dtype = request.operation, request.targets, plan.tol, plan.dtype
    notes = [*outcome.notes, *extra]
    if measured is not None:
        check_preserved(op, targets, tol, dtype, measured)
        if measured.noise64 and measured.dev64 and measured.dev64[1] > AUTO_F64_BOUND:
            notes.append(
                f"float64 deviation {measured.dev64[1]:.1e} is past 1e-8: one rounding of every "
                f"layer's output moves the parent's own float64 outputs by "
                f"{measured.noise64:.1e} on the probe" + _lower_note(measured.noise64_lower)
            )
    train64 = measured.train64 if measured else None
    holds = None
    unverified = False
    if measured and measured.train_same:
        holds = True
        train64 = measured.dev64
    elif train64 is not None:
        holds = train64[1] <= max(1e-9, 10 * measured.dev64[1])
        broken = train64[1] > max(TRAIN_BOUND, TRAIN_AMPLIFICATION * measured.dev64[1])
        if broken and measured.train_deterministic and outcome.train_exact:
            unverified = train64[1] <= TRAIN_NOISE_FACTOR * measured.train_noise
            if unverified:
                notes.append(
                    "train mode not verified: on the probe one rounding of every layer's "
                    "output moves the parent's own train-mode outputs by "
                    f"{measured.train_noise:.1e} (relative: batch statistics that cancel most "
                    "digits, e.g. over very few values), and the child's train-mode deviation "
                    f"{train64[1]:.1e} is within {TRAIN_NOISE_FACTOR:g}× that; give a larger "
                    "probe batch or input to verify train mode"
                )
            elif tol is not None:
                raise MorphError(
                    f"{op} at {list(targets)}: in train mode the child deviates from the parent "
                    f"by {train64[1]:.3e} (relative, float64) while eval mode agrees and the "
                    "parent's train mode is deterministic on the probe (one rounding of every "
                    f"layer's output moves it by {measured.train_noise:.1e}): a branch or layer "
                    "used only in training is not preserved; refused"
                )
    if measured and train64 is None and not holds:
        notes.append("train mode could not run on the probe: its deviation is not measured")
    elif measured and not holds and not unverified:
        notes.append("train mode differs (random layers such as dropout, or by design)")
    modes = ("eval",) if measured else ()
    if holds:
        modes = ("eval", "train")
    measured_by = plan.measured_by if scope == "model" else scope
    return MorphReport(
        operation=op,
        targets=targets,
        dtype=str(dtype).removeprefix("torch."),
        scope=scope,
        probe_shapes=tuple(tuple(t.shape) for t in inputs) if inputs is not None else (),
        max_abs_dev_f64=measured.dev64[0] if measured and measured.dev64 else None,
        rel_dev_f64=measured.dev64[1] if measured and measured.dev64 else None,
        max_abs_dev=measured.dev[0] if measured else None,
        rel_dev=measured.dev[1] if measured else None,
        parent_noise=measured.parent_noise if measured else None,
        noise_ratio=measured.noise_ratio if measured and dtype != torch.float64 else None,
        train_max_abs_dev_f64=train64[0] if train64 else None,
        train_rel_dev_f64=train64[1] if train64 else None,
        train_mode_holds=holds,
        params_before=plan.params_before,
        params_after=count_parameters(child),
        new_nonzero_ratio=outcome.new_nonzero / outcome.new_total if outcome.new_total else 1.0,
        residual=float(outcome.residual),
        exact=bool(outcome.exact),
        iterations=int(outcome.iterations),
        seconds=seconds,
        notes=tuple(notes),
        param_sources=MappingProxyType(same_parameters(request.model, child, outcome.sources)),
        modes=modes,
        measured_by=measured_by,
        regions=regions,
    )


def run(request: Request) -> tuple[nn.Module, MorphReport]:
    """Run ``request`` through every step (module docstring); returns (child, report). The
    parent (unless ``inplace``), the caller's torch RNG state and the returned child are not
    changed by the measurement. With ``inplace`` the child is the parent object itself; a
    refusal after the edit leaves it edited (reload it). Hugging Face experts compute with
    the "eager" implementation meanwhile (the default has no float64 kernel, :mod:`.moe_eager`);
    the child gets the parent's."""
    return run_eager(request.model, lambda: _steps(request))


def _steps(request: Request) -> tuple[nn.Module, MorphReport]:
    plan = resolve(request)
    support(request)
    with torch.random.fork_rng(devices=model_devices(request.model)):
        baseline = probe(request, plan)
        child, outcome, seconds = build(request, baseline)
        try:
            found = measure(request, plan, baseline, child)
        except OutputShapeChanged as exc:
            raise _shape_changed(request, exc) from exc
    report = accept(request, plan, child, outcome, seconds, found, baseline.inputs)
    return child, report


def run_on_model(
    operation: str,
    model: nn.Module,
    targets: tuple[str, ...],
    build: Callable[[nn.Module], Outcome],
    probe: object,
    tol: float | str | None,
    inplace: object,
    default_probe: Callable[[], tuple[torch.Tensor, ...]],
    **request: object,
) -> tuple[nn.Module, MorphReport]:
    """:func:`run` for an operation on a whole model (the transformer, state-space,
    encoder–decoder and hierarchical operations): probed on ``probe``, else on
    ``default_probe()``; ``inplace`` must be a bool (TypeError otherwise)."""
    if not isinstance(inplace, bool):
        raise TypeError(f"inplace must be a bool, got {inplace!r}")
    return run(
        Request(
            operation,
            model,
            targets,
            build,
            probe=default_probe() if probe is None else probe,
            tol=tol,
            layer_scope=False,
            inplace=inplace,
            **request,
        )
    )
