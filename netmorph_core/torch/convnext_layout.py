"""Where the parts of a ConvNeXt live (Hugging Face ConvNeXt and ConvNeXt V2, torchvision's
``convnext_*``, timm's ``convnext_*``), found by structure, not by class names.

A ConvNeXt is a chain of *stages*, each a residual stream of its own width d_s (NCHW)::

    stage s:  x = conv_s(LN(previous stage's x))    (stage 0: x = LN(stem_conv(image)))
              x = x + γ ⊙ pw2(φ(pw1(LN(dwconv(x)))))   per block (γ optional)
    head:     logits = W·LN(pool(x)) + b

A *block* is a module whose parameters belong, in registration order, to a depthwise
``Conv2d`` (d channels in d groups, stride 1), a LayerNorm over d channels, a pointwise layer
d → m (``Linear`` on channels-last, or a 1×1 ``Conv2d``), an optional global response norm
(ConvNeXt V2's GRN: parameters of m entries), a pointwise layer m → d of the same kind, and an
optional per-channel layer scale γ (a parameter of d entries, of the block or of a module of
its own). Its forward is checked on a float64 copy (every parameter redrawn) against
x + γ ⊙ pw2(ψ(pw1(LN(dwconv(x))))), ψ the parameterless modules and GRN registered between
pw1 and pw2 applied in order; a block whose forward differs is refused by name. A stage is a
``ModuleList``/``Sequential`` whose children are all such blocks of one width.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .errors import MorphError
from .kinds import type_label

__all__ = ["ConvBlock", "ConvNet", "ConvStage", "as_matrix4", "convnet", "find_stages"]

#: Relative deviation of a block's forward from the recognised formula (float64) accepted.
CHECK_TOL = 1e-9
#: Side of the feature map the block check runs on.
CHECK_SIDE = 8


@dataclass(frozen=True)
class ConvBlock:
    """One block: its qualified ``prefix`` and the relative names of its depthwise conv,
    LayerNorm, pointwise layers, GRN (None where absent) and layer scale parameter (None where
    absent); stream ``width`` d and hidden size m."""

    prefix: str
    dwconv: str
    norm: str
    pw1: str
    pw2: str
    grn: str | None
    scale: str | None
    width: int
    hidden: int

    def name(self, rel: str) -> str:
        """The qualified name of ``rel`` inside this block."""
        return f"{self.prefix}.{rel}"


@dataclass(frozen=True)
class ConvStage:
    """One stage: the qualified name of its ``blocks`` container, the blocks, the stream
    ``width``."""

    index: int
    blocks: str
    members: tuple[ConvBlock, ...]
    width: int

    @property
    def depth(self) -> int:
        return len(self.members)


@dataclass(frozen=True)
class ConvNet:
    """A recognised ConvNeXt: its ``stages`` in registration order and the model ``config``
    (None for a plain module)."""

    stages: tuple[ConvStage, ...]
    config: object | None

    def global_blocks(self) -> list[tuple[int, int]]:
        """(stage, block within the stage) of every block, stage 0's first."""
        return [(s.index, i) for s in self.stages for i in range(s.depth)]


def as_matrix4(module: nn.Module) -> torch.Tensor:
    """The (out, in) weight of a Linear or 1×1 Conv2d layer (a view, not a copy)."""
    w = module.weight
    return w if w.dim() == 2 else w.reshape(w.shape[0], w.shape[1])


