"""Where the parts of a Swin transformer live (Hugging Face Swin and Swin-v2, torchvision's
``swin_t``/``swin_v2_t``, timm's ``swin_*``).

A Swin model is a list of *stages*, each a residual stream of width d_s over a token grid,
joined by patch mergings (concat of 2×2 neighbours → LayerNorm(4·d_s) → Linear 4·d_s → 2·d_s,
or Linear then LayerNorm in v2). Every block attends inside windows (even blocks) or shifted
windows (odd blocks)::

    v1 (pre-norm):        x = x + attn(n₁(x)) ;      x = x + mlp(n₂(x))
    v2 (res-post-norm):   x = x + n₁(attn(x)) ;      x = x + n₂(mlp(x))

    attn: scores_h = q_h·k_hᵀ/√d_h + B_h        (v1: B = table[index], one column per head)
          scores_h = cos(q_h, k_h)·exp(min(τ_h, log 100)) + 16·σ(cpb(coords))_h       (v2)

Recognised by structure, not by class names: a list (``ModuleList`` or ``Sequential``) of
blocks of one class, each holding a ``shift_size`` (on the block or one of its modules) and a
window attention — a module owning a parameter
``relative_position_bias_table`` (v1; columns = heads) or ``logit_scale`` (v2; one per head,
with a continuous position bias MLP: a ``Sequential`` of Linear layers reading the 2-d
coordinates, last layer one row per head) — two LayerNorms of width d_s and, outside the
bias MLP, Linear layers in the order q, k, v, o, fc1, fc2 (or one fused q|k|v, o, fc1, fc2).
The cosine attention marks v2, whose blocks norm their branches' outputs (res-post-norm).
Anything else is refused, naming it.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .errors import MorphError
from .kinds import type_label
from .transformer_layout import Block, Family, Layout

__all__ = ["Swin", "SwinStage", "find_swin", "swin_layout"]

TABLE = "relative_position_bias_table"
LOGIT_SCALE = "logit_scale"


@dataclass(frozen=True)
class SwinStage:
    """One stage: ``blocks`` (qualified name of the list), its stream ``width`` d_s, its
    ``layout`` (relative names in ``layout.family``; ``layout.blocks`` one per block), the
    block-relative names of the bias ``table`` (v1), the position bias MLP's last layer
    ``cpb`` and the ``logit_scale`` (v2; "" where absent), whether the blocks are
    ``post_norm`` (v2), and each block's ``shifted`` flag (its windows are shifted)."""

    index: int
    blocks: str
    width: int
    layout: Layout
    table: str
    cpb: str
    logit_scale: str
    post_norm: bool
    shifted: tuple[bool, ...]

    @property
    def depth(self) -> int:
        return len(self.layout.blocks)


@dataclass(frozen=True)
class Swin:
    """A recognised Swin model: its ``stages`` in order and the model ``config`` (None for a
    plain module)."""

    stages: tuple[SwinStage, ...]
    config: object | None

    def global_blocks(self) -> list[tuple[int, int]]:
        """(stage, block within the stage) of every block, stage 0's first."""
        return [(s.index, i) for s in self.stages for i in range(s.depth)]


def _owner_of(module: nn.Module, param: str) -> str | None:
    """The relative name of the first submodule owning a parameter called ``param``."""
    for name, sub in module.named_modules():
        if param in dict(sub.named_parameters(recurse=False)):
            return name
    return None


def _is_block(module: nn.Module) -> bool:
    """A window-attention block: a position bias table or logit scale, and a ``shift_size``
    on the block or one of its modules (BEiT's blocks hold a table but attend globally)."""
    if not any(hasattr(m, "shift_size") for m in module.modules()):
        return False
    return _owner_of(module, TABLE) is not None or _owner_of(module, LOGIT_SCALE) is not None


