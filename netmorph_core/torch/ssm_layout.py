"""Where the parts of a selective state-space (Mamba) language model live.

A Mamba model is a stack of pre-norm residual blocks ``x + mixer(norm(x))`` after a token
embedding, closed by a final norm and an output head (tied to the embedding or not). The
stack is found by structure: a ``ModuleList`` next to an ``nn.Embedding`` whose blocks each
hold one norm of width d (a gain of size d) and one *selective-scan mixer*. A mixer is the
module holding the parts every Mamba implementation names alike (the reference
``mamba_ssm``, Hugging Face Mamba and FalconMamba), checked by shape (E inner channels,
N states, rank r, kernel K):

- ``in_proj`` (2E, d): rows [x; z], the scanned half and the gate;
- ``conv1d``: a depthwise causal ``nn.Conv1d`` over the E channels (padding K − 1, the
  output cut to the sequence length);
- ``x_proj`` (r + 2N, E): Δ, B, C from the convolved channels; ``dt_proj`` (E, r) and its
  bias: Δ per channel; ``A_log`` (E, N), ``D`` (E,): per channel;
- ``out_proj`` (d, E): writes the stream.

A mixer whose ``A_log`` is one value per head (Mamba-2: heads, groups, a gated norm) and a
stack mixing state-space and attention blocks (Jamba, Zamba, Bamba) are refused by name.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .errors import MorphError
from .transformer_layout import HEADS

#: The mixer's layers and parameters (module docstring).
MIXER_PARTS = ("in_proj", "conv1d", "x_proj", "dt_proj", "A_log", "D", "out_proj")


@dataclass(frozen=True)
class Geometry:
    """One mixer's sizes: E inner channels, N states per channel, Δ's rank r, kernel K."""

    inner: int
    state: int
    rank: int
    kernel: int


@dataclass(frozen=True)
class SSMLayout:
    """A recognised Mamba stack: the stream owner ``owner`` ("" for the root), the block list
    ``blocks_path``, each block's ``norm`` and ``mixer`` (relative names) and geometry, the
    token ``embed``, the ``final_norm`` and ``head`` (qualified names or None), whether the
    head is tied to the embedding, and the model's ``config`` (None for a plain module)."""

    owner: str
    blocks_path: str
    norm: str
    mixer: str
    geometry: tuple[Geometry, ...]
    d_model: int
    embed: str
    final_norm: str | None
    head: str | None
    tied: bool
    config: object | None

    @property
    def blocks(self) -> tuple[str, ...]:
        """The qualified prefix of every block."""
        return tuple(f"{self.blocks_path}.{i}" for i in range(len(self.geometry)))

    def mixer_of(self, i: int) -> str:
        return f"{self.blocks_path}.{i}.{self.mixer}"

    def norm_of(self, i: int) -> str:
        return f"{self.blocks_path}.{i}.{self.norm}"


def is_mixer(module: nn.Module) -> bool:
    """Whether ``module`` holds a selective-scan mixer's parts (any variant)."""
    return all(hasattr(module, p) for p in ("in_proj", "conv1d", "out_proj", "A_log", "D"))


def _is_norm(module: nn.Module, d: int) -> bool:
    w = getattr(module, "weight", None)
    has_eps = any(isinstance(getattr(module, a, None), float) for a in ("eps", "variance_epsilon"))
    return isinstance(w, nn.Parameter) and tuple(w.shape) == (d,) and has_eps


def geometry(mixer: nn.Module, d: int, where: str) -> Geometry:
    """The :class:`Geometry` of the Mamba (v1) mixer ``mixer`` reading a stream of width d;
    MorphError naming the part that does not fit (module docstring)."""
    a_log = getattr(mixer, "A_log", None)
    if isinstance(a_log, torch.Tensor) and a_log.dim() == 1:
        raise MorphError(
            f"{where!r} is a Mamba-2 mixer (one decay per head, {a_log.shape[0]} heads, grouped "
            "B/C and a gated norm): the state-space operations support Mamba (v1) mixers "
            "only; refused"
        )
    missing = [p for p in MIXER_PARTS if getattr(mixer, p, None) is None]
    if missing:
        raise MorphError(f"{where!r} is a state-space mixer without {missing[0]!r}; refused")
    conv = mixer.conv1d
    if not isinstance(conv, nn.Conv1d) or type(conv).forward is not nn.Conv1d.forward:
        raise MorphError(f"'{where}.conv1d' is {type(conv).__name__}, not an nn.Conv1d; refused")
    inner = conv.out_channels
    kernel = conv.kernel_size[0]
    if not (conv.in_channels == conv.groups == inner and conv.stride == (1,)):
        raise MorphError(f"'{where}.conv1d' is not a depthwise convolution of stride 1; refused")
    if conv.dilation != (1,) or conv.padding != (kernel - 1,) or conv.padding_mode != "zeros":
        raise MorphError(
            f"'{where}.conv1d' is not causal (zero padding {kernel - 1} = kernel − 1, no "
            "dilation); refused"
        )
    for p in ("in_proj", "x_proj", "dt_proj", "out_proj"):
        layer = getattr(mixer, p)
        if type(layer) is not nn.Linear:
            raise MorphError(f"'{where}.{p}' is {type(layer).__name__}, not an nn.Linear; refused")
    state = mixer.A_log.shape[1]
    rank = mixer.x_proj.out_features - 2 * state
    shapes = {
        "in_proj": ((2 * inner, d), mixer.in_proj.weight),
        "x_proj": ((rank + 2 * state, inner), mixer.x_proj.weight),
        "dt_proj": ((inner, rank), mixer.dt_proj.weight),
        "A_log": ((inner, state), mixer.A_log),
        "D": ((inner,), mixer.D),
        "out_proj": ((d, inner), mixer.out_proj.weight),
    }
    for part, (shape, t) in shapes.items():
        if tuple(t.shape) != shape or rank < 1:
            raise MorphError(
                f"'{where}.{part}' has shape {tuple(t.shape)}, not {shape} (E = {inner} "
                f"channels, N = {state} states, d = {d}): not a Mamba mixer; refused"
            )
    if mixer.dt_proj.bias is None or mixer.x_proj.bias is not None:
        raise MorphError(
            f"'{where}': dt_proj has no bias or x_proj has one: not a Mamba mixer; refused"
        )
    extra = [n for n, p in mixer.named_parameters() if n.partition(".")[0] not in MIXER_PARTS]
    if extra:
        raise MorphError(f"'{where}.{extra[0]}' is not a part of a Mamba mixer; refused")
    return Geometry(inner, state, rank, kernel)


