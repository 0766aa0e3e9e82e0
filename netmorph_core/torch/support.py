"""Which layers the adapter understands well enough to morph, checked before any work.

A morph replaces or edits a layer on the premise that the layer computes nn.ConvNd's or
nn.Linear's function of its ``weight`` and ``bias``, that its parent calls it as a module, and
that nothing else observes or derives from it. :func:`check_editable` enforces all of that for
every module an operation replaces or edits (deepen, grow_kernel, morph_subnet, morph_stacked,
morph_module, widen's producers and consumers) and raises a typed error naming the module and
the reason otherwise:

- the class: exactly Conv1d/2d/3d or Linear (or transformers' ``Conv1D``, the linear layer
  y = x·W + b), a subclass known to compute its base's function (:data:`SAME_FUNCTION`:
  timm's Linear), or a subclass that overrides none of ``forward``,
  ``_conv_forward``, ``__call__`` (weight standardisation, TF-style dynamic "same" padding,
  LoRA or quantisation wrappers compute another function of the same weight) → MorphError.
  Recognised dynamic "same" padding convs (:mod:`.samepad`) are verified and handled exactly
  by the operations that replace the layer (not by widen); so are weight-standardised convs
  (:mod:`.standardized`: replaced by plain convs of their standardised weight, or kept by widen
  and grow_kernel, which regrow their weight and gain);
- the parent: the nearest ancestor that is not a plain ModuleList/ModuleDict (a subclass with
  its own forward counts) must call the layer.
  nn.Sequential does; other torch.nn modules (nn.MultiheadAttention, nn.TransformerEncoderLayer)
  read their layers' parameters directly, so they are refused; a user module is traced with
  torch.fx (every submodule a leaf) and refused when it reads the layer's parameters (get_attr)
  or never calls it. An untraceable parent cannot be inspected: the morph goes ahead and the
  measured deviation (the report) is the check;
- hooks (forward, forward-pre, backward, state-dict, gradient hooks on its parameters; old-style
  ``torch.nn.utils.weight_norm``/``spectral_norm`` are forward-pre hooks) and parametrizations
  (``torch.nn.utils.parametrize``, ``parametrizations.weight_norm``/``spectral_norm``) → refused:
  kept on a replaced module they would observe or rewrite a different function (a weight norm
  alone is replaced by W or kept where the operation says so: ``tied_ok``, ``weight_norm``);
- sharing: a module registered under several names, or a parameter shared with another module
  (tied weights) → MorphError naming both (the morph would untie them), except a module that
  an operation replaces by a module computing the same function (``aliases_ok``): the
  replacement goes in under every name (:func:`.surgery.replace_module`), so they stay one;
- values: parameters or buffers on the meta device or uninitialised (lazy) → ValueError;
  non-floating ones (quantised, integer, complex) → TypeError;
- types the adapter does not understand (quantised layers, LoRA-style wrappers, pruning,
  parametrizations, TorchScript: :mod:`.wrappers`) → MorphError naming what it is and what to
  do.

:func:`check_model_state` checks the whole model before it is copied: no TorchScript, no
active pruning (its tensors cannot be deep-copied), every parameter and buffer finite (a NaN
would make every measurement NaN). :func:`check_subtree` checks the modules an operation copies
or re-creates whole (a block add_block copies, every module grow_width rewrites): no hooks
(a copied hook would act on the new block) and no type of :mod:`.wrappers`.

:func:`check_new_entries` bounds the size of what a morph allocates (ResourceLimitError).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable

import torch
from torch import fx, nn
from torch.nn.utils import parametrize

from .._memory import check_working_set
from .errors import MorphError
from .forward_kept import check_initialised
from .layer_reads import attribute_reads, metadata_read
from .samepad import is_same_padding_conv, verify_same_padding
from .standardized import is_weight_standardised
from .tracing import shell_copy
from .transformer_layout import as_matrix, is_conv1d
from .weight_normed import is_weight_normed
from .wrappers import pruning_methods, unsupported_kind

KNOWN_LAYERS: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_FUNCTION_METHODS = ("forward", "_conv_forward", "__call__", "_call_impl")
_HOOKS = {
    "_forward_pre_hooks": "forward pre-hook",
    "_forward_hooks": "forward hook",
    "_backward_pre_hooks": "backward pre-hook",
    "_backward_hooks": "backward hook",
    "_state_dict_pre_hooks": "state_dict pre-hook",
    "_state_dict_hooks": "state_dict hook",
    "_load_state_dict_pre_hooks": "load_state_dict pre-hook",
    "_load_state_dict_post_hooks": "load_state_dict post-hook",
}
#: Forward hooks that only record a module's output and change nothing: transformers' output
#: capture (active only inside a forward that asks for hidden states or attentions; SegFormer's
#: segmentation model always does), as (module, qualified name).
OBSERVERS = frozenset(
    {
        (
            "transformers.utils.output_capturing",
            "install_output_capuring_hook.<locals>.output_capturing_hook",
        )
    }
)
#: The load_state_dict pre-hook torch's parametrized weight norm registers: it renames an old
#: checkpoint's weight_g/weight_v on loading, and changes no computation.
WEIGHT_NORM_HOOKS = frozenset(
    {("torch.nn.utils.parametrizations", "weight_norm.<locals>._weight_norm_compat_hook")}
)
#: load_state_dict pre-hooks that only rename an old checkpoint's keys on loading and compute
#: nothing: ESM's moves per-layer rotary ``inv_freq`` buffers to the model-level one.
KEY_RENAMING_HOOKS = frozenset({("transformers.models.esm.modeling_esm", "EsmModel.load_hook")})
_LISTS = (nn.ModuleList, nn.ModuleDict)
#: (module, qualified name) of subclasses whose overridden forward computes their base's
#: function: timm's Linear casts weight and bias to the input's dtype under TorchScript only.
SAME_FUNCTION = frozenset({("timm.layers.linear", "Linear")})


def _hook_name(hook: object) -> str:
    hook = getattr(hook, "hook", hook)  # load_state_dict hooks are wrapped
    return getattr(hook, "__qualname__", None) or type(hook).__qualname__


def _overrides(cls: type, base: type) -> list[str]:
    return [m for m in _FUNCTION_METHODS if getattr(cls, m, None) is not getattr(base, m, None)]


def check_layer_class(
    layer: nn.Module,
    at: str,
    same_padding: bool = False,
    replaced: bool = False,
    standardised: bool = False,
) -> None:
    """``layer`` must compute nn.ConvNd's / nn.Linear's function of its weight and bias, or
    (``same_padding``: the operation handles it) be a verified dynamic "same" padding conv, or
    (``replaced``: the operation replaces the layer; ``standardised``: it regrows the layer's
    weight and gain, :func:`.standardized.regrow`) a verified weight-standardised conv
    (:mod:`.standardized`)."""
    cls = type(layer)
    if cls in KNOWN_LAYERS or (cls.__module__, cls.__qualname__) in SAME_FUNCTION:
        return
    if is_weight_standardised(layer):
        if not (replaced or standardised):
            raise MorphError(
                f"{at!r} is {cls.__qualname__}, a weight-standardised conv: deepen, "
                "morph_subnet, morph_stacked and morph_module replace it by plain convs of its "
                "standardised weight, widen and grow_kernel regrow its weight and gain; this "
                "operation does neither, and new entries would change its per-filter mean "
                "and variance; refused"
            )
        return
    if is_same_padding_conv(layer):
        if not same_padding:
            raise MorphError(
                f"{at!r} is {cls.__qualname__}, a dynamic 'same' padding conv: deepen, "
                "widen, grow_kernel, morph_subnet, morph_stacked and morph_module handle it, "
                "this operation does not; refused"
            )
        verify_same_padding(layer, at)
        return
    base = next(b for b in KNOWN_LAYERS if isinstance(layer, b))
    overridden = _overrides(cls, base)
    if overridden and not (base is nn.Linear and computes_linear(layer)):
        raise MorphError(
            f"{at!r} is {cls.__qualname__} (from {cls.__module__}), a subclass of "
            f"nn.{base.__name__} that overrides "
            f"{', '.join(overridden)}: it may apply another function of its weight (weight "
            "standardisation, dynamic 'same' padding, a wrapper), so no morph of it can be "
            "shown exact; refused"
        )


_LINEAR_CLASSES: dict[type, bool] = {}


def computes_linear(layer: nn.Linear) -> bool:
    """Whether ``layer``'s class computes x·Wᵀ + b of whatever weight and bias it holds (Falcon's
    ``FalconLinear``): its forward on a float64 copy given other random shapes and values, with
    and without bias, against ``F.linear`` (once per class)."""
    cls = type(layer)
    if cls not in _LINEAR_CLASSES:
        gen = torch.Generator().manual_seed(0)
        ok = True
        for bias in (True, False):
            probe = shell_copy(layer)
            probe.weight = nn.Parameter(torch.randn(5, 7, generator=gen, dtype=torch.float64))
            probe.bias = (
                nn.Parameter(torch.randn(5, generator=gen, dtype=torch.float64)) if bias else None
            )
            probe.in_features, probe.out_features = 7, 5
            x = torch.randn(2, 3, 7, generator=gen, dtype=torch.float64)
            try:
                with torch.no_grad():
                    y = probe(x)
                want = nn.functional.linear(x, probe.weight, probe.bias)
                ok = (
                    ok
                    and isinstance(y, torch.Tensor)
                    and torch.allclose(y, want, rtol=1e-12, atol=1e-12)
                )
            except Exception:  # a forward that fails on other shapes is not x·Wᵀ + b
                ok = False
        _LINEAR_CLASSES[cls] = ok
    return _LINEAR_CLASSES[cls]


def _calls_members(module: nn.Module) -> bool:
    """Whether ``module`` may call its members: any module but a plain ModuleList/ModuleDict
    (those have no forward); a subclass with its own forward (timm's ``MixedConv2d``, a
    ModuleDict that splits its input among its convs) does."""
    if not isinstance(module, _LISTS):
        return True
    return type(module).forward is not nn.Module.forward


def _owner(model: nn.Module, at: str) -> tuple[str, nn.Module, str]:
    """(name, module, path of ``at`` relative to it) of the nearest ancestor of ``at`` that
    may call it (:func:`_calls_members`)."""
    parts = at.split(".")
    for i in range(len(parts) - 1, -1, -1):
        name = ".".join(parts[:i])
        module = model.get_submodule(name) if name else model
        if _calls_members(module) or i == 0:
            return name, module, ".".join(parts[i:])
    raise AssertionError("unreachable")


class _LeafTracer(fx.Tracer):
    """torch.fx's tracer with every submodule a leaf: one module's own forward, one level."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return True