def find_swin(model: nn.Module) -> list[str]:
    """The qualified names of the lists of window-attention blocks of ``model``, in order
    (empty: none)."""
    found = [
        name
        for name, module in model.named_modules()
        if isinstance(module, (nn.ModuleList, nn.Sequential))
        and len(module) > 0
        and len({type(b) for b in module}) == 1
        and all(_is_block(b) for b in module)
    ]  # the innermost lists: a list of stages holds lists of blocks
    return [f for f in found if not any(g.startswith(f"{f}.") for g in found)]


def _linears(block: nn.Module, skip: str) -> list[tuple[str, nn.Linear]]:
    return [
        (n, m)
        for n, m in block.named_modules()
        if isinstance(m, nn.Linear) and not (skip and n.startswith(f"{skip}."))
    ]


def _cpb(block: nn.Module, scale_owner: str) -> str:
    """The relative name of the position bias MLP (a Sequential of Linear layers whose first
    reads 2-d coordinates) in the module owning the logit scale."""
    owner = block.get_submodule(scale_owner) if scale_owner else block
    for name, sub in owner.named_children():
        lins = [m for m in sub.modules() if isinstance(m, nn.Linear)]
        if isinstance(sub, nn.Sequential) and lins and lins[0].in_features == 2:
            return f"{scale_owner}.{name}" if scale_owner else name
    raise MorphError(
        f"'{scale_owner}' has a logit scale but no position bias MLP (a Sequential of Linear "
        "layers reading the 2-d relative coordinates); refused"
    )


def _common_parent(a: str, b: str) -> str:
    """The innermost module holding both dotted names ``a`` and ``b``."""
    common = []
    for x, y in zip(a.split(".")[:-1], b.split(".")[:-1]):
        if x != y:
            break
        common.append(x)
    return ".".join(common)


def _heads(attention: nn.Module, where: str, rows: int) -> int:
    for attr in ("num_heads", "num_attention_heads"):
        value = getattr(attention, attr, None)
        if isinstance(value, int) and value > 0 and rows % value == 0:
            return value
    raise MorphError(
        f"{where!r} ({type(attention).__name__}) records no head count (num_heads or "
        f"num_attention_heads) dividing its {rows} query rows; refused"
    )


def _shifted(block: nn.Module) -> bool:
    """Whether the block's windows are shifted: a non-zero ``shift_size`` on the block or on
    one of its submodules (torchvision keeps it on the attention)."""
    for module in block.modules():
        value = getattr(module, "shift_size", None)
        if value is None:
            continue
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        return any(int(v) != 0 for v in values)
    return False


