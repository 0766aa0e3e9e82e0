"""A grown Hugging Face model's config made to describe it, or marked as unable to.

``save_pretrained`` writes ``config.json`` and the weights; a stock ``from_pretrained`` builds
the architecture from the config alone and then loads the weights, initialising missing ones
at random with only a logged warning. A child whose config does not describe it exactly would
therefore reload silently wrong. After every operation on one (the pipeline's build step)
:func:`sync_config`

1. writes what the modules now are into the config: ``hidden_size``, ``num_hidden_layers``,
   ``num_attention_heads``/``num_key_value_heads`` and an explicit ``head_dim`` (where every
   block agrees; Qwen2's config derives head_dim = hidden_size / heads unless given one),
   ``intermediate_size`` (GPT-2: ``n_inner``, where None means 4·d), and the norm eps where one
   value covers every norm (grow_width to D' = k·d + r rescales eps by kd/D');
2. folds an embedding scale the config derives (Gemma: √hidden_size, fixed when the model was
   built) into the embedding weights: W·s = (W·s/s')·s' with s' = √D'; a tied head is
   compensated in the final norm's gain, (o + w)/c = o + w' with c = s/s';
3. builds the stock model of the same class from the resulting config on the meta device
   (what ``from_pretrained`` would build) and compares it with the child module by module:
   module types, parameter shapes and the modules' scalar attributes (eps, head counts,
   head_dim, scaling, sizes).

When they agree, the child round-trips through ``save_pretrained``/``from_pretrained``. When
they do not (a projection split in two, blocks of different sizes, per-norm eps, a derived
head_dim the config cannot follow), the config's class becomes ``Netmorph<Config>`` whose
``model_type`` is ``"netmorph-<model_type>"``: a stock ``AutoModelFor….from_pretrained``
refuses it ("does not recognize this architecture") instead of loading it wrong, so does the
model's own class (``STOCK_GUARD``), and the config carries a ``netmorph`` entry (the stock
model type, replaced modules, attribute values) from which
:func:`~netmorph_core.torch.hf_load.load_grown` rebuilds the child exactly.
"""

from __future__ import annotations

import copy
import sys
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from .errors import MorphError
from .hf_embeddings import input_embedding, output_embedding
from .hf_modules import describe_module
from .transformer_layout import Layout, as_matrix, describe
from .transformer_trace import HEAD_DIM_ATTRS, HEADS_ATTRS

#: Prefix of the model_type of a config that no stock class loads.
MARK = "netmorph-"
#: Config fields of the norm eps, by family.
EPS_FIELDS = ("rms_norm_eps", "layer_norm_epsilon", "layer_norm_eps", "norm_eps", "norm_epsilon")
#: Module attributes compared with the stock model's (scalars and tuples of scalars).
_SCALARS = (int, float, bool, str, type(None))

#: Module attributes that are training-time switches, not architecture.
RUNTIME_FLAGS = frozenset({"training", "gradient_checkpointing"})

_MARKED: dict[type, type] = {}

#: Where a stock ``<Model>.from_pretrained`` (a class, not an Auto class) meets a model_type it
#: does not know, it loads the nested dict whose model_type is its own: the ``netmorph`` entry.
#: Its ``dtype`` makes that load fail at once, naming the way to reload, instead of building
#: the class's default-sized model and failing on the weights' shapes.
STOCK_GUARD = {"dtype": "a grown child: reload it with netmorph_core.torch.load_grown(path)"}


def is_hf_model(model: nn.Module) -> bool:
    """Whether ``model`` is a Hugging Face model with a serialisable config."""
    config = getattr(model, "config", None)
    return hasattr(model, "save_pretrained") and hasattr(config, "to_dict")


def stock_class(config_class: type) -> type:
    """The stock config class of ``config_class`` (itself unless it is a marked one)."""
    return getattr(config_class, "_netmorph_base", config_class)


def marked_class(base: type) -> type:
    """``Netmorph<base>``: ``base`` with ``model_type`` = "netmorph-" + base's (one per base,
    a module attribute so that pickling finds it)."""
    base = stock_class(base)
    cls = _MARKED.get(base)
    if cls is None:
        name = f"Netmorph{base.__name__}"
        cls = type(
            name,
            (base,),
            {
                "model_type": MARK + base.model_type,
                "_netmorph_base": base,
                "validate": _validate_but_architecture,
                "__module__": __name__,
                "__qualname__": name,
            },
        )
        _MARKED[base] = cls
        setattr(sys.modules[__name__], name, cls)
    return cls