def check_called_by_parent(model: nn.Module, at: str, aliases_ok: bool = False) -> None:
    """The layer ``at`` must be called as a module by its parent (see the module docstring);
    with ``aliases_ok``, a layer registered under several names must be called by one of its
    parents at least, and read directly by none."""
    names = module_aliases(model, at) if aliases_ok else [at]
    if not any([_called_by_parent(model, n) for n in names]):  # every parent is checked
        name, owner, _ = _owner(model, at)
        cls = type(owner).__qualname__
        where = f"{name!r} ({cls})" if name else f"the model ({cls})"
        raise MorphError(
            f"{at!r}: {where} never calls it as a module in its forward; the adapter cannot "
            "tell how it is used; refused"
        )


def _called_by_parent(model: nn.Module, at: str) -> bool:
    """Whether the parent of ``at`` calls it as a module (True where it cannot be traced);
    MorphError where the parent is a torch.nn module or reads the layer's parameters."""
    name, owner, rel = _owner(model, at)
    cls = type(owner)
    where = f"{name!r} ({cls.__qualname__})" if name else f"the model ({cls.__qualname__})"
    if isinstance(owner, nn.Sequential) and not _overrides(cls, nn.Sequential):
        return True
    builtin = cls.__module__.startswith("torch.") and not isinstance(owner, fx.GraphModule)
    if builtin and not isinstance(owner, _LISTS):
        raise MorphError(
            f"{at!r} belongs to {where}, a torch.nn module that may read its layers' parameters "
            "directly instead of calling them (e.g. nn.MultiheadAttention's in/out projections, "
            "the fast path of nn.TransformerEncoderLayer); refused"
        )
    try:  # traced on a copy without values: tracing runs the owner's forward code
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            graph = _LeafTracer().trace(shell_copy(owner))
    except Exception:  # an untraceable parent cannot be inspected (module docstring)
        return True
    reads = sorted(
        str(n.target)
        for n in graph.nodes
        if n.op == "get_attr" and str(n.target).startswith(rel + ".") and not metadata_read(n)
    )
    if reads:
        raise MorphError(
            f"{at!r}: {where} reads {', '.join(reads)} directly in its forward instead of (or "
            "besides) calling the layer; a replaced layer would break it; refused"
        )
    return any(n.op == "call_module" and n.target == rel for n in graph.nodes)


