"""Mixture-of-experts feed-forwards: recognised by structure, grown, extended, upcycled.

A mixture-of-experts (MoE) feed-forward of width d computes, for a token x (the output of the
block's norm),

    l = R·x (+ b)                     router logits, R: E × d
    p = softmax(l)                    (Hugging Face routers: in float32)
    S = top_k(p)                      the k experts with the largest p
    w_e = p_e / Σ_{j∈S} p_j           when the top-k weights are renormalised
          (Mixtral always; Qwen2-MoE and OLMoE when ``norm_topk_prob``), else w_e = p_e
    y = Σ_{e∈S} w_e·f_e(x) [+ σ(g·x)·f_s(x)]

with experts f_e(x) = D_e·(φ(G_e·x) ⊙ U_e·x) (gated) or D_e·φ(U_e·x), and an optional shared
expert f_s behind a sigmoid gate g (Qwen2-MoE). It is recognised by structure
(:func:`find_moe`): a module holding a router (a ``Linear(d, E)`` or a module with one E × d
``weight``, E ≥ 2) and E experts, either an ``nn.ModuleList`` of MLPs of Linear layers
(inputs d → I, one output I → d; older Mixtral ``w1``/``w3``/``w2``) or one module with fused
3-D parameters (transformers ≥ 5: ``gate_up_proj`` E × 2I × d holding [G; U] and
``down_proj`` E × d × I, or ``up_proj`` without a gate; or transposed, interleaved and with
biases, as GPT-OSS's, :mod:`.moe_fused`), plus optional shared expert(s) (MLPs) and a
shared-expert gate ``Linear(d, 1)``. Any other parameter-holding part is refused by name.

**grow_ffn** (:func:`grow_ffn`): every expert's hidden size I → I' (and the shared expert's
I_s → I_s'). New units of one expert come in cancelling sets with equal input rows and output
columns C, −C (C, C, −2C), so D_e,new·h_new = 0 for every x; the routing (R, b) is untouched,
so S and w are the parent's and y is unchanged. ``method="zero"``: zero output columns. New
units' input biases are 0 (equal inside a set); the output bias is kept.

**add_experts** (:func:`add_experts`): n new experts (copies of existing ones). The output is
unchanged for every x exactly when no new expert enters S and the renormalised (or plain)
weights of the old experts do not move. Without renormalisation p_e = exp(l_e)/Σ_all exp(l_j)
moves with any finite new logit, so the new logits must underflow: exp(l_new − max l) = 0 in
the router's arithmetic. With a router **without bias** a new logit r·x is linear in x: for any
r ≠ 0 it is positive at x or at −x, and r = 0 gives 0; since the old logits at −x are the
negatives of those at x, r·x stays below the k-th largest old logit for every x only if it lies
between the k-th largest and the k-th smallest, which no linear function does in general (for
k ≥ 2, or with ties at k = 1). So a bias-free router (Mixtral, Qwen2-MoE, OLMoE) is refused by
name. With a **router bias** the new rows are r = 0 and b_new = −M (:func:`router_floor`: M
half the largest float32 value, or of the router's dtype where that is narrower): l_new = −M
for every x, below every old logit with |l| < M (every logit a float32 router computes
finitely, with room), and exp(−M − max l) underflows to 0, so S, p and the output are exactly
the parent's, renormalised or not (or with a router that softmaxes the top-k logits only,
GPT-OSS's). The new experts are then never selected (zero gradient
until b_new is raised): an exact addition for every input cannot do otherwise.

**upcycle** (:func:`upcycle`): a dense Llama/Mistral model becomes the Mixtral model (Qwen2:
the Qwen2-MoE model) whose E experts are copies of each block's FFN f. Then
y = Σ_{e∈S} w_e·f(x) = f(x)·Σ_{e∈S} w_e = f(x) since the top-k weights are renormalised
(Σ w_e = 1), whatever the router R: zero by default (uniform routing), or random with
``router_std`` > 0. Qwen2-MoE's shared expert starts as σ(0)·D·h with D = 0. The stock
router computes w in float32, so Σ w_e = 1 holds to k float32 roundings: a float64 child agrees
with its parent to about k·2⁻²⁴ relative (exactly when R = 0 and k is a power of two), and
``tol="auto"`` allows :data:`ROUTER_ROUNDING`·k for float64 parents.

Hugging Face experts modules pick an implementation (``grouped_mm`` by default) that has no
float64 kernel: while an operation measures, the experts of the parent, its copies and the
child compute with ``"eager"`` (the parent's setting is restored, and the child gets it).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from .. import _validation as v
from . import encdec, moe_fused, transformer
from .errors import MorphError
from .hf_embeddings import input_embedding
from .moe_find import Mlp, MoeBlock, find_moe, routing
from .pipeline import Request, run
from .report import MorphReport, Outcome, ParamSource, state_bytes
from .streamed import Region
from .transformer import _cancel_sets, _coefficients, _Editor, _method, _std, check_bool
from .transformer_layout import describe

#: Relative float32 rounding of the renormalised top-k weights, per selected expert: a float64
#: upcycled child may deviate by this × top_k (the stock router computes the weights in float32).
ROUTER_ROUNDING = 2.0**-22
#: Config fields of the experts' and the shared expert's hidden sizes, first present wins.
HIDDEN_FIELDS = ("moe_intermediate_size", "intermediate_size")
SHARED_FIELDS = ("shared_expert_intermediate_size",)
COUNT_FIELDS = ("num_local_experts", "num_experts")
#: Dense model_type → (config class, model class) of its upcycled mixture of experts.
UPCYCLE_FAMILIES = {
    "llama": ("MixtralConfig", "MixtralForCausalLM"),
    "mistral": ("MixtralConfig", "MixtralForCausalLM"),
    "qwen2": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM"),
}


# ---------------------------------------------------------------------------------------------
# Measuring Hugging Face experts in float64


def _pipeline(
    operation: str,
    model: nn.Module,
    build: object,
    probe: object,
    tol: object,
    **request: object,
) -> tuple[nn.Module, MorphReport]:
    """:func:`.pipeline.run` with a default probe of token ids."""
    probe = _default_probe(model) if probe is None else probe
    return run(Request(operation, model, build=build, probe=probe, tol=tol, **request))


def _default_probe(model: nn.Module) -> tuple[torch.Tensor, ...] | None:
    """Token ids (2, 8) for a model with an input embedding; None (inferred) otherwise."""
    embed = input_embedding(model)
    if embed is None:
        embed = next((m for m in model.modules() if isinstance(m, nn.Embedding)), None)
    if not isinstance(embed, nn.Embedding):
        return None
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, embed.num_embeddings, (2, transformer.SEQ_LEN), generator=gen)
    return (ids.to(embed.weight.device),)


# ---------------------------------------------------------------------------------------------
# Growing the experts


def _grow_stack(
    edit: _Editor,
    inputs: list[torch.Tensor],
    output: torch.Tensor,
    new_hidden: int,
    method: str,
) -> tuple[list[torch.Tensor], torch.Tensor, np.ndarray]:
    """Experts stacked as ``inputs`` (E, I, d) and ``output`` (E, d, I) grown to
    ``new_hidden`` units in their own dtype: new input rows random, shared inside each
    cancelling set (per expert and input), new output columns C·coefficient (the parent's
    entries are only copied, and −C, −2C round to exactly −1, −2 times the rounded C).
    Returns (inputs, output, child → parent unit index, −1 new)."""
    hidden = output.shape[2]
    src = np.concatenate([np.arange(hidden), -np.ones(new_hidden - hidden, int)])
    sets = _cancel_sets(range(hidden, new_hidden))
    grown = []
    for w in inputs:
        new = torch.cat([w, w.new_zeros(w.shape[0], new_hidden - hidden, w.shape[2])], 1)
        std = _std(w)
        for unit_set in sets:
            new[:, unit_set] = edit.noise((w.shape[0], 1, w.shape[2]), std, w).to(w.dtype)
        grown.append(new)
    out = torch.cat([output, output.new_zeros(*output.shape[:2], new_hidden - hidden)], 2)
    std = _std(output)
    for unit_set in sets:
        col = edit.noise(output.shape[:2], std, output)
        for u, c in zip(unit_set, _coefficients(len(unit_set), method)):
            out[:, :, u] = (c * col).to(out.dtype)
    return grown, out, src


def _native(edit: _Editor, name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The weight and bias of the child's Linear layer ``name``, in their dtype."""
    layer = edit.child.get_submodule(name)
    return layer.weight.detach(), layer.bias.detach() if layer.bias is not None else None