def _validate_but_architecture(config: object) -> None:
    """The stock class validators except ``validate_architecture`` (which refuses, say,
    hidden_size not a multiple of the heads even where head_dim is explicit), so that
    ``save_pretrained`` writes a marked child."""
    for validator in getattr(type(config), "__class_validators__", ()):
        if validator.__name__ != "validate_architecture":
            validator(config)


def config_from_dict(cls: type, values: dict[str, Any]) -> object:
    """``cls.from_dict(values)``; where the class's validators refuse the values (a grown
    architecture its validators do not foresee), the same config built without them."""
    from huggingface_hub.errors import StrictDataclassError

    try:
        return cls.from_dict(values)
    except StrictDataclassError:
        init = getattr(cls.__init__, "__wrapped__", None)
        if init is None:
            raise
        config = cls.__new__(cls)
        init(config, **values)
        return config


def __getattr__(name: str) -> type:
    """``Netmorph<Config>`` classes made on first use (unpickling in a new process)."""
    if name.startswith("Netmorph") and name.endswith("Config"):
        import transformers

        base = getattr(transformers, name.removeprefix("Netmorph"), None)
        if isinstance(base, type):
            return marked_class(base)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def sync_config(model: nn.Module) -> list[str]:
    """Make ``model.config`` describe ``model`` (module docstring); returns the report's notes
    on the round trip. A model that is not a Hugging Face model gets no note."""
    if not is_hf_model(model):
        return []
    config = model.config
    try:
        layout: Layout | None = describe(model)
    except (MorphError, AttributeError):  # e.g. a projection split by deepen_projection
        layout = None
    notes = _untie(model)
    if layout is not None:
        _write_sizes(_stack_config(model, config, layout), model, layout)
    base = stock_class(type(config))
    try:
        try:
            stock = _stock_model(model, config, base)
        except Exception:
            stock = _dividing_heads(model, config, base, layout)
            if stock is None:
                raise
    except Exception as exc:  # whatever the stock class raises, it cannot load this child
        config.__class__ = marked_class(base)
        reason = str(exc).splitlines()[0]
        config.netmorph = {
            "model_type": base.model_type,
            "why": [reason],
            "rebuildable": False,
            **STOCK_GUARD,
        }
        return [
            *notes,
            f"the config cannot describe this child (a stock model built from it fails: "
            f"{reason}): a stock from_pretrained refuses its model_type {config.model_type!r}; "
            "save it whole with torch.save",
        ]
    if layout is not None:
        notes += _fold_embedding_scale(model, stock, layout)
        _align_widths(model, stock, layout)
    spec = difference(model, stock, _refusal(stock.config))
    if spec is not None and not spec["rebuildable"] and layout is not None:
        spec = _with_head_dim(model, config, base, layout) or spec
    if hasattr(config, "netmorph"):
        del config.netmorph
    if spec is None:
        config.__class__ = base
        notes.append(
            "save_pretrained → stock from_pretrained reloads this child exactly (its config "
            "describes it)"
        )
        return notes
    config.__class__ = marked_class(base)
    config.netmorph = {
        "model_type": base.model_type,
        **spec,
        "shared": shared_parameters(model),
        **STOCK_GUARD,
    }
    what = ", ".join(spec["why"][:3])
    notes.append(
        f"the config cannot describe this child ({what}): its model_type is "
        f"{config.model_type!r}, which a stock from_pretrained refuses; reload it with "
        "netmorph_core.torch.load_grown(path)"
        + ("" if spec["rebuildable"] else " — not here: save it whole with torch.save")
    )
    return notes