def check_no_hooks(module: nn.Module, at: str, parametrized: bool = False) -> None:
    """No hook or parametrization (unless ``parametrized``: an operation that carries it
    over) may be attached to ``module`` or its own parameters."""
    if not parametrized and parametrize.is_parametrized(module):
        found = {k: [type(p).__name__ for p in v] for k, v in module.parametrizations.items()}
        raise MorphError(
            f"{at!r} ({type(module).__qualname__}) has parametrizations {found} "
            "(torch.nn.utils.parametrize, e.g. weight_norm or spectral_norm): the morph cannot "
            "carry them over exactly; remove them first (parametrize.remove_parametrizations)"
        )
    known = OBSERVERS | KEY_RENAMING_HOOKS | (WEIGHT_NORM_HOOKS if parametrized else frozenset())
    hooks = [
        f"{what} {_hook_name(h)}"
        for attr, what in _HOOKS.items()
        for h in (getattr(module, attr, None) or {}).values()
        if (getattr(h, "__module__", None), _hook_name(h)) not in known
    ]
    for pname, p in module.named_parameters(recurse=False):
        for attr in ("_backward_hooks", "_post_accumulate_grad_hooks"):
            found = (getattr(p, attr, None) or {}).values()
            hooks += [f"gradient hook {_hook_name(h)} on {pname!r}" for h in found]
    if hooks:
        raise MorphError(
            f"{at!r} ({type(module).__qualname__}) has {', '.join(hooks)}: kept on the morphed "
            "module they would see a different computation (old-style "
            "torch.nn.utils.weight_norm/spectral_norm are such hooks); remove them first"
        )