def _grow_mlps(edit: _Editor, prefixes: list[str], mlp: Mlp, new_hidden: int, method: str) -> None:
    """The MLPs at ``prefixes`` (one layout) grown to ``new_hidden`` units."""
    weights = [[_native(edit, f"{p}.{rel}") for p in prefixes] for rel in (*mlp.inputs, mlp.output)]
    stacks = [torch.stack([w for w, _ in layer]) for layer in weights]
    inputs, output, src = _grow_stack(edit, stacks[:-1], stacks[-1], new_hidden, method)
    for rel, stack, layer in zip(mlp.inputs, inputs, weights):
        for i, p in enumerate(prefixes):
            bias = layer[i][1]
            new_b = transformer._gather_rows(bias, src) if bias is not None else None
            edit.put_linear(f"{p}.{rel}", stack[i], new_b, src, None)
    for i, p in enumerate(prefixes):
        edit.put_linear(f"{p}.{mlp.output}", output[i], None, None, src)
    for p in prefixes:
        module = edit.child.get_submodule(p)
        if isinstance(getattr(module, "intermediate_size", None), int):
            module.intermediate_size = new_hidden


def _grow_fused(edit: _Editor, block: MoeBlock, new_hidden: int, method: str) -> None:
    """The fused experts of ``block`` grown to ``new_hidden`` units, G and U part by part in
    the layout of :mod:`.moe_fused` (then stored as the parent's are: [G; U] or interleaved,
    transposed or not); new units' input biases 0 (equal inside each cancelling set)."""
    experts = edit.child.get_submodule(block.experts)
    parts = moe_fused.views(block, experts)
    inputs, output, src = _grow_stack(edit, parts.inputs, parts.output, new_hidden, method)
    biases = [transformer._gather_rows(b, src, 1) for b in parts.input_biases]
    grown = moe_fused.Views(inputs, output, biases, parts.output_bias)
    for name, value, index in moe_fused.stored(block, grown, src):
        edit.put(f"{block.experts}.{name}", value, index)
    for attr in ("intermediate_dim", "intermediate_size", "expert_dim"):  # expert_dim: Llama 4
        if isinstance(getattr(experts, attr, None), int):
            setattr(experts, attr, new_hidden)


