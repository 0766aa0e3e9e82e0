"""CIFAR ResNets (He et al. 2016, §4.2) and the modularized-morphing paper's ResNet morphs.

:func:`cifar_resnet` builds ResNet-(6n + 2): a 3×3 stem conv, three stages of n
:class:`BasicBlock` with (w, 2w, 4w) channels (w = 16 as in the paper), the first block of
stages 2 and 3 at stride 2, global average pooling and a linear classifier. ``shortcut="A"``
(default, the paper's CIFAR setting): the downsampling shortcut subsamples by 2 and zero-pads the
new channels (no parameters); ``"B"``: a 1×1 stride-2 conv + BN. Every other shortcut is an
identity.

The morphs (notes §4) act on the identity shortcut of a block, seen as the 1×1 layer I:
``morph_<k1>c<k2>`` splits it into 0.5·I + 0.5·I and morphs one half into k1×k1 conv →
[identity BN] → PActivation(a = 1) → k2×k2 conv (F2 ⊛ F1 = 0.5·I~); ``_2branch`` morphs both
halves (two conv branches, no identity left); ``_half`` morphs the blocks of odd index
(0-based, in network order) only. Blocks with a downsampling shortcut keep it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import _validation as v
from ..morph.graph import Module, conv_edge, identity_edge
from .depth import check_flag, check_method
from .module import check_spec, replace_with_module
from .pipeline import Request, run
from .report import MorphReport, Outcome
from .support import check_editable
from .surgery import replace_module

SHORTCUTS = ("A", "B")
_SPEC_NAME = re.compile(r"^morph_(\d+)c(\d+)(_2branch)?(_half)?$")


class ShortcutA(nn.Module):
    """Option A: x subsampled by ``stride`` and zero-padded from C_in to ``out_channels``."""

    def __init__(self, out_channels: int, stride: int) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        extra = self.out_channels - x.shape[1]
        return F.pad(x, (0, 0, 0, 0, extra // 2, extra - extra // 2))


class BasicBlock(nn.Module):
    """relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)), 3×3 convs without bias."""

    def __init__(self, c_in: int, c_out: int, stride: int, shortcut: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            if shortcut == "A":
                self.shortcut = ShortcutA(c_out, stride)
            else:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
                )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    """Stem conv → BN → ReLU → ``stages`` (``layer1..3``) → global average pool → ``fc``."""

    def __init__(
        self, n: int, width: int, num_classes: int, in_channels: int, shortcut: str
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        c = width
        for s, w in enumerate((width, 2 * width, 4 * width)):
            blocks = [
                BasicBlock(c if i == 0 else w, w, 2 if s and i == 0 else 1, shortcut)
                for i in range(n)
            ]
            setattr(self, f"layer{s + 1}", nn.Sequential(*blocks))
            c = w
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


def cifar_resnet(
    depth: int = 20,
    *,
    width: int = 16,
    num_classes: int = 10,
    in_channels: int = 3,
    shortcut: str = "A",
) -> CifarResNet:
    """ResNet-``depth`` for CIFAR (depth = 6n + 2: 20, 32, 44, 56, 110), randomly initialised
    (torch's defaults); ``width``: the first stage's channels; ``shortcut``: "A" or "B"."""
    depth = v.positive_int(depth, "depth")
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"depth must be 6n + 2 with n ≥ 1 (20, 32, 56, 110, ...), got {depth}")
    if shortcut not in SHORTCUTS:
        raise ValueError(f"shortcut must be one of {SHORTCUTS}, got {shortcut!r}")
    return CifarResNet(
        (depth - 2) // 6,
        v.positive_int(width, "width"),
        v.positive_int(num_classes, "num_classes"),
        v.positive_int(in_channels, "in_channels"),
        shortcut,
    )


def resnet20(**kwargs: object) -> CifarResNet:
    """ResNet-20 (n = 3); keyword arguments as in :func:`cifar_resnet`."""
    return cifar_resnet(20, **kwargs)  # type: ignore[arg-type]


def resnet56(**kwargs: object) -> CifarResNet:
    """ResNet-56 (n = 9); keyword arguments as in :func:`cifar_resnet`."""
    return cifar_resnet(56, **kwargs)  # type: ignore[arg-type]


def shortcut_morph(channels: int, k1: int, k2: int, *, two_branch: bool = False) -> Module:
    """The module replacing an identity shortcut I (``channels`` × ``channels``, 1×1).

    One branch: ``id`` = 0.5·I (s → t) plus ``a`` (k1, s → m) then ``b`` (k2, m → t), m with
    ``channels`` channels. ``two_branch``: ``a``/``b`` through m and ``c``/``d`` through n, no
    identity edge. Effective kernel k1 + k2 − 1 (odd sizes keep it centred on the 1×1 I).
    """
    channels = v.positive_int(channels, "channels")
    edges = [conv_edge("a", "s", "m", k1), conv_edge("b", "m", "t", k2)]
    inner = {"m": channels}
    if two_branch:
        edges += [conv_edge("c", "s", "n", k1), conv_edge("d", "n", "t", k2)]
        inner["n"] = channels
    else:
        edges.append(identity_edge("id", "s", "t", 0.5))
    return Module(edges, channels=inner)


def morph_1c1(channels: int) -> Module:
    """0.5·I + (1×1 → 1×1): :func:`shortcut_morph` with k1 = k2 = 1."""
    return shortcut_morph(channels, 1, 1)


def morph_3c1(channels: int) -> Module:
    """0.5·I + (3×3 → 1×1)."""
    return shortcut_morph(channels, 3, 1)


def morph_3c3(channels: int) -> Module:
    """0.5·I + (3×3 → 3×3)."""
    return shortcut_morph(channels, 3, 3)


def morph_1c1_2branch(channels: int) -> Module:
    """(1×1 → 1×1) + (1×1 → 1×1): both halves of the split shortcut morphed."""
    return shortcut_morph(channels, 1, 1, two_branch=True)


def parse_spec_name(name: object) -> tuple[int, int, bool, bool]:
    """ "morph_<k1>c<k2>[_2branch][_half]" → (k1, k2, two_branch, half); odd k1 + k2 − 1."""
    match = _SPEC_NAME.match(name) if isinstance(name, str) else None
    if match is None:
        raise ValueError(
            f"spec_name must look like 'morph_1c1', 'morph_3c3_2branch' or 'morph_1c1_half', "
            f"got {name!r}"
        )
    k1, k2 = int(match[1]), int(match[2])
    if k1 < 1 or k2 < 1 or (k1 + k2) % 2 != 0:
        raise ValueError(f"spec_name {name!r}: k1, k2 must be positive with k1 + k2 even")
    return k1, k2, match[3] is not None, match[4] is not None


def identity_blocks(model: nn.Module, half: bool = False) -> list[str]:
    """Qualified names of the :class:`BasicBlock` of ``model`` with an identity shortcut, in
    network order; ``half``: only those of odd index among all blocks (0-based)."""
    blocks = [n for n, m in model.named_modules() if isinstance(m, BasicBlock)]
    if not blocks:
        raise ValueError(f"{type(model).__name__} has no BasicBlock to morph")
    return [
        n
        for i, n in enumerate(blocks)
        if isinstance(model.get_submodule(n).shortcut, nn.Identity) and (not half or i % 2 == 1)
    ]


def morph_resnet(
    model: nn.Module,
    spec_name: str,
    *,
    method: str = "general",
    activation: object = "prelu",
    batch_norm: bool = True,
    max_iter: int = 300,
    probe: object = None,
    input_shape: Sequence[int] | None = None,
    tol: float | str | None = "auto",
    seed: int | np.random.Generator | None = None,
) -> tuple[nn.Module, MorphReport]:
    """Apply the paper's morph ``spec_name`` (see :func:`parse_spec_name`) to every eligible
    block of a CIFAR ResNet: each identity shortcut becomes a 1×1 conv holding I, which is
    morphed by :func:`netmorph_core.torch.morph_module` into :func:`shortcut_morph`.

    E.g. ``morph_resnet(resnet20(), "morph_1c1")`` is morph20_1c1. Kernel sizes above 1 need
    ``method="practical"`` (a 1×1 G spread over two k×k layers of the same width is not
    exactly solvable by the general method). The new parameters join the optimizer group of
    the block's ``conv2.weight``. Other arguments as in :func:`morph_module`.
    """
    k1, k2, two_branch, half = parse_spec_name(spec_name)
    blocks = identity_blocks(model, half)
    if not blocks:
        raise ValueError(f"{spec_name}: {type(model).__name__} has no block to morph")
    check_method(method)
    check_flag(batch_norm, "batch_norm")
    check_editable(model, [f"{n}.shortcut" for n in blocks])
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    for name in blocks:
        channels = model.get_submodule(name).conv2.out_channels
        probe_conv = nn.Conv2d(channels, channels, 1, bias=False)
        check_spec(probe_conv, shortcut_morph(channels, k1, k2, two_branch=two_branch))

    def build(child: nn.Module) -> Outcome:
        total = Outcome(new_nonzero=0, new_total=0, exact=True)
        for name in blocks:
            block = child.get_submodule(name)
            channels = block.conv2.out_channels
            like = block.conv2.weight
            eye = nn.Conv2d(channels, channels, 1, bias=False, device=like.device, dtype=like.dtype)
            with torch.no_grad():
                eye.weight.copy_(torch.eye(channels, dtype=like.dtype)[:, :, None, None])
            at = f"{name}.shortcut"
            replace_module(child, at, eye)
            part = replace_with_module(
                child,
                at,
                shortcut_morph(channels, k1, k2, two_branch=two_branch),
                method=method,
                seed=rng,
                max_iter=max_iter,
                solver_tol=None,
                activation=activation,
                batch_norm=batch_norm,
                group_of=f"{name}.conv2.weight",
            )
            total.new_nonzero += part.new_nonzero
            total.new_total += part.new_total
            total.residual = max(total.residual, part.residual)
            total.exact = total.exact and part.exact
            total.iterations += part.iterations
            total.sources.update(part.sources)
        total.notes.append(
            f"{spec_name}: {len(blocks)} identity shortcuts morphed ({', '.join(blocks)})"
        )
        if batch_norm:
            total.train_exact = False
            total.notes.append(
                "the new BatchNorms are the identity in eval mode only; in train mode they "
                "normalise with batch statistics"
            )
        return total

    targets = tuple(f"{n}.shortcut" for n in blocks)
    return run(
        Request(
            spec_name,
            model,
            targets,
            build,
            probe=probe,
            input_shape=input_shape,
            tol=tol,
            layer_scope=False,
        )
    )