def check_values(module: nn.Module, at: str) -> None:
    """The parameters and buffers of ``module`` must hold floating-point values."""
    for pname, t in (*module.named_parameters(), *module.named_buffers()):
        if isinstance(t, (nn.parameter.UninitializedParameter, nn.parameter.UninitializedBuffer)):
            raise ValueError(f"{at!r} has uninitialized (lazy) parameters; run a forward first")
        if t.is_meta:
            raise ValueError(
                f"{at!r}: {pname!r} is on the meta device and holds no values to morph; "
                "materialise the model first (to_empty() then load_state_dict)"
            )
        if pname.rpartition(".")[2] == "num_batches_tracked":
            continue
        if not t.is_floating_point():
            raise TypeError(
                f"{at!r}: {pname!r} has dtype {t.dtype}; only floating-point layers can be morphed"
            )


def module_aliases(model: nn.Module, at: str) -> list[str]:
    """Every name under which the module ``at`` is registered in ``model`` (``[at]`` for a
    module registered once)."""
    target = model.get_submodule(at)
    found = [n for n, m in model.named_modules(remove_duplicate=False) if m is target]
    return found or [at]


def check_registered_once(model: nn.Module, names: Iterable[str]) -> None:
    """Each module ``names`` must be registered under one name only."""
    aliases: dict[int, list[str]] = {}  # one walk for every name
    for n, m in model.named_modules(remove_duplicate=False):
        aliases.setdefault(id(m), []).append(n)
    for n in sorted(set(names)):
        found = aliases.get(id(model.get_submodule(n)), [n])
        if len(found) > 1:
            raise MorphError(
                f"{n!r} is one module registered under several names {found}; morphing one "
                "name would untie the others; refused"
            )