def _set_first(config: object | None, fields: tuple[str, ...], value: int) -> None:
    for name in fields:
        if isinstance(getattr(config, name, None), int):
            setattr(config, name, value)
            return


def grow_ffn(
    model: nn.Module,
    width: int,
    *,
    shared_width: int | None = None,
    layers: object = None,
    method: str = "netmorph",
    probe: object = None,
    tol: float | str | None = "auto",
    seed: int | np.random.Generator | None = None,
    inplace: bool = False,
) -> tuple[nn.Module, MorphReport]:
    """The feed-forward hidden size grows to ``width``: in a mixture-of-experts model, every
    expert of every MoE block, and each shared expert I_s → ``shared_width`` (default
    I_s·width/I, rounded down; unchanged when that is not larger); dense models go to
    :func:`.transformer.grow_ffn` (``layers``). ``inplace=True``: the child is built in
    ``model`` itself, which is consumed (measured one module at a time).

    New units of each expert come in cancelling sets (equal input rows, output columns C, −C
    or C, C, −2C; ``method="zero"``: zero columns), so every expert's output, hence the
    routed sum, is unchanged; the router is not touched. Dense blocks of a mixed stack
    (Qwen2-MoE's ``mlp_only_layers``) keep their size."""
    blocks = find_moe(model)
    if not blocks:
        if shared_width is not None:
            raise ValueError(
                f"shared_width={shared_width!r}: {type(model).__name__} has no mixture-of-"
                "experts feed-forward (no shared expert); leave it None"
            )
        return encdec.grow_ffn(
            model,
            width,
            layers=layers,
            method=method,
            probe=probe,
            tol=tol,
            seed=seed,
            inplace=inplace,
        )
    method = _method(method)
    width = v.positive_int(width, "width")
    if layers is not None:
        raise ValueError(
            f"layers={layers!r}: a mixture-of-experts model grows every MoE block (its config "
            "has one expert size); leave layers None"
        )
    inplace = check_bool(inplace, "inplace")
    hidden = max(b.hidden for b in blocks)
    if len({b.hidden for b in blocks}) != 1:
        raise MorphError(
            f"the experts' hidden sizes differ across blocks ({sorted({b.hidden for b in blocks})}"
            "): grow_ffn grows them to one width; refused"
        )
    if width <= hidden:
        raise ValueError(f"width={width} must exceed the experts' hidden size {hidden}")
    shared_sizes = {m.hidden for b in blocks for _, m in b.shared}
    if shared_width is not None:
        shared_width = v.positive_int(shared_width, "shared_width")
        if not shared_sizes:
            raise ValueError(f"shared_width={shared_width}: the model has no shared expert")
        if shared_width <= max(shared_sizes):
            raise ValueError(
                f"shared_width={shared_width} must exceed the shared expert's hidden size "
                f"{max(shared_sizes)}"
            )
    elif len(shared_sizes) == 1:
        shared_width = max(shared_sizes) * width // hidden
    if len(shared_sizes) > 1:
        raise MorphError(f"shared experts of different sizes {sorted(shared_sizes)}; refused")
    seed = v.torch_seed(seed)  # last: a numpy Generator advances by one draw
    itemsize = next((p.element_size() for p in model.parameters()), 4)
    grown = sum(
        b.count * (width - b.hidden) * (b.d_model + int(b.biased)) * (3 if b.gated else 2)
        + sum((shared_width - m.hidden) * b.d_model * (len(m.inputs) + 1) for _, m in b.shared)
        for b in blocks
    )
    largest = max(state_bytes(model.get_submodule(b.experts)) for b in blocks)
    new_bytes = grown * itemsize + 3 * largest * width // hidden  # + the editor's copies

    def build(child: nn.Module) -> Outcome:
        edit = _Editor(child, seed)
        for b in blocks:
            if b.fused:
                _grow_fused(edit, b, width, method)
            else:
                prefixes = [f"{b.experts}.{i}" for i in range(b.count)]
                _grow_mlps(edit, prefixes, b.experts_mlp, width, method)
            for path, mlp in b.shared:
                if shared_width > mlp.hidden:
                    _grow_mlps(edit, [path], mlp, shared_width, method)
        config = getattr(child, "config", None)
        _set_first(config, HIDDEN_FIELDS, width)
        notes = [
            f"{len(blocks)} mixture-of-experts blocks ({routing(blocks[0])}): every expert "
            f"grown {hidden} → {width}; the routing is untouched"
        ]
        if shared_sizes:
            _set_first(config, SHARED_FIELDS, shared_width)
            notes.append(f"shared experts {max(shared_sizes)} → {shared_width}")
        if 1 in {width - hidden, (shared_width or 0) - max(shared_sizes, default=0)}:
            notes.append("one new unit has no partner: its output column is zero")
        return edit.outcome(notes)

    return _pipeline(
        "grow_ffn",
        model,
        build,
        probe,
        tol,
        targets=tuple(b.experts for b in blocks),
        edits=tuple(n for b in blocks for n in (b.experts, *(p for p, _ in b.shared))),
        copies=tuple(b.path for b in blocks),
        regions=tuple(Region(b.path, b.path) for b in blocks),
        new_bytes=new_bytes,
        inplace=inplace,
    )