def _dividing_heads(
    model: nn.Module, config: object, base: type, layout: Layout | None
) -> nn.Module | None:
    """The stock model built with the config's head count lowered to the largest that divides
    d_model, where the class requires hidden_size divisible by the heads and derives head_dim
    from them (GPTBigCode and GPT-2 grown to 45 wide): the modules then record their own
    geometry, which ``load_grown`` restores; None (the config as it was) where none builds."""
    if layout is None or not layout.family.derived_head_dim:
        return None
    field = next((f for f in ("num_attention_heads", "n_head") if hasattr(config, f)), None)
    heads = getattr(config, field, None) if field else None
    if not isinstance(heads, int):
        return None
    kv = getattr(config, "num_key_value_heads", None)
    for count in range(min(heads, layout.d_model), 0, -1):
        if layout.d_model % count:
            continue
        setattr(config, field, count)
        if kv == heads:
            config.num_key_value_heads = count
        try:
            return _stock_model(model, config, base)
        except Exception:  # the class refuses this count too: the next one
            continue
    setattr(config, field, heads)
    if kv == heads:
        config.num_key_value_heads = kv
    return None


def _with_head_dim(
    model: nn.Module, config: object, base: type, layout: Layout
) -> dict[str, Any] | None:
    """The difference once the config records the blocks' head_dim although its class derives
    it (GPT-NeoX's rotary frequencies read ``head_dim`` when present, its attention does not):
    kept when the child becomes rebuildable (or stock), else the config is left as it was."""
    hd = _one([b.head_dim for b in layout.blocks])
    if hd is None or "head_dim" in config.to_dict() or not layout.family.derived_head_dim:
        return None
    try:
        config.head_dim = hd
        stock = _stock_model(model, config, base)
    except Exception:  # the class or its config refuses an explicit head_dim
        if "head_dim" in vars(config):
            del config.head_dim
        return None
    spec = difference(model, stock, _refusal(stock.config))
    if spec is None or spec["rebuildable"]:
        return spec
    del config.head_dim
    return None


def shared_parameters(model: nn.Module) -> list[list[str]]:
    """Names of the parameters several modules share (a tied head, BERT's decoder bias)."""
    groups: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(name)
    return [names for names in groups.values() if len(names) > 1]


def _untie(model: nn.Module) -> list[str]:
    """``tie_word_embeddings`` false where the child's output embedding no longer shares the
    input embedding's weight (BERT's masked-LM decoder keeps the parent's width when the
    stream grows), so that a reload does not tie them again."""
    config = model.config
    if not getattr(config, "tie_word_embeddings", False):
        return []
    embed, head = input_embedding(model), output_embedding(model)
    if embed is None or head is None or getattr(head, "weight", None) is embed.weight:
        return []
    config.tie_word_embeddings = False
    return ["the output embedding no longer shares the input embedding's weight: untied"]


def _stack_config(model: nn.Module, config: object, layout: Layout) -> object:
    """The config that sizes the layout's stack: the one the owner (or a module above it)
    holds where that is another (a vision-language model's language model reads its text
    config), a composite config's sub-config named like the stack's owner (CLIP's
    ``vision_config`` for ``vision_model``), else ``config``."""
    parts = layout.owner.split(".") if layout.owner else []
    for i in range(len(parts), 0, -1):
        own = getattr(model.get_submodule(".".join(parts[:i])), "config", None)
        if own is not None and own is not config:
            return own
    owner = layout.owner.split(".")[0]
    for key in getattr(config, "sub_configs", None) or {}:
        sub = getattr(config, key, None)
        prefix = key.removesuffix("_config")
        if sub is not None and prefix and owner.startswith(prefix):
            return sub
    return config


def _set(config: object, names: tuple[str, ...], value: object) -> None:
    """Set the first of ``names`` the config has (attribute maps included); a whole number
    stays a float where the config holds a float (configs that validate their field types)."""
    for name in names:
        if hasattr(config, name):
            if isinstance(getattr(config, name), float) and type(value) is int:
                value = float(value)
            setattr(config, name, value)
            return


def _one(values: list) -> object | None:
    return values[0] if values and all(v == values[0] for v in values) else None


def norm_eps(model: nn.Module) -> list[float]:
    """The eps of every norm module (LayerNorm, RMSNorm and classes named ``…Norm``)."""
    out = []
    for module in model.modules():
        if isinstance(module, (nn.LayerNorm, nn.RMSNorm)) or type(module).__name__.endswith("Norm"):
            eps = next(
                (getattr(module, a) for a in ("eps", "variance_epsilon") if hasattr(module, a)),
                None,
            )
            if isinstance(eps, float):
                out.append(eps)
    return out


