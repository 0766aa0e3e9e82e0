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

A Mamba-2 mixer holds one decay per head: ``in_proj`` (E + (E + 2GN) + H, d) with rows
[z; x; B; C; Δ] (H heads of P = E/H channels, G groups of N states), the causal ``conv1d``
over x, B, C, ``dt_bias``, ``A_log``, ``D`` (H,), a gated norm ``norm`` whose RMS runs over each
group of E/G channels, and ``out_proj`` (d, E). A stack mixing state-space and attention blocks
(Jamba, Zamba, Bamba) is refused by name.
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
    """One mixer's sizes: E inner channels, N states, Δ's rank r (Mamba), kernel K; for a
    Mamba-2 mixer its ``heads`` and ``groups`` (0 for Mamba)."""

    inner: int
    state: int
    rank: int
    kernel: int
    heads: int = 0
    groups: int = 0

    @property
    def mamba2(self) -> bool:
        return self.heads > 0


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
    """The :class:`Geometry` of the Mamba or Mamba-2 mixer ``mixer`` reading a stream of
    width d; MorphError naming the part that does not fit (module docstring)."""
    a_log = getattr(mixer, "A_log", None)
    if isinstance(a_log, torch.Tensor) and a_log.dim() == 1:
        return _geometry2(mixer, d, where)
    missing = [p for p in MIXER_PARTS if getattr(mixer, p, None) is None]
    if missing:
        raise MorphError(f"{where!r} is a state-space mixer without {missing[0]!r}; refused")
    inner, kernel = _causal_conv(mixer.conv1d, where)
    _linears(mixer, ("in_proj", "x_proj", "dt_proj", "out_proj"), where)
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


def _causal_conv(conv: nn.Module, where: str) -> tuple[int, int]:
    """(channels, kernel) of a mixer's depthwise causal ``conv1d``; MorphError otherwise."""
    if not isinstance(conv, nn.Conv1d) or type(conv).forward is not nn.Conv1d.forward:
        raise MorphError(f"'{where}.conv1d' is {type(conv).__name__}, not an nn.Conv1d; refused")
    channels, kernel = conv.out_channels, conv.kernel_size[0]
    if not (conv.in_channels == conv.groups == channels and conv.stride == (1,)):
        raise MorphError(f"'{where}.conv1d' is not a depthwise convolution of stride 1; refused")
    if conv.dilation != (1,) or conv.padding != (kernel - 1,) or conv.padding_mode != "zeros":
        raise MorphError(
            f"'{where}.conv1d' is not causal (zero padding {kernel - 1} = kernel − 1, no "
            "dilation); refused"
        )
    return channels, kernel


def _linears(mixer: nn.Module, parts: tuple[str, ...], where: str) -> None:
    for p in parts:
        layer = getattr(mixer, p)
        if type(layer) is not nn.Linear:
            raise MorphError(f"'{where}.{p}' is {type(layer).__name__}, not an nn.Linear; refused")


#: A Mamba-2 mixer's layers and parameters (module docstring).
MIXER2_PARTS = ("in_proj", "conv1d", "dt_bias", "A_log", "D", "norm", "out_proj")


def _geometry2(mixer: nn.Module, d: int, where: str) -> Geometry:
    """The :class:`Geometry` of a Mamba-2 mixer (module docstring)."""
    missing = [p for p in MIXER2_PARTS if getattr(mixer, p, None) is None]
    if missing:
        raise MorphError(f"{where!r} is a Mamba-2 mixer without {missing[0]!r}; refused")
    _linears(mixer, ("in_proj", "out_proj"), where)
    channels, kernel = _causal_conv(mixer.conv1d, where)
    heads, inner = mixer.A_log.shape[0], mixer.out_proj.in_features
    group_size = getattr(mixer.norm, "group_size", None)
    weight = getattr(mixer.norm, "weight", None)
    if not isinstance(group_size, int) or group_size <= 0 or inner % group_size:
        raise MorphError(f"'{where}.norm' has no group size dividing {inner} channels; refused")
    groups = inner // group_size
    bc = channels - inner
    fits = (
        inner % heads == 0
        and heads % groups == 0
        and bc > 0
        and bc % (2 * groups) == 0
        and mixer.in_proj.weight.shape == (inner + channels + heads, d)
        and mixer.out_proj.weight.shape == (d, inner)
        and isinstance(weight, nn.Parameter)
        and weight.shape == (inner,)
        and all(getattr(mixer, p).shape == (heads,) for p in ("dt_bias", "A_log", "D"))
    )
    if not fits:
        raise MorphError(
            f"{where!r}: in_proj {tuple(mixer.in_proj.weight.shape)}, conv1d over {channels} "
            f"channels, {heads} heads, out_proj {tuple(mixer.out_proj.weight.shape)} are not "
            "the shapes of a Mamba-2 mixer; refused"
        )
    top = {n.partition(".")[0] for n, _ in mixer.named_parameters()}
    extra = sorted(top - set(MIXER2_PARTS))
    if extra:
        raise MorphError(f"'{where}.{extra[0]}' is not a part of a Mamba-2 mixer; refused")
    return Geometry(inner, bc // (2 * groups), 0, kernel, heads=heads, groups=groups)


def find_ssm(model: nn.Module) -> SSMLayout | None:
    """The :class:`SSMLayout` of ``model``; None when it holds no state-space mixer;
    MorphError naming what it does not follow when it holds one the operations do not
    support (a mixer of other shapes, a hybrid stack, a block with other parts)."""
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