# ---------------------------------------------------------------------------------------------
# New experts


def router_floor(dtype: torch.dtype) -> float:
    """M: half the largest float32 value, or of ``dtype`` where that is narrower (float16), so
    that −M stays finite when the router's logits are cast to float32."""
    return min(torch.finfo(dtype).max, torch.finfo(torch.float32).max) / 2


def _new_router_rows(edit: _Editor, block: MoeBlock, n: int) -> None:
    """n router rows 0 with bias −M (:func:`router_floor`)."""
    w = edit.child.get_parameter(f"{block.router}.weight")
    big = router_floor(w.dtype)
    rows = np.concatenate([np.arange(block.count), -np.ones(n, int)])
    weight = torch.cat([w.detach(), w.new_zeros(n, w.shape[1])])
    bias = edit.child.get_parameter(f"{block.router}.bias").detach()
    bias = torch.cat([bias, bias.new_full((n,), -big)])
    for name, value, index in (("weight", weight, (rows, None)), ("bias", bias, (rows,))):
        module = edit.child.get_submodule(block.router)
        old = getattr(module, name)
        setattr(module, name, nn.Parameter(value, requires_grad=old.requires_grad))
        edit.sources[f"{block.router}.{name}"] = ParamSource(
            f"{block.router}.{name}", f"{block.router}.{name}", index
        )
    edit.new_total += n * (w.shape[1] + 1)
    edit.new_nonzero += n