def _write_sizes(config: object, model: nn.Module, layout: Layout) -> None:
    """The config's size fields from the modules, where every block agrees."""
    fam = layout.family
    blocks = layout.blocks
    _set(config, ("hidden_size", "n_embd"), layout.d_model)
    embed = input_embedding(model)
    if isinstance(getattr(config, "word_embed_proj_dim", None), int) and embed is not None:
        config.word_embed_proj_dim = embed.embedding_dim  # OPT: projected where ≠ hidden_size
    if not fam.shared:  # shared blocks (ALBERT): the layer count is the depth
        _set(config, ("num_hidden_layers", "n_layer"), len(blocks))
    heads = _one([b.heads for b in blocks])
    head_dim = _one([b.head_dim for b in blocks])
    kv = _one([b.kv_heads for b in blocks])
    if fam.derived_head_dim and head_dim and heads and heads * head_dim != layout.d_model:
        # the count that derives the blocks' head_dim, so that the buffers the config derives
        # from it (rotary frequencies) keep their shapes; the modules record their own count
        derived = layout.d_model // head_dim if layout.d_model % head_dim == 0 else None
        kv = derived if kv == heads else None  # multi-head: the same count (Whisper maps both)
        heads = derived
    if heads is not None:
        _set(config, ("num_attention_heads", "n_head"), heads)
    if kv is not None:
        _set(config, ("num_key_value_heads", "num_kv_heads"), kv)
    if head_dim is not None and not fam.derived_head_dim and not fam.latent:
        setattr(config, fam.head_dim_field, head_dim)  # latent: its own fields, kept
    hidden = None
    if not fam.moe:  # the experts' sizes: moe.grow_ffn writes them
        hidden = _one(
            [as_matrix(model.get_submodule(b.name(fam.ffn_out))).shape[1] for b in blocks]
        )
    if hidden is not None:
        fields = ("intermediate_size", "n_inner", "ffn_hidden_size", "hidden_dim")
        _set(config, (*fields, *_mapped_ffn(config)), hidden)
        if _settable(config, "mlp_ratio") and not hasattr(config, "intermediate_size"):
            ratio = _mlp_ratio(config, layout.d_model, hidden)
            if ratio is not None:
                config.mlp_ratio = ratio
    eps = _one(norm_eps(model))
    if eps is not None:  # a field set to None chooses the other norm (Cohere2-MoE's RMS eps)
        _set(config, tuple(f for f in EPS_FIELDS if getattr(config, f, None) is not None), eps)


def _mapped_ffn(config: object) -> tuple[str, ...]:
    """The feed-forward size field of the stack the config's attribute map describes:
    Speech2Text and Whisper map ``num_hidden_layers`` to ``encoder_layers``, whose blocks'
    size is ``encoder_ffn_dim`` (none where the map names no ``<stack>_layers``)."""
    mapped = getattr(type(config), "attribute_map", {}).get("num_hidden_layers", "")
    stack = mapped.removesuffix("_layers") if isinstance(mapped, str) else ""
    return (f"{stack}_ffn_dim",) if stack and stack != mapped else ()


def _settable(config: object, attr: str) -> bool:
    return hasattr(config, attr) and not isinstance(getattr(type(config), attr, None), property)


def _ffn_size(config: object, d: int, ratio: float) -> int:
    """DINOv2's feed-forward hidden size for ``mlp_ratio``: m = int(d·ratio), or for SwiGLU
    (``use_swiglu_ffn``) ⌈int(2m/3) / 8⌉·8."""
    m = int(d * ratio)
    return (int(m * 2 / 3) + 7) // 8 * 8 if getattr(config, "use_swiglu_ffn", False) else m


def _mlp_ratio(config: object, d: int, hidden: int) -> float | int | None:
    """The ``mlp_ratio``, of the type the config holds (DINOv2 types it int, MobileViT
    float), whose derived hidden size (:func:`_ffn_size`) is ``hidden``; None where none is
    (the comparison with the stock model then marks the config)."""
    if isinstance(getattr(config, "mlp_ratio", None), float):
        ratio = hidden / d
        return ratio if _ffn_size(config, d, ratio) == hidden else None
    top = 2 * hidden // d + 2
    return next((r for r in range(1, top) if _ffn_size(config, d, r) == hidden), None)