def _stage(model: nn.Module, index: int, name: str) -> SwinStage:
    """The :class:`SwinStage` of the block list ``name``; MorphError naming what is not
    understood."""
    blocks = model.get_submodule(name)
    first = blocks[0]
    table_owner = _owner_of(first, TABLE)
    scale_owner = _owner_of(first, LOGIT_SCALE)
    v2 = scale_owner is not None
    cpb = _cpb(first, scale_owner) if v2 else ""
    linears = _linears(first, cpb)
    norms = [(n, m) for n, m in first.named_modules() if isinstance(m, nn.LayerNorm)]
    where = f"{name}.0"
    if len(linears) not in (4, 6):
        raise MorphError(
            f"{where!r} holds {len(linears)} Linear layers outside its position bias, not six "
            "(q, k, v, o, fc1, fc2) or four (fused q|k|v, o, fc1, fc2); refused"
        )
    names = [n for n, _ in linears]
    qkv, (o, fc1, fc2) = tuple(names[:-3]), names[-3:]
    q = first.get_submodule(qkv[0])
    width = q.in_features
    if len(norms) != 2 or any(m.normalized_shape != (width,) for _, m in norms):
        raise MorphError(
            f"{where!r} holds {len(norms)} LayerNorms, not two of its width {width} (one per "
            "branch); refused"
        )
    owner = scale_owner if v2 else table_owner
    attention = _common_parent(f"{owner}.{TABLE}" if owner else TABLE, qkv[0])
    inner = first.get_submodule(o).in_features
    _check_shapes(first, where, qkv, (o, fc1, fc2), width, inner)
    family = Family(
        "swin",
        blocks="",
        attention=attention,
        qkv=qkv,
        o=o,
        ffn_in=(fc1,),
        ffn_out=fc2,
        norms=(norms[0][0], norms[1][0]),
        writers=(),
        final_norm=None,
        derived_head_dim=True,
        qkv_layout="separate" if len(qkv) == 3 else "concat",
    )
    geometry = []
    for i, block in enumerate(blocks):
        if type(block) is not type(first):
            raise MorphError(f"'{name}.{i}' is {type_label(block)}, not {type_label(first)}")
        _check_shapes(block, f"{name}.{i}", qkv, (o, fc1, fc2), width, inner)
        att = block.get_submodule(attention) if attention else block
        heads = _heads(att, f"{name}.{i}.{attention}", inner)
        geometry.append(Block(f"{name}.{i}", heads, heads, inner // heads))
    table = f"{table_owner}.{TABLE}" if table_owner else ""
    logit = f"{scale_owner}.{LOGIT_SCALE}" if v2 else ""
    last_cpb = ""
    if v2:
        mlp = first.get_submodule(cpb)
        last_cpb = f"{cpb}.{[n for n, m in mlp.named_modules() if isinstance(m, nn.Linear)][-1]}"
    for b in geometry:
        block = model.get_submodule(b.prefix)
        _check_bias(block, b, table, last_cpb, logit)
    layout = Layout(
        family=family,
        owner="",
        blocks=tuple(geometry),
        d_model=width,
        norm_kind="layer",
        head=None,
        tied=False,
        config=getattr(model, "config", None),
    )
    shifted = tuple(_shifted(b) for b in blocks)
    return SwinStage(index, name, width, layout, table, last_cpb, logit, v2, shifted)


def _check_shapes(
    block: nn.Module,
    where: str,
    qkv: tuple[str, ...],
    rest: tuple[str, str, str],
    width: int,
    inner: int,
) -> None:
    """q, k, v read d_s and write ``inner`` rows each (a fused layer 3·inner), o reads them
    and writes d_s, fc1 reads d_s, fc2 reads fc1's rows and writes d_s."""
    layers = [block.get_submodule(n) for n in (*qkv, *rest)]
    for n, layer in zip((*qkv, *rest), layers):
        if type(layer) is not nn.Linear:
            raise MorphError(f"'{where}.{n}' is {type_label(layer)}, not a Linear layer; refused")
    *qs, o, fc1, fc2 = layers
    rows = inner * (3 if len(qs) == 1 else 1)
    ok = (
        all(m.in_features == width and m.out_features == rows for m in qs)
        and (o.in_features, o.out_features) == (inner, width)
        and fc1.in_features == width
        and (fc2.in_features, fc2.out_features) == (fc1.out_features, width)
    )
    if not ok:
        raise MorphError(
            f"{where!r}: its Linear layers do not have the shapes of a block of width {width} "
            "(q, k, v → o → fc1 → fc2); refused"
        )


def _check_bias(block: nn.Module, b: Block, table: str, cpb: str, logit: str) -> None:
    """The position bias has one column (v1 table) or one row (v2 MLP's last layer) and one
    logit scale per head."""
    sizes = []
    if table:
        sizes.append((table, block.get_parameter(table).shape[-1]))
    if cpb:
        sizes.append((cpb, block.get_submodule(cpb).out_features))
    if logit:
        sizes.append((logit, block.get_parameter(logit).numel()))
    for rel, size in sizes:
        if size != b.heads:
            raise MorphError(
                f"'{b.prefix}.{rel}' holds {size} per-head entries, not one per each of the "
                f"{b.heads} heads; refused"
            )


def swin_layout(model: nn.Module) -> Swin | None:
    """The model's :class:`Swin` (None: it has no list of window-attention blocks);
    MorphError naming the part not understood."""
    lists = find_swin(model)
    if not lists:
        return None
    stages = tuple(_stage(model, i, name) for i, name in enumerate(lists))
    return Swin(stages, getattr(model, "config", None))