def _copy_experts(edit: _Editor, block: MoeBlock, n: int) -> None:
    """n new experts, copies of experts 0, 1, … (cyclically)."""
    src = np.concatenate([np.arange(block.count), np.arange(n) % block.count])
    experts = edit.child.get_submodule(block.experts)
    if block.fused:
        for name, p in list(experts.named_parameters(recurse=False)):
            new = torch.cat([p.detach(), p.detach()[torch.as_tensor(src[block.count :])]])
            setattr(experts, name, nn.Parameter(new, requires_grad=p.requires_grad))
            rows = np.concatenate([np.arange(block.count), -np.ones(n, int)])
            index = (rows,) + (None,) * (p.dim() - 1)
            edit.sources[f"{block.experts}.{name}"] = ParamSource(
                f"{block.experts}.{name}", f"{block.experts}.{name}", index
            )
            edit.new_total += n * p[0].numel()
            edit.new_nonzero += int(torch.count_nonzero(new[block.count :]))
    else:
        for j in range(n):
            source = int(src[block.count + j])
            experts.append(copy.deepcopy(experts[source]))
            for rel, p in experts[-1].named_parameters():
                edit.sources[f"{block.experts}.{block.count + j}.{rel}"] = ParamSource(
                    None, f"{block.experts}.{source}.{rel}"
                )
                edit.new_total += p.numel()
                edit.new_nonzero += int(torch.count_nonzero(p))
    count = block.count + n
    for module in (
        edit.child.get_submodule(block.path),
        experts,
        edit.child.get_submodule(block.router),
    ):
        for attr in (*COUNT_FIELDS, "num_experts"):
            if isinstance(getattr(module, attr, None), int):
                setattr(module, attr, count)


