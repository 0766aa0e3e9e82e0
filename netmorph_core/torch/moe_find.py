"""Mixture-of-experts feed-forwards recognised by structure, not by class names.

A module is a mixture of experts (:func:`find_moe`) when it holds

- a **router**: a ``Linear(d, E)`` (with or without bias), a module whose parameters are an
  E × d ``weight`` (and an E ``bias``, and per-expert statistics of E entries such as a
  score-correction bias), or a module holding one such Linear, E ≥ 2;
- **E experts**: an ``nn.ModuleList`` of MLPs of Linear layers (one or two inputs d → I, one
  output I → d; older Mixtral ``w1``/``w3``/``w2``), or one module with fused 3-D parameters
  (transformers ≥ 5: ``gate_up_proj`` E × 2I × d holding [G; U] and ``down_proj`` E × d × I,
  or ``up_proj`` alone; or transposed, E × d × 2I and E × I × d, a token multiplied as x·W;
  optionally with biases ``gate_up_proj_bias`` E × 2I and ``down_proj_bias`` E × d; gate and
  up interleaved [g₀, u₀, g₁, u₁, …] where the module declares ``is_concatenated=False``, as
  GPT-OSS's experts do);
- optionally **shared experts** (MLPs of Linear layers, Qwen2-MoE's ``shared_expert``) and a
  **shared-expert gate** ``Linear(d, 1)``.

Any other part holding parameters is refused by name, and so are fused experts laid out
another way (other names, one bias without the other, shapes that fit no layout or contradict
the module's declared ``has_bias``/``is_transposed``, a post-expert norm). The top-k and
whether the top-k weights are renormalised are read from the router, the module or the
config.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from .errors import MorphError

#: Names of an MLP's output layer, read only where every layer is d × d.
OUTPUT_NAMES = frozenset({"down_proj", "w2", "fc2", "c_proj", "dense_4h_to_h", "wo", "out_proj"})
#: Fused expert parameters followed (biases aside): (names, gated).
FUSED = {("down_proj", "gate_up_proj"): True, ("down_proj", "up_proj"): False}
#: Attributes of a Hugging Face experts module that declare its layout.
FLAGS = ("has_bias", "is_transposed", "is_concatenated", "has_post_expert_norm")


@dataclass(frozen=True)
class Fused:
    """The layout of fused experts: ``hidden`` I; ``gated`` (``gate_up_proj``, else
    ``up_proj``); ``transposed``: (E, d, kI) and (E, I, d), a token multiplied as x·W, else
    (E, kI, d) and (E, d, I); ``interleaved``: gate and up alternate along the hidden axis
    ([g₀, u₀, g₁, u₁, …]), else [G; U]; ``biased``: ``<name>_bias`` (E, kI) and (E, d)."""

    hidden: int
    gated: bool
    transposed: bool = False
    interleaved: bool = False
    biased: bool = False


@dataclass(frozen=True)
class Mlp:
    """An MLP of Linear layers: ``inputs`` (d → hidden, one or two) and ``output`` (hidden →
    d), names relative to the MLP."""

    inputs: tuple[str, ...]
    output: str
    hidden: int


@dataclass(frozen=True)
class MoeBlock:
    """One mixture-of-experts feed-forward (module docstring), names qualified.

    ``experts_mlp``: the layout of every expert of a ModuleList (None when ``fused``: the
    experts module's 3-D parameters, gated or not, ``transposed``, ``interleaved`` and
    ``biased`` as in :class:`Fused`). ``top_k``/``renormalise``: read from the
    module, its router or the config (None where none says). ``router_extras``: the router's
    per-expert statistics (E entries each, reading no input)."""

    path: str
    d_model: int
    router: str
    router_bias: bool
    experts: str
    count: int
    hidden: int
    fused: bool
    gated: bool
    experts_mlp: Mlp | None
    shared: tuple[tuple[str, Mlp], ...]
    shared_gate: str | None
    top_k: int | None
    renormalise: bool | None
    router_extras: tuple[str, ...] = ()
    transposed: bool = False
    interleaved: bool = False
    biased: bool = False


def _attribute(objects: tuple[object, ...], names: tuple[str, ...]) -> object:
    for obj in objects:
        for name in names:
            value = getattr(obj, name, None)
            if value is not None:
                return value
    return None


def mlp_layout(module: nn.Module, d: int) -> Mlp | None:
    """The :class:`Mlp` layout of ``module``; None when it is not an MLP of Linear layers.
    Where its hidden size is d (every layer d × d: shapes cannot tell input from output), the
    output is the one layer named as one (:data:`OUTPUT_NAMES`); None when none or several
    are."""
    linears = {n: m for n, m in module.named_children() if isinstance(m, nn.Linear)}
    owned = {f"{n}.{p}" for n, m in linears.items() for p, _ in m.named_parameters()}
    if not linears or any(n not in owned for n, _ in module.named_parameters()):
        return None
    square = all((m.in_features, m.out_features) == (d, d) for m in linears.values())
    named = [n for n in linears if n in OUTPUT_NAMES]
    if square and len(named) == 1:
        inputs = tuple(n for n in linears if n != named[0])
        return Mlp(inputs, named[0], d) if 1 <= len(inputs) <= 2 else None
    inputs = tuple(n for n, m in linears.items() if m.in_features == d)
    outputs = [n for n, m in linears.items() if m.out_features == d and m.in_features != d]
    hidden = {linears[n].out_features for n in inputs}
    if len(outputs) != 1 or len(hidden) != 1 or len(inputs) + 1 != len(linears):
        return None
    if linears[outputs[0]].in_features not in hidden or not 1 <= len(inputs) <= 2:
        return None
    return Mlp(inputs, outputs[0], hidden.pop())


def _router(module: nn.Module) -> tuple[str, int, int, bool, tuple[str, ...]] | None:
    """(name of the layer holding the weight, relative to ``module``; E; d; has bias; names of
    per-expert statistics) of a router: a Linear(d, E); a module whose parameters are an E × d
    ``weight``, an E ``bias`` and statistics of E entries that read no input (ERNIE's
    score-correction bias, added to the scores that choose the top-k); or a module holding one
    such Linear and nothing else (Hunyuan's ``wg``)."""
    params = dict(module.named_parameters())
    inner = [n for n, m in module.named_children() if isinstance(m, nn.Linear)]
    if len(inner) == 1 and set(params) <= {f"{inner[0]}.weight", f"{inner[0]}.bias"}:
        found = _router(module.get_submodule(inner[0]))
        return None if found is None else (inner[0], *found[1:])
    w, b = params.get("weight"), params.get("bias")
    if w is None or w.dim() != 2:
        return None
    if b is not None and tuple(b.shape) != (w.shape[0],):
        return None
    extras = tuple(sorted(set(params) - {"weight", "bias"}))
    if any(params[n].numel() != w.shape[0] for n in extras):
        return None
    return "", w.shape[0], w.shape[1], b is not None, extras


def _fused_layout(
    params: dict[str, torch.Tensor], count: int, d: int, declared: object
) -> Fused | None:
    """The :class:`Fused` layout ``params`` (name → 3-D or 2-D tensor) fit: :data:`FUSED`
    names, optional biases ``<name>_bias`` (both or neither), ``count`` experts reading and
    writing width ``d``; transposed told apart by the shapes (by ``declared``, the module's
    ``is_transposed``, only where both fit: ungated with I = d). None when none fits."""
    names = {n for n in params if not n.endswith("_bias")}
    gated = FUSED.get(tuple(sorted(names)))
    if gated is None:
        return None
    first = "gate_up_proj" if gated else "up_proj"
    biases = {n for n in params if n.endswith("_bias")}
    if biases not in (set(), {f"{first}_bias", "down_proj_bias"}):
        return None
    down = params["down_proj"]
    if down.dim() != 3:
        return None
    hidden = {False: down.shape[2], True: down.shape[1]}
    fits = []
    for transposed in (False, True):
        i, k = hidden[transposed], 2 if gated else 1
        shapes = {first: (count, d, k * i), "down_proj": (count, i, d)}
        if not transposed:
            shapes = {n: (e, b, a) for n, (e, a, b) in shapes.items()}
        shapes |= {f"{first}_bias": (count, k * i), "down_proj_bias": (count, d)}
        if all(tuple(p.shape) == shapes[n] for n, p in params.items()):
            fits.append(transposed)
    if len(fits) == 2 and isinstance(declared, bool):
        fits = [declared]
    if len(fits) != 1:
        return None
    transposed = fits[0]
    return Fused(hidden[transposed], gated, transposed, False, bool(biases))


def _fused(module: nn.Module, count: int, d: int, where: str) -> Fused | None:
    """The :class:`Fused` layout of a fused experts module with ``count`` experts, None when
    ``module`` holds no 3-D parameter of ``count`` experts; MorphError when it does but is laid
    out in a way not followed (module docstring)."""
    params = dict(module.named_parameters(recurse=False))
    if (
        type(module).__module__.startswith("torch.")
        or getattr(module, "num_experts", count) != count
    ):
        return None  # a torch layer (Conv1d's weight is 3-D too), or experts of another count
    if not params or not any(p.dim() == 3 and p.shape[0] == count for p in params.values()):
        return None
    flags = {a: getattr(module, a, None) for a in FLAGS}
    layout = _fused_layout(params, count, d, flags["is_transposed"])
    if layout is not None and layout.gated:
        layout = dataclasses.replace(layout, interleaved=flags["is_concatenated"] is False)
    declared = {"has_bias": "biased", "is_transposed": "transposed"}
    if layout is not None and any(
        isinstance(flags[f], bool) and flags[f] != getattr(layout, a) for f, a in declared.items()
    ):
        layout = None  # the module says otherwise than its shapes
    if (
        layout is None
        or flags["has_post_expert_norm"]
        or any(True for _ in module.children() if any(_.parameters()))
    ):
        raise MorphError(
            f"{where!r} ({type(module).__name__}) holds fused experts laid out as "
            f"{ {n: tuple(p.shape) for n, p in params.items()} } with {flags}: followed are "
            "gate_up_proj (E, 2I, d) or (E, d, 2I) with down_proj (E, d, I) or (E, I, d), or "
            "up_proj in place of gate_up_proj, with or without biases <name>_bias, gate and up "
            "concatenated or interleaved, and nothing else; refused"
        )
    return layout


def _experts(
    module: nn.Module, name: str, router: str, count: int, d: int
) -> tuple[str, int, Fused | None, bool, Mlp | None] | None:
    """(experts name, hidden, fused layout (None: a ModuleList), gated, expert MLP layout) of
    the experts of ``module`` that ``router`` (E = ``count``) routes to; None when it has
    none."""
    for experts_name, experts in module.named_children():
        q = f"{name}.{experts_name}" if name else experts_name
        if experts_name == router:
            continue
        if isinstance(experts, nn.ModuleList) and len(experts) == count:
            layouts = [mlp_layout(e, d) for e in experts]
            if layouts[0] is not None and all(lay == layouts[0] for lay in layouts):
                return (
                    experts_name,
                    layouts[0].hidden,
                    None,
                    len(layouts[0].inputs) == 2,
                    layouts[0],
                )
            continue
        found = _fused(experts, count, d, q)
        if found is not None:
            return experts_name, found.hidden, found, found.gated, None
    return None


def _shared(
    module: nn.Module, name: str, d: int, skip: tuple[str, str]
) -> tuple[tuple[tuple[str, Mlp], ...], str | None]:
    """The shared experts and the shared-expert gate of the MoE ``module`` (``skip``: its
    router and experts); MorphError naming any other part holding parameters."""
    shared: list[tuple[str, Mlp]] = []
    gate = None
    for child_name, child in module.named_children():
        q = f"{name}.{child_name}" if name else child_name
        if child_name in skip or not any(True for _ in child.parameters()):
            continue
        if isinstance(child, nn.Linear) and (child.in_features, child.out_features) == (d, 1):
            gate = q
            continue
        layout = mlp_layout(child, d)
        if layout is None:
            raise MorphError(
                f"{q!r} ({type(child).__name__}) in the mixture of experts {name!r} is neither "
                "a router, experts, a shared expert (an MLP of Linear layers) nor a "
                "shared-expert gate Linear(d, 1); refused"
            )
        shared.append((q, layout))
    return tuple(shared), gate


def _moe(name: str, module: nn.Module, config: object) -> MoeBlock | None:
    """The :class:`MoeBlock` of ``module`` (None when it is not a mixture of experts)."""
    for router_name, child in module.named_children():
        found = _router(child)
        if found is None or found[1] < 2:
            continue
        inner, count, d, bias, extras = found
        experts = _experts(module, name, router_name, count, d)
        if experts is None:
            continue
        experts_name, hidden, fused, gated, mlp = experts
        shared, gate = _shared(module, name, d, (router_name, experts_name))
        top_k = _attribute((child, module, config), ("top_k", "num_experts_per_tok"))
        renormalise = _attribute((child, module, config), ("norm_topk_prob",))
        if renormalise is None and str(getattr(config, "model_type", "")).endswith(
            ("mixtral", "gpt_oss")
        ):  # Mixtral's router always renormalises; GPT-OSS's softmax of the top-k logits is
            renormalise = True  # the same

        def q(rel: str) -> str:
            return f"{name}.{rel}" if name else rel

        return MoeBlock(
            path=name,
            d_model=d,
            router=q(f"{router_name}.{inner}" if inner else router_name),
            router_bias=bias,
            experts=q(experts_name),
            count=count,
            hidden=hidden,
            fused=fused is not None,
            gated=gated,
            experts_mlp=mlp,
            shared=shared,
            shared_gate=gate,
            top_k=int(top_k) if isinstance(top_k, int) else None,
            renormalise=bool(renormalise) if renormalise is not None else None,
            router_extras=tuple(q(f"{router_name}.{n}") for n in extras),
            **{a: getattr(fused, a) for a in ("transposed", "interleaved", "biased") if fused},
        )
    return None


def routing(block: MoeBlock) -> str:
    """How ``block`` routes, in words: "top-2 of 4 experts, renormalised"."""
    k = f"top-{block.top_k}" if block.top_k is not None else "top-k (k not stated)"
    norm = {True: "renormalised", False: "not renormalised", None: "renormalisation not stated"}
    return f"{k} of {block.count} experts, {norm[block.renormalise]}"


def find_moe(model: nn.Module) -> tuple[MoeBlock, ...]:
    """Every mixture-of-experts feed-forward of ``model`` (module docstring), outermost first;
    empty when it has none. MorphError naming a part of a recognised one that is not
    understood."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    config = getattr(model, "config", None)
    found: list[MoeBlock] = []
    for name, module in model.named_modules():
        if any(name.startswith(f"{b.path}.") for b in found):
            continue
        block = _moe(name, module, config)
        if block is not None:
            found.append(block)
    return tuple(found)