def _stock_model(model: nn.Module, config: object, base: type) -> nn.Module:
    """What a stock from_pretrained builds from ``config``'s JSON (on the meta device)."""
    values = config.to_dict()
    values.pop("netmorph", None)
    values["model_type"] = base.model_type
    stock_config = config_from_dict(base, values)
    with torch.device("meta"):
        return type(model)(stock_config)


def _fold_embedding_scale(model: nn.Module, stock: nn.Module, layout: Layout) -> list[str]:
    """A Gemma-style scaled embedding whose scale the config no longer derives: the scale
    ratio c = s/s' goes into its weight (and out of a tied head through the final norm)."""
    name = layout.name(layout.family.writers[0])
    embed = model.get_submodule(name)
    own, want = getattr(embed, "scalar_embed_scale", None), None
    try:
        want = getattr(stock.get_submodule(name), "scalar_embed_scale", None)
    except AttributeError:
        return []
    if not isinstance(own, float) or not isinstance(want, float) or own == want:
        return []
    # the scale the forward multiplies by: a float32 tensor made from the float (cast later)
    buffer = getattr(embed, "embed_scale", None)
    used = float(buffer) if isinstance(buffer, torch.Tensor) else own
    want_used = float(torch.tensor(want))
    ratio = used / want_used
    final = layout.name(layout.family.final_norm) if layout.family.final_norm else None
    tied = layout.tied
    norm = model.get_submodule(final) if (tied and final) else None
    if tied and getattr(norm, "weight", None) is None:
        raise MorphError(
            f"{name}: the embedding scale {own:g} differs from the √hidden_size {want:g} a "
            "reload computes, and the tied head's final norm has no gain to compensate it"
        )
    with torch.no_grad():
        w = embed.weight
        w.copy_((w.detach().double() * ratio).to(w.dtype))
        embed.scalar_embed_scale = want
        if isinstance(buffer, torch.Tensor):
            buffer.fill_(want_used)
        if norm is not None:
            offset = gain_offset(norm)
            g = norm.weight.detach().double()
            norm.weight.copy_(((g + offset) / ratio - offset).to(norm.weight.dtype))
    return [f"embedding scale {own:g} folded into {name}.weight (a reload computes {want:g})"]


#: Module attributes that only record the stream's width (set at construction, unused after;
#: DeBERTa's embeddings and masked-LM head record ``embedding_size``).
WIDTH_ATTRS = ("hidden_size", "embed_dim", "embedding_size")


def _align_widths(model: nn.Module, stock: nn.Module, layout: Layout) -> None:
    """Width records the operations leave at the old width (Llama's decoder layer and MLP
    ``hidden_size``, GPT-2's ``embed_dim``) set to the stock model's d_model; the measurement
    that follows the operation checks the child is unchanged by it. An attention module's
    record of its own width heads·head_dim (GPTBigCode splits its fused q|k|v output at
    ``embed_dim``) is kept where the stock module's heads·head_dim differs from it."""
    d_model = layout.d_model
    widths = {b.name(layout.family.attention): b.heads * b.head_dim for b in layout.blocks}
    theirs = dict(stock.named_modules())
    for name, module in model.named_modules():
        other = theirs.get(name)
        for attr in WIDTH_ATTRS:
            value = getattr(other, attr, None)
            own = getattr(module, attr, None)
            if own == widths.get(name) and attention_width(other) != own:
                continue
            if value == d_model and isinstance(own, int):
                setattr(module, attr, d_model)


def attention_width(module: nn.Module | None) -> int | None:
    """heads·head_dim of an attention module that records both (None otherwise)."""
    heads = next((getattr(module, a) for a in HEADS_ATTRS if hasattr(module, a)), None)
    size = next((getattr(module, a) for a in HEAD_DIM_ATTRS if hasattr(module, a)), None)
    return heads * size if isinstance(heads, int) and isinstance(size, int) else None


def gain_offset(norm: nn.Module) -> float:
    """o such that ``norm`` computes (o + weight)·n: 0 for γ·n, 1 for Gemma's (1 + w)·n
    (its output with the gain zeroed is zero or not)."""
    probe = copy.deepcopy(norm).to(torch.float64)
    with torch.no_grad():
        probe.weight.zero_()
        x = torch.randn(2, probe.weight.shape[0], generator=torch.Generator().manual_seed(0))
        return 0.0 if float(probe(x.double()).abs().max()) == 0.0 else 1.0