def add_experts(
    model: nn.Module,
    n: int,
    *,
    probe: object = None,
    tol: float | str | None = "auto",
) -> tuple[nn.Module, MorphReport]:
    """``n`` new experts in every mixture-of-experts block, copies of the existing ones, whose
    router rows are 0 with bias −M (:func:`router_floor`: half the largest float32 value): never
    selected, so the routing and the output are exactly the parent's (module docstring).

    Refused (MorphError naming the router) when a router has no bias: a bias-free router's new
    logit is linear in x, and in general every row displaces an old expert from the top-k for
    some input; the construction needs a router with a bias (``Linear(d, E, bias=True)``)."""
    blocks = find_moe(model)
    if not blocks:
        raise MorphError(f"{type(model).__name__} has no mixture-of-experts feed-forward")
    n = v.positive_int(n, "n")
    for b in blocks:
        if b.router_extras:
            raise MorphError(
                f"{b.router_extras[0]!r} holds per-expert statistics of the router; new "
                "experts would need entries there whose effect on the top-k is not followed; "
                "refused"
            )
        if not b.router_bias:
            raise MorphError(
                f"{b.router!r} has no bias: a new expert's logit r·x is linear in x and "
                "changes sign with x, as the old logits do, so to stay out of the top-k for "
                "every input it would have to lie between the k-th largest and the k-th "
                "smallest old logit everywhere, which no row does in general (r = 0 enters "
                "wherever fewer than k old logits are positive); an exact addition needs a "
                "router with a bias (new rows 0, bias below every reachable logit); refused"
            )
    count = {b.count for b in blocks}
    floor = router_floor(model.get_parameter(f"{blocks[0].router}.weight").dtype)
    per_block = sum(state_bytes(model.get_submodule(b.experts)) // b.count for b in blocks)
    new_bytes = n * per_block

    def build(child: nn.Module) -> Outcome:
        edit = _Editor(child, 0)
        for b in blocks:
            _copy_experts(edit, b, n)
            _new_router_rows(edit, b, n)
        config = getattr(child, "config", None)
        if len(count) == 1:
            _set_first(config, COUNT_FIELDS, next(iter(count)) + n)
            if getattr(child, "num_experts", None) == next(iter(count)):
                child.num_experts += n  # a causal LM's load-balancing loss reads it
        notes = [
            f"{n} experts added to each of {len(blocks)} blocks ({routing(blocks[0])}, exact "
            "either way): router rows 0, bias "
            f"−{floor:.3g}; never selected until that bias is raised"
        ]
        return edit.outcome(notes)

    return _pipeline(
        "add_experts",
        model,
        build,
        probe,
        tol,
        targets=tuple(b.experts for b in blocks),
        edits=tuple(name for b in blocks for name in (b.router, b.experts)),
        copies=tuple(b.path for b in blocks),
        regions=tuple(Region(b.path, b.path) for b in blocks),
        new_bytes=new_bytes,
    )


# ---------------------------------------------------------------------------------------------
# Dense → mixture of experts


#: Config fields copied from the dense parent's config (those it has).
UPCYCLE_KEYS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings",
    "initializer_range", "rms_norm_eps", "use_cache", "pad_token_id", "bos_token_id",
    "eos_token_id", "tie_word_embeddings", "rope_parameters", "attention_dropout",
    "sliding_window", "use_sliding_window", "max_window_layers", "layer_types",
)  # fmt: skip


def _moe_config(config: object, n_experts: int, top_k: int) -> object:
    """The config of the upcycled child of a dense ``config``: a MixtralConfig for Llama and
    Mistral, a Qwen2MoeConfig for Qwen2 (renormalised top-k, one shared expert of the FFN's
    size, every block sparse)."""
    import transformers

    values = {k: copy.deepcopy(getattr(config, k)) for k in UPCYCLE_KEYS if hasattr(config, k)}
    family = config.model_type
    config_class, _ = UPCYCLE_FAMILIES[family]
    if family == "qwen2":
        values |= dict(
            num_experts=n_experts,
            moe_intermediate_size=config.intermediate_size,
            shared_expert_intermediate_size=config.intermediate_size,
            norm_topk_prob=True,
            qkv_bias=True,
            decoder_sparse_step=1,
            mlp_only_layers=[],
        )
    else:
        values |= dict(num_local_experts=n_experts, router_jitter_noise=0.0)
    moe_config = getattr(transformers, config_class)(
        **values, num_experts_per_tok=top_k, experts_implementation="eager"
    )
    moe_config.dtype = getattr(config, "dtype", None)
    return moe_config