def find_ssm(model: nn.Module) -> SSMLayout | None:
    """The :class:`SSMLayout` of ``model``; None when it holds no state-space mixer;
    MorphError naming what it does not follow when it holds one the operations do not
    support (a Mamba-2 mixer, a hybrid stack, a block with other parts)."""
    if not isinstance(model, nn.Module):
        return None
    mixers = [n for n, m in model.named_modules() if is_mixer(m)]
    if not mixers:
        return None
    for owner_name, owner in model.named_modules():
        embed = next(
            ((n, m) for n, m in owner.named_children() if isinstance(m, nn.Embedding)), None
        )
        if embed is None:
            continue
        for rel, blocks in owner.named_children():
            if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0:
                continue
            if not any(is_mixer(m) for m in blocks.modules()):
                continue
            return _layout(model, owner_name, embed, rel, blocks)
    raise MorphError(
        f"{type(model).__name__} holds a state-space mixer ({mixers[0]!r}) outside a list of "
        "blocks after a token embedding; refused"
    )


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def _layout(
    model: nn.Module,
    owner_name: str,
    embed: tuple[str, nn.Embedding],
    rel: str,
    blocks: nn.ModuleList,
) -> SSMLayout:
    prefix = _join(owner_name, rel)
    d = embed[1].embedding_dim
    roles: tuple[str, str] | None = None
    geo = []
    for i, block in enumerate(blocks):
        where = f"{prefix}.{i}"
        children = [(n, m) for n, m in block.named_children() if any(True for _ in m.parameters())]
        mixer = [n for n, m in children if is_mixer(m)]
        norms = [n for n, m in children if _is_norm(m, d)]
        if len(mixer) != 1 or len(norms) != 1 or len(children) != 2:
            kinds = ", ".join(f"{n} ({type(m).__name__})" for n, m in children)
            raise MorphError(
                f"{where!r} holds {kinds}: a Mamba block holds one norm of width {d} and one "
                "state-space mixer (a hybrid stack of attention and state-space blocks is "
                "not supported); refused"
            )
        if roles is not None and roles != (norms[0], mixer[0]):
            raise MorphError(f"{where!r} is laid out unlike block 0; refused")
        roles = (norms[0], mixer[0])
        if any(True for _ in block.parameters(recurse=False)):
            raise MorphError(f"{where!r} holds parameters of its own; refused")
        geo.append(geometry(block.get_submodule(mixer[0]), d, f"{where}.{mixer[0]}"))
    assert roles is not None
    owner = model.get_submodule(owner_name) if owner_name else model
    finals = [n for n, m in owner.named_children() if n != rel and _is_norm(m, d)]
    if len(finals) > 1:
        raise MorphError(
            f"{type(model).__name__}: {len(finals)} norms of width {d} follow the stack "
            f"({finals}); refused"
        )
    head = next((h for h in HEADS if _get(model, h) is not None), None)
    head_module = _get(model, head) if head else None
    if head_module is not None and type(head_module) is not nn.Linear:
        raise MorphError(
            f"the output head {head!r} is {type(head_module).__name__}, not an nn.Linear; refused"
        )
    tied = head_module is not None and head_module.weight is embed[1].weight
    return SSMLayout(
        owner=owner_name,
        blocks_path=prefix,
        norm=roles[0],
        mixer=roles[1],
        geometry=tuple(geo),
        d_model=d,
        embed=_join(owner_name, embed[0]),
        final_norm=_join(owner_name, finals[0]) if finals else None,
        head=head,
        tied=tied,
        config=getattr(model, "config", None),
    )


def _get(model: nn.Module, name: str) -> nn.Module | None:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None