def check_unshared(
    model: nn.Module, names: Iterable[str], tied_ok: bool = False, aliases_ok: bool = False
) -> None:
    """The modules ``names`` must be registered once and own their parameters alone
    (``tied_ok``: parameters they share are allowed; the operation unties them,
    :func:`.surgery.untie`; ``aliases_ok``: a module may be registered under several names,
    the operation replacing it under each)."""
    names = set(names)
    if not aliases_ok:
        check_registered_once(model, names)
    if tied_ok:
        return
    owners: dict[int, list[str]] = {}
    for pname, p in model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(p), []).append(pname)
    for shared in owners.values():
        modules = {p.rpartition(".")[0] for p in shared}
        if len(shared) < 2 or not modules & names:
            continue
        if len({id(model.get_submodule(m)) for m in modules}) > 1:  # not one module, aliased
            raise MorphError(
                f"tied weights: {' and '.join(shared)} are one Parameter; morphing "
                f"{sorted(modules & names)} would untie it; refused"
            )


def check_model_values(model: nn.Module) -> None:
    """No parameter or buffer of ``model`` may be on the meta device (nothing can be measured)."""
    for pname, t in (*model.named_parameters(), *model.named_buffers()):
        if t.is_meta:
            raise ValueError(
                f"{type(model).__name__}: {pname!r} is on the meta device and holds no values; "
                "materialise the model first (to_empty() then load_state_dict)"
            )


def check_attributes_unread(model: nn.Module, at: str, chain: bool = False) -> None:
    """No ancestor of the layer ``at`` reads an attribute of it in its forward
    (:func:`.layer_reads.attribute_reads`: Whisper's ``self.conv1.stride[0]``, Bloom's
    ``self.dense.weight``): the module that replaces the layer would not have it. With
    ``chain`` (the replacement is a Sequential, put in place as a
    :class:`.layer_reads.Chain`), reads of its weight's dtype or device are answered."""
    for read in attribute_reads(model, at):
        if not (chain and read.chain):
            raise MorphError(
                f"{at!r}: {read.where} reads {read.attr} in its forward; the module that "
                "replaces the layer would not have that attribute; refused"
            )


def check_editable(
    model: nn.Module,
    names: Iterable[str],
    same_padding: bool = False,
    tied_ok: bool = False,
    weight_norm: bool = False,
    standardised: bool = False,
    aliases_ok: bool = False,
) -> None:
    """Every module ``names`` of ``model`` may be replaced or edited by a morph (see the module
    docstring); conv/linear layers must also be understood and called by their parent.
    ``same_padding``: the operation handles dynamic "same" padding convs (:mod:`.samepad`);
    ``tied_ok``: the operation replaces the modules, so parameters they share with others are
    untied in the child (:func:`.surgery.untie`) instead of refused, and a weight-normed layer
    is replaced by the plain layer of its weight (:mod:`.weight_normed`); ``weight_norm``: the
    operation keeps a weight-normed layer's weight norm (:func:`.weight_normed.regrow`);
    ``standardised``: the operation keeps a weight-standardised conv and regrows its weight and
    gain (:func:`.standardized.regrow`); ``aliases_ok``: the operation replaces the module by
    one computing the same function under every name it is registered under."""
    names = list(names)
    check_model_values(model)
    if not aliases_ok:  # first: the other checks would look at one name only
        check_registered_once(model, names)
    for at in names:
        module = model.get_submodule(at)
        normed = (tied_ok or weight_norm) and is_weight_normed(module)  # see weight_normed
        if not normed:
            check_understood(module, at)
        check_values(module, at)
        check_no_hooks(module, at, parametrized=normed)
        if isinstance(module, KNOWN_LAYERS):
            check_layer_class(module, at, same_padding, tied_ok, standardised)
        if isinstance(module, KNOWN_LAYERS) or is_conv1d(module):
            check_called_by_parent(model, at, aliases_ok)
    check_unshared(model, names, tied_ok, aliases_ok)


def check_understood(module: nn.Module, at: str) -> None:
    """``module`` must not be a type of :mod:`.wrappers` (MorphError naming it otherwise)."""
    kind = unsupported_kind(module)
    if kind is not None:
        raise MorphError(f"{at!r} is {kind}; refused")


def check_subtree(model: nn.Module, roots: Iterable[str]) -> None:
    """No module under ``roots`` (copied or rewritten whole by the operation) may carry a hook
    or be a type of :mod:`.wrappers`."""
    for root in roots:
        top = model.get_submodule(root) if root else model
        for rel, module in top.named_modules():
            name = ".".join(p for p in (root, rel) if p)
            check_understood(module, name)
            check_no_hooks(module, name or type(model).__name__)