def _check_upcycle(model: nn.Module) -> object:
    """``model`` must be a Hugging Face causal LM of :data:`UPCYCLE_FAMILIES` whose biases the
    MoE family has (Qwen2's q/k/v only); returns its config."""
    config = getattr(model, "config", None)
    family = getattr(config, "model_type", None)
    if family not in UPCYCLE_FAMILIES or not type(model).__name__.endswith("ForCausalLM"):
        raise MorphError(
            "upcycle builds a Mixtral child from a Hugging Face Llama or Mistral causal LM and "
            f"a Qwen2-MoE child from a Qwen2 one; {type(model).__name__} (model_type "
            f"{family!r}) is none of them; refused"
        )
    target = UPCYCLE_FAMILIES[family][1].removesuffix("ForCausalLM")
    for flag in ("attention_bias", "mlp_bias"):
        if getattr(config, flag, False):
            raise MorphError(
                f"the parent's config has {flag}=True; {target} has no such biases; refused"
            )
    layout = describe(model)
    fam = layout.family
    biased = fam.qkv if family == "qwen2" else ()
    for block in layout.blocks:
        for rel in (*fam.qkv, fam.o, *fam.ffn_in, fam.ffn_out):
            layer = model.get_submodule(block.name(rel))
            if (layer.bias is not None) != (rel in biased):
                has = "has a bias" if layer.bias is not None else "has no bias"
                raise MorphError(f"{block.name(rel)!r} {has}, unlike {target}'s; refused")
    return config


def _moe_parameter(
    name: str, old: dict[str, torch.Tensor], n_experts: int, router: Callable[[], torch.Tensor]
) -> tuple[torch.Tensor, ParamSource]:
    """The value and source of the upcycled child's MoE parameter ``name`` (…mlp.<rest>)
    from the dense block's ``gate_proj``/``up_proj``/``down_proj`` weights in ``old``:
    experts are copies, the router is ``router()``, the shared expert (Qwen2-MoE) copies the
    input layers and starts with zero output projection and gate."""
    prefix, _, rest = name.partition(".mlp.")
    prefix += ".mlp"
    gate, up, down = (old[f"{prefix}.{r}.weight"] for r in ("gate_proj", "up_proj", "down_proj"))
    values = {
        "experts.gate_up_proj": (
            lambda: torch.cat([gate, up]).expand(n_experts, -1, -1),
            "gate_proj",
        ),
        "experts.down_proj": (lambda: down.expand(n_experts, -1, -1), "down_proj"),
        "gate.weight": (router, "gate_proj"),
        "shared_expert.gate_proj.weight": (lambda: gate, "gate_proj"),
        "shared_expert.up_proj.weight": (lambda: up, "up_proj"),
        "shared_expert.down_proj.weight": (lambda: torch.zeros_like(down), "down_proj"),
        "shared_expert_gate.weight": (lambda: gate.new_zeros(1, gate.shape[1]), "gate_proj"),
    }
    if rest not in values:
        raise MorphError(f"upcycle does not know how to fill the child's {name!r}; refused")
    make, group = values[rest]
    return make(), ParamSource(None, f"{prefix}.{group}.weight")