def _owners(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """The modules of ``module`` (itself as "") that hold parameters of their own."""
    return [
        (n, m) for n, m in module.named_modules() if any(True for _ in m.parameters(recurse=False))
    ]


def _pointwise(m: nn.Module, d_in: int) -> int | None:
    """The output size of a Linear or ungrouped 1×1 Conv2d reading ``d_in`` channels."""
    if type(m) is nn.Linear and m.in_features == d_in:
        return m.out_features
    if (
        type(m) is nn.Conv2d
        and m.groups == 1
        and m.kernel_size == (1, 1)
        and m.stride == (1, 1)
        and m.padding == (0, 0)
        and m.in_channels == d_in
    ):
        return m.out_channels
    return None


def _size1(p: torch.Tensor, n: int) -> bool:
    """Whether ``p`` holds n entries along one axis (every other axis of size 1)."""
    return p.numel() == n and max(p.shape, default=0) == n


def _parse(module: nn.Module, prefix: str) -> ConvBlock | None:
    """The parts of a block by its parameters' owners in registration order (module
    docstring), or None where they do not follow the pattern."""
    owners = _owners(module)
    own = dict(module.named_parameters(recurse=False)) if owners and owners[0][0] == "" else {}
    owners = [(n, m) for n, m in owners if n]
    if len(owners) < 3:
        return None
    (dw_name, dw), (norm_name, norm), (pw1_name, pw1) = owners[:3]
    if type(dw) is not nn.Conv2d or dw.groups < 2:
        return None
    d = dw.out_channels
    if not (dw.in_channels == d == dw.groups and dw.stride == (1, 1)):
        return None
    if not (isinstance(norm, nn.LayerNorm) and tuple(norm.normalized_shape) == (d,)):
        return None
    if norm.weight is None:
        return None
    m = _pointwise(pw1, d)
    if m is None:
        return None
    rest = owners[3:]
    grn = None
    if rest and type(rest[0][1]) is not type(pw1):
        name, g = rest[0]
        if not all(_size1(p, m) for p in g.parameters(recurse=False)):
            return None
        if any(True for _ in g.children()):
            return None
        grn, rest = name, rest[1:]
    if not rest or type(rest[0][1]) is not type(pw1) or _pointwise(rest[0][1], m) != d:
        return None
    pw2_name = rest[0][0]
    rest = rest[1:]
    scales = [f"{n}.{k}" for n, mod in rest for k, _ in mod.named_parameters(recurse=False)]
    scales += list(own)
    params = [module.get_parameter(s) for s in scales]
    if len(scales) > 1 or not all(_size1(p, d) for p in params):
        return None
    scale = scales[0] if scales else None
    return ConvBlock(prefix, dw_name, norm_name, pw1_name, pw2_name, grn, scale, d, m)


def _between(module: nn.Module, block: ConvBlock) -> list[nn.Module]:
    """The leaf modules registered after pw1 and before pw2 (activation, dropout, GRN)."""
    names = [n for n, _ in module.named_modules()]
    lo, hi = names.index(block.pw1), names.index(block.pw2)
    return [
        module.get_submodule(n)
        for n in names[lo + 1 : hi]
        if not any(True for _ in module.get_submodule(n).children())
    ]


def _reference(module: nn.Module, block: ConvBlock, x: torch.Tensor) -> torch.Tensor:
    """γ ⊙ pw2(ψ(pw1(LN(dwconv(x))))) on (N, d, H, W) ``x`` (module docstring)."""
    norm = module.get_submodule(block.norm)
    h = module.get_submodule(block.dwconv)(x).permute(0, 2, 3, 1)
    h = F.layer_norm(h, (block.width,), norm.weight, norm.bias, norm.eps)
    pw1 = module.get_submodule(block.pw1)
    last = isinstance(pw1, nn.Linear)
    h = pw1(h if last else h.permute(0, 3, 1, 2))
    for layer in _between(module, block):
        h = layer(h)
    h = module.get_submodule(block.pw2)(h)
    if not last:
        h = h.permute(0, 2, 3, 1)
    if block.scale is not None:
        h = h * module.get_parameter(block.scale).reshape(-1)
    return h.permute(0, 3, 1, 2)


def _redrawn(module: nn.Module) -> nn.Module:
    """A float64 copy of ``module`` in eval mode, every parameter redrawn (per-channel ones in
    [0.5, 1.5], the others N(0, 1/fan-in)): no part of the formula is degenerate there (a new
    block adding zero, a zero GRN)."""
    probe = copy.deepcopy(module).to(torch.float64).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in probe.parameters():
            if p.numel() == max(p.shape, default=1):
                value = 0.5 + torch.rand(p.shape, generator=gen, dtype=torch.float64)
            else:
                value = torch.randn(p.shape, generator=gen, dtype=torch.float64)
                value /= p[0].numel() ** 0.5
            p.copy_(value.to(p.device))
    return probe


def _check_forward(module: nn.Module, block: ConvBlock) -> None:
    """The block's forward is x + γ ⊙ pw2(ψ(pw1(LN(dwconv(x))))) (module docstring) on a
    redrawn float64 copy (:func:`_redrawn`); MorphError naming it otherwise."""
    shape = (2, block.width, CHECK_SIDE, CHECK_SIDE)
    try:
        probe = _redrawn(module)
        gen = torch.Generator().manual_seed(1)
        x = torch.randn(shape, generator=gen, dtype=torch.float64)
        x = x.to(next(probe.parameters()).device)
        with torch.no_grad():
            out = probe(x)
            ref = _reference(probe, block, x)
            same = isinstance(out, torch.Tensor) and out.shape == x.shape
            err = float((out - x - ref).abs().max()) if same else float("inf")
            scale = float(ref.abs().max())
    except Exception as exc:  # any failure of the block's own forward or of the formula
        raise MorphError(
            f"{block.prefix!r} ({type_label(module)}) does not run as a ConvNeXt block on a "
            f"{shape} input ({type(exc).__name__}: {exc}); refused"
        ) from exc
    if not same:
        raise MorphError(
            f"{block.prefix!r} ({type_label(module)}) does not return a map of its input's "
            "shape: not a residual ConvNeXt block; refused"
        )
    if not err <= CHECK_TOL * max(scale, 1e-30):
        raise MorphError(
            f"{block.prefix!r} ({type_label(module)}) holds a depthwise conv, LayerNorm and two "
            "pointwise layers, but its forward is not x + γ⊙pw2(act(pw1(LN(dwconv(x))))) "
            f"(relative deviation {err / max(scale, 1e-30):.2e}): the part it adds is not "
            "understood; refused"
        )


def find_stages(model: nn.Module) -> list[tuple[str, list[ConvBlock]]]:
    """Every ModuleList/Sequential of ``model`` whose children all parse as blocks of one
    width (the parameter pattern of the module docstring; forwards not yet checked)."""
    out = []
    for name, module in model.named_modules():
        if not isinstance(module, (nn.ModuleList, nn.Sequential)) or len(module) == 0:
            continue
        parsed = [_parse(b, f"{name}.{i}" if name else str(i)) for i, b in enumerate(module)]
        if any(p is None for p in parsed):
            continue
        widths = {p.width for p in parsed}  # type: ignore[union-attr]
        if len(widths) == 1:
            out.append((name, parsed))  # type: ignore[arg-type]
    return out


def convnet(model: nn.Module) -> ConvNet:
    """The :class:`ConvNet` of ``model``, every block's forward checked (on a float64 copy of
    one block at a time); MorphError naming the part not understood."""
    found = find_stages(model)
    if not found:
        raise MorphError(
            f"{type(model).__name__} has no list of ConvNeXt blocks (depthwise conv, LayerNorm, "
            "two pointwise layers, optional layer scale); refused"
        )
    names = [n for n, _ in found]
    for n in names:
        inside = [o for o in names if o != n and o.startswith(n + ".")]
        if inside:
            raise MorphError(f"{inside[0]!r} is a list of blocks inside another ({n!r}); refused")
    stages = []
    for s, (name, blocks) in enumerate(found):
        for block in blocks:
            _check_forward(model.get_submodule(block.prefix), block)
        first = blocks[0]
        for block in blocks:
            same = (block.dwconv, block.norm, block.pw1, block.pw2, block.grn, block.scale)
            if same != (first.dwconv, first.norm, first.pw1, first.pw2, first.grn, first.scale):
                raise MorphError(
                    f"{block.prefix!r} does not have the layout of {first.prefix!r}: every "
                    "block of a stage must share one; refused"
                )
        stages.append(ConvStage(s, name, tuple(blocks), first.width))
    return ConvNet(tuple(stages), getattr(model, "config", None))