def _scalars(module: nn.Module) -> dict[str, Any]:
    """The module's scalar attributes; sequences as tuples (a config read back from JSON holds
    lists where the module was built with tuples: Mamba-2's ``time_step_limit``)."""
    out = {}
    for key, value in vars(module).items():
        if key.startswith("_") or key in RUNTIME_FLAGS:
            continue
        if isinstance(value, _SCALARS):
            out[key] = value
        elif isinstance(value, (tuple, list)) and all(isinstance(v, _SCALARS) for v in value):
            out[key] = tuple(value)
    return out


def _unsaved(module: nn.Module) -> dict[str, tuple[int, ...]]:
    """Shapes of ``module``'s own non-persistent buffers (rotary frequencies)."""
    return {
        k: tuple(b.shape)
        for k, b in module.named_buffers(recurse=False)
        if k in module._non_persistent_buffers_set
    }


def _tensors(module: nn.Module) -> dict[str, tuple[int, ...]]:
    own = {k: tuple(p.shape) for k, p in module.named_parameters(recurse=False)}
    persistent = {
        k: tuple(b.shape)
        for k, b in module.named_buffers(recurse=False)
        if k not in module._non_persistent_buffers_set
    }
    return own | persistent


def _refusal(config: object) -> str | None:
    """Why the stock config class's validators refuse ``config`` (None: they accept it)."""
    from huggingface_hub.errors import StrictDataclassError

    try:
        getattr(config, "validate", lambda: None)()
    except StrictDataclassError as exc:
        return str(exc.__cause__ or exc).splitlines()[0]
    return None


def _kind(module: nn.Module) -> tuple:
    """A module's class; for a parametrized module (a class torch makes per instance: a
    weight-normed convolution), its original class and its parametrizations' classes."""
    if not parametrize.is_parametrized(module):
        return (type(module),)
    chains = sorted((k, tuple(type(p) for p in v)) for k, v in module.parametrizations.items())
    return (type(module).__bases__[0], *chains)


def difference(
    model: nn.Module, stock: nn.Module, refusal: str | None = None
) -> dict[str, Any] | None:
    """What the stock model built from the config lacks to be ``model`` (None: nothing).

    ``replace``: module name → its description (:mod:`.hf_modules`: Linear, PActivation,
    Sequential of them);
    ``attributes``: module name → {attribute: value}; ``why``: short reasons;
    ``rebuildable``: whether every difference is one of these (parameter shapes come with the
    weights). ``refusal``: why the stock config validators refuse the config, if they do."""
    # every name of a module shared between blocks (GPT-1's one activation): a block added
    # by copying holds its own
    ours = dict(model.named_modules(remove_duplicate=False))
    theirs = dict(stock.named_modules(remove_duplicate=False))
    replace: dict[str, list] = {}
    attributes: dict[str, dict[str, Any]] = {}
    why: list[str] = [refusal] if refusal else []
    rebuildable = True
    for name, module in ours.items():
        if any(name.startswith(f"{r}.") for r in replace):
            continue
        other = theirs.get(name)
        if other is None or _kind(other) != _kind(module):
            description = describe_module(module)
            replace[name] = description or []
            rebuildable &= description is not None
            why.append(f"{name or 'the model'} is a {type(module).__name__}")
            continue
        if _tensors(module) != _tensors(other):
            why.append(f"{name} has other shapes")
        derived = _unsaved(module) != _unsaved(other)
        if derived:  # buffers the stock model derives from the config, not from the weights
            rebuildable = False
            why.append(f"{name or 'the model'} holds unsaved buffers of other shapes")
        mine, stock_values = _scalars(module), _scalars(other)
        changed = {k: v for k, v in mine.items() if stock_values.get(k, v) != v}
        if changed:
            attributes[name] = changed
            why.append(f"{name}.{next(iter(changed))}")
    missing = [
        n for n in theirs if n not in ours and not any(n.startswith(f"{r}.") for r in replace)
    ]
    if missing:
        rebuildable = False
        why.append(f"no {missing[0]}")
    if not why:
        return None
    return {
        "replace": replace,
        "attributes": attributes,
        "why": why[:10],
        "rebuildable": rebuildable,
    }