def upcycle(
    model: nn.Module,
    n_experts: int,
    top_k: int = 2,
    *,
    router_std: float = 0.0,
    probe: object = None,
    tol: float | str | None = "auto",
    seed: int | np.random.Generator | None = None,
) -> tuple[nn.Module, MorphReport]:
    """A dense causal LM becomes the mixture of experts with ``n_experts`` experts per block,
    each a copy of the block's FFN, ``top_k`` of them routed per token and their weights
    renormalised, so y = f(x)·Σ w_e = f(x) (module docstring): Llama and Mistral become
    ``MixtralForCausalLM``, Qwen2 ``Qwen2MoeForCausalLM`` (``norm_topk_prob=True``, and its
    shared expert copies the FFN's input layers with a zero output projection and gate). The
    router is 0 (uniform routing; exact for top_k a power of two), or N(0, ``router_std``²)
    with ``router_std`` > 0 (exact up to the float32 renormalisation of the stock router). The
    child's config is the MoE family's: ``save_pretrained`` → ``from_pretrained`` reloads it.
    """
    config = _check_upcycle(model)
    n_experts = v.positive_int(n_experts, "n_experts")
    top_k = v.positive_int(top_k, "top_k")
    if n_experts < 2 or top_k > n_experts:
        raise ValueError(
            f"n_experts={n_experts}, top_k={top_k}: need n_experts ≥ 2 and 1 ≤ top_k ≤ n_experts"
        )
    if isinstance(router_std, bool) or not isinstance(router_std, (int, float)):
        raise TypeError(f"router_std must be a number ≥ 0, got {router_std!r}")
    router_std = float(router_std)
    if not router_std >= 0.0 or router_std == float("inf"):
        raise ValueError(f"router_std must be a finite number ≥ 0, got {router_std}")
    layout = describe(model)
    fam = layout.family
    dtype = next(model.parameters()).dtype
    if tol == "auto" and dtype == torch.float64:
        tol = 1e-8 + ROUTER_ROUNDING * top_k
    ffn = sum(state_bytes(model.get_submodule(f"{b.prefix}.mlp")) for b in layout.blocks)
    new_bytes = ffn * (n_experts + 1) + state_bytes(model)
    moe_config = _moe_config(config, n_experts, top_k)
    model_class = UPCYCLE_FAMILIES[config.model_type][1]
    seed = v.torch_seed(seed)  # last: a numpy Generator advances by one draw

    def build(child: nn.Module) -> Outcome:
        import transformers

        device = next(child.parameters()).device
        with torch.device("meta"):  # every tensor is filled below: no random initialisation
            new = getattr(transformers, model_class)._from_config(moe_config, dtype=dtype)
        new = new.to_empty(device=device).train(child.training)
        if new.config.tie_word_embeddings:
            new.tie_weights()
        gen = torch.Generator().manual_seed(seed)
        sources: dict[str, ParamSource] = {}
        old_params = dict(child.named_parameters(remove_duplicate=False))
        old_buffers = dict(child.named_buffers())
        with torch.no_grad():
            kept = {n: t for n, t in old_params.items() if ".mlp." not in n}
            for name, p in new.named_parameters(remove_duplicate=False):
                if ".mlp." not in name:
                    old = kept.pop(name, None)
                    if old is None or old.shape != p.shape:
                        raise MorphError(
                            f"upcycle: the child's {name!r} {tuple(p.shape)} has no parameter "
                            "of its name and shape in the parent; refused"
                        )
                    p.copy_(old)
                    sources[name] = ParamSource(name, name)
                    continue
                value, sources[name] = _moe_parameter(
                    name,
                    old_params,
                    n_experts,
                    lambda p=p: (
                        torch.randn(p.shape, generator=gen, dtype=torch.float64) * router_std
                    ),
                )
                p.copy_(value.to(p.device, p.dtype))
            if kept:
                raise MorphError(
                    f"upcycle: the parent's {sorted(kept)[:3]} have no place in the "
                    f"{model_class}; refused"
                )
            for name, b in new.named_buffers():
                if name not in old_buffers or old_buffers[name].shape != b.shape:
                    raise MorphError(
                        f"upcycle: the child's buffer {name!r} has no counterpart in the "
                        "parent to take its values from; refused"
                    )
                b.copy_(old_buffers[name])
        child.__class__ = type(new)
        child.__dict__ = new.__dict__
        notes = [
            f"upcycled to {model_class}: {n_experts} experts per block, top-{top_k}, router "
            + (f"N(0, {router_std:g}²)" if router_std else "0 (uniform routing)")
        ]
        if dtype == torch.float64:
            notes.append(
                "the stock router renormalises the top-k weights in float32: a float64 child "
                f"agrees to about {top_k}·2⁻²⁴ relative"
            )
        mlp = [p for n, p in child.named_parameters() if ".mlp." in n]
        nonzero = sum(int(torch.count_nonzero(p)) for p in mlp)
        total = sum(p.numel() for p in mlp)
        return Outcome(nonzero, total, sources=sources, notes=notes)

    return _pipeline(
        "upcycle",
        model,
        build,
        probe,
        tol,
        targets=tuple(f"{b.prefix}.mlp" for b in layout.blocks),
        edits=tuple(b.name(r) for b in layout.blocks for r in (*fam.ffn_in, fam.ffn_out)),
        copies=("",),
        regions=tuple(Region(f"{b.prefix}.mlp", f"{b.prefix}.mlp") for b in layout.blocks),
        new_bytes=new_bytes,
    )