def _non_finite(t: torch.Tensor) -> str | None:
    if not t.is_floating_point() and not t.is_complex():
        return None
    if t.numel() and math.isfinite(abs(complex(t.sum()))):
        return None  # a NaN or Inf makes the sum non-finite (an overflow only sends it below)
    finite = torch.isfinite(t)
    if bool(finite.all()):
        return None
    nan = int(torch.isnan(t).sum())
    return f"{nan} NaN, {t.numel() - int(finite.sum()) - nan} Inf"


def check_model_state(model: nn.Module) -> None:
    """The whole model may be copied and measured: not TorchScript, no active pruning, every
    parameter and buffer finite (MorphError naming the modules or tensors otherwise)."""
    if isinstance(model, (torch.jit.ScriptModule, torch.jit.RecursiveScriptModule)):
        raise MorphError(f"the model is {unsupported_kind(model)}; refused")
    pruned = [(n or "the model", pruning_methods(m)) for n, m in model.named_modules()]
    pruned = [f"{n!r} ({', '.join(p)})" for n, p in pruned if p]
    if pruned:
        raise MorphError(
            f"{', '.join(pruned[:8])} are pruned with torch.nn.utils.prune: their weights are "
            "recomputed from weight_orig and weight_mask and cannot be copied; make the pruning "
            "permanent first (torch.nn.utils.prune.remove(module, 'weight')); refused"
        )
    for name, module in model.named_modules():
        if isinstance(module, (torch.jit.ScriptModule, torch.jit.RecursiveScriptModule)):
            raise MorphError(f"{name!r} is {unsupported_kind(module)}; refused")
        computed = [
            k
            for k, t in vars(module).items()
            if isinstance(t, torch.Tensor) and t.grad_fn is not None
        ]
        if computed:
            where = name or type(model).__name__
            check_no_hooks(module, where)
            raise MorphError(
                f"{where!r} holds {computed}, tensors computed by autograd (not leaves), which "
                "cannot be copied; detach them or compute them in forward; refused"
            )
    check_initialised(model)
    bad = []
    for name, t in (*model.named_parameters(), *model.named_buffers()):
        if t.is_meta:
            continue
        found = _non_finite(t.detach())
        if found:
            bad.append(f"{name} ({found})")
    if bad:
        shown = ", ".join(bad[:8]) + (f" and {len(bad) - 8} more" if len(bad) > 8 else "")
        raise MorphError(
            f"{type(model).__name__} has parameters or buffers that are not finite: {shown}; "
            "every deviation measured through them would be NaN; refused"
        )


def check_new_entries(entries: int, like: torch.Tensor, what: str) -> None:
    """Bound the memory of ``entries`` new weight entries (the model's dtype plus a float64
    working copy) before allocating them; ResourceLimitError naming ``what`` otherwise."""
    check_working_set(entries * (like.element_size() + 8), what)


def layer_entries(
    c_in: int, widths: Iterable[int], kernels: Iterable[tuple[int, ...]], groups: int = 1
) -> int:
    """Weight entries of a chain of layers from ``c_in`` channels through ``widths`` with
    ``kernels`` (() for Linear), every layer a conv of ``groups`` groups."""
    total = 0
    for w, k in zip(widths, kernels):
        total += c_in // groups * w * math.prod(k)
        c_in = w
    return total


def check_widen_memory(
    model: nn.Module, producers: Iterable[str], consumers: Iterable[str], width: int
) -> None:
    """Bound the memory of widening ``producers`` to ``width`` output channels: the channel
    maps (2 int64 per channel), the producers' new weights and, once known, the consumers'
    (their input columns grow by width/C)."""
    layers = [as_matrix(model.get_submodule(n)) for n in producers]
    channels = layers[0].shape[0]
    entries = sum(width * math.prod(w.shape[1:]) for w in layers)
    for name in consumers:
        w = as_matrix(model.get_submodule(name))
        cols = -(-w.shape[1] * width // channels) if w.dim() >= 2 else 0
        entries += w.shape[0] * cols * math.prod(w.shape[2:])
    like = layers[0]
    check_working_set(
        16 * width + entries * (like.element_size() + 8),
        f"widen {list(producers)} to width={width}",
    )
