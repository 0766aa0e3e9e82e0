"""Finding, reading and replacing the layers of an ``nn.Module`` by qualified name.

A convolution's geometry is read into :class:`ConvGeometry` with its padding resolved to an
explicit (left, right) pair per spatial dimension ("same" and "valid" included), so that the
morphs can grow it exactly (DESIGN.md §3).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .errors import MorphError
from .kinds import type_label
from .layer_reads import (
    CHAIN_GEOMETRY,
    Chain,
    attribute_reads,
    chain_geometry,
    needs_chain,
)
from .standardized import is_weight_standardised, plain_conv
from .support import (
    check_attributes_unread,
    check_editable,
    check_understood,
    module_aliases,
)
from .transformer_layout import is_conv1d
from .weight_normed import is_weight_normed, plain_layer

CONV_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
LAYER_TYPES: tuple[type[nn.Module], ...] = (*CONV_TYPES, nn.Linear)
_PAD_MODULES = {
    "zeros": (None, nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d),
    "reflect": (None, nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReflectionPad3d),
    "replicate": (None, nn.ReplicationPad1d, nn.ReplicationPad2d, nn.ReplicationPad3d),
    "circular": (None, nn.CircularPad1d, nn.CircularPad2d, nn.CircularPad3d),
}
_BATCH_NORMS = (None, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def check_model(model: object) -> nn.Module:
    """``model`` must be an ``nn.Module``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return model


def find_module(model: nn.Module, at: object, name: str = "at") -> nn.Module:
    """The submodule with qualified name ``at`` ("features.3", "layer2.0.conv1")."""
    check_model(model)
    if not isinstance(at, str):
        raise TypeError(f"{name} must be a qualified module name (str), got {at!r}")
    modules = dict(model.named_modules(remove_duplicate=False))
    if at == "" or at not in modules:
        layers = [n for n, m in modules.items() if isinstance(m, LAYER_TYPES)]
        shown = ", ".join(repr(n) for n in layers[:8]) + (", ..." if len(layers) > 8 else "")
        raise ValueError(
            f"{name}={at!r} names no submodule of {type(model).__name__}; "
            f"its conv/linear layers are: {shown or 'none'}"
        )
    return modules[at]


def find_layer(
    model: nn.Module,
    at: object,
    kinds: tuple[type[nn.Module], ...] = LAYER_TYPES,
    name: str = "at",
    *,
    same_padding: bool = False,
    grouped: bool = False,
    replaced: bool = False,
    chain: bool = False,
    weight_norm: bool = False,
    standardised: bool = False,
    aliases_ok: bool | None = None,
) -> nn.Module:
    """The Conv1d/2d/3d or Linear layer ``at``; TypeError when it is another kind of module,
    MorphError when the adapter cannot morph it (:func:`.support.check_editable`;
    ``same_padding``: the caller handles dynamic "same" padding convs; ``replaced``: the
    operation replaces the layer by another module, so no ancestor may read its attributes,
    :func:`.support.check_attributes_unread`, except its weight's dtype or device where
    ``chain``: the replacement is a Sequential, which becomes a :class:`.layer_reads.Chain`).
    Grouped convolutions are accepted only with ``grouped=True`` (ValueError otherwise). Where
    Linear layers are accepted, transformers' ``Conv1D`` is too: the result is then
    :func:`linear_equivalent`, a copy to read shapes and values from. ``weight_norm``: the
    operation keeps a weight-normed layer's weight norm (:func:`.weight_normed.regrow`);
    ``standardised``: it keeps a weight-standardised conv and regrows its weight and gain
    (:func:`.standardized.regrow`); the layer itself is returned in both cases.
    ``aliases_ok`` (default: ``replaced``): the operation puts a module computing the layer's
    function in its place, so a layer registered under several names (CoaT's shared
    convolutional position encoding) is replaced under each (:func:`replace_module`)."""
    aliases_ok = replaced if aliases_ok is None else aliases_ok
    layer = find_module(model, at, name)
    if not ((replaced or weight_norm) and is_weight_normed(layer)):
        check_understood(layer, at)
    if is_conv1d(layer) and nn.Linear in kinds:
        check_editable(model, [at], tied_ok=replaced, aliases_ok=aliases_ok)
        if replaced:
            _check_unread(model, at, chain)
        return linear_equivalent(layer)
    if is_conv1d(layer):
        raise TypeError(
            f"{name}={at!r} is Conv1D, transformers' linear layer (y = x·W + b) with no kernel; "
            f"expected {'/'.join(k.__name__ for k in kinds)}"
        )
    if not isinstance(layer, kinds):
        expected = "/".join(k.__name__ for k in kinds)
        expected = "Linear or Conv1D" if expected == "Linear" else expected
        raise TypeError(f"{name}={at!r} is {type_label(layer)}; expected {expected}")
    # first: reading a parametrized weight runs its parametrization (spectral norm updates u, v)
    check_editable(
        model,
        [at],
        same_padding,
        tied_ok=replaced,
        weight_norm=weight_norm,
        standardised=standardised,
        aliases_ok=aliases_ok,
    )
    if replaced:
        _check_unread(model, at, chain)
    if isinstance(layer, CONV_TYPES) and layer.groups != 1 and not grouped:
        raise ValueError(
            f"{name}={at!r} is a grouped convolution (groups={layer.groups}); this operation "
            "morphs only groups=1 layers (deepen, grow_kernel, morph_subnet and widen take "
            "grouped ones)"
        )
    if isinstance(layer.weight, nn.parameter.UninitializedParameter):
        raise ValueError(f"{name}={at!r} has uninitialized (lazy) parameters; run a forward first")
    return linear_equivalent(layer) if replaced else layer


def _check_unread(model: nn.Module, at: str, chain: bool) -> None:
    """No ancestor reads an attribute of the layer under any name it is registered under."""
    for alias in module_aliases(model, at):
        check_attributes_unread(model, alias, chain)


def linear_equivalent(layer: nn.Module) -> nn.Module:
    """transformers' ``Conv1D`` (y = x·W + b, W: in × out) as the ``nn.Linear`` computing
    the same function (weight Wᵀ, copied; same dtype, device, mode and requires_grad); a
    weight-standardised conv as the plain conv of its standardised weight
    (:func:`.standardized.plain_conv`); a weight-normed layer as the plain layer of its weight
    (:func:`.weight_normed.plain_layer`); any other layer itself."""
    if is_weight_standardised(layer):
        return plain_conv(layer)
    if is_weight_normed(layer):
        return plain_layer(layer)
    if not is_conv1d(layer):
        return layer
    w, b = layer.weight, layer.bias
    linear = nn.Linear(*w.shape, bias=b is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        linear.weight.copy_(w.t())
        if b is not None:
            linear.bias.copy_(b)
    linear.weight.requires_grad_(w.requires_grad)
    if b is not None:
        linear.bias.requires_grad_(b.requires_grad)
    return linear.train(layer.training)


def replace_module(model: nn.Module, at: str, new: nn.Module) -> None:
    """Put ``new`` in place of the submodule ``at`` under every name it is registered under
    (each parent found by the name's prefix), in the train/eval mode of the module it
    replaces; a Sequential becomes a :class:`.layer_reads.Chain` where an ancestor reads the
    layer's weight dtype or device."""
    aliases = module_aliases(model, at)
    old = model.get_submodule(at)
    new.train(old.training)
    if type(new) is nn.Sequential and any(needs_chain(model, n) for n in aliases):
        new = Chain(*new)
        read = {r.attr.rpartition(".")[2] for n in aliases for r in attribute_reads(model, n)}
        for name in CHAIN_GEOMETRY:  # a layer handed to a function: the measurement checks
            if name in read:
                _check_geometry(at, old, new, name)
    for name in aliases:
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, attr, new)


def _check_geometry(at: str, old: nn.Module, chain: Chain, name: str) -> None:
    """The chain in place of ``at``, whose ``name`` (stride, kernel_size, dilation) an
    ancestor reads, answers what the layer it replaces held (MorphError naming the layer
    otherwise)."""
    try:
        value = chain_geometry(chain, name)
    except ValueError as exc:
        raise MorphError(f"{at!r}: its parent reads its {name}, and {exc}; refused") from None
    if value != tuple(getattr(old, name, ())):
        raise MorphError(
            f"{at!r}: its parent reads its {name} {tuple(getattr(old, name))}, and the layers "
            f"in its place give {value}; refused"
        )


@dataclass(frozen=True)
class ConvGeometry:
    """How a layer maps its input: ``ndim`` spatial dims (0 for Linear), kernel, stride,
    dilation, explicit (left, right) padding per dimension and the padding mode."""

    ndim: int
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    pads: tuple[tuple[int, int], ...]
    padding_mode: str
    has_bias: bool
    groups: int = 1

    @staticmethod
    def of(layer: nn.Module) -> ConvGeometry:
        """The geometry of a Conv1d/2d/3d or Linear ``layer``."""
        has_bias = layer.bias is not None
        if isinstance(layer, nn.Linear):
            return ConvGeometry(0, (), (), (), (), "zeros", has_bias)
        kernel = tuple(layer.kernel_size)
        dilation = tuple(layer.dilation)
        if layer.padding == "valid":
            pads = tuple((0, 0) for _ in kernel)
        elif layer.padding == "same":
            pads = tuple(
                (d * (k - 1) // 2, d * (k - 1) - d * (k - 1) // 2) for k, d in zip(kernel, dilation)
            )
        else:
            pads = tuple((p, p) for p in layer.padding)
        return ConvGeometry(
            len(kernel),
            kernel,
            tuple(layer.stride),
            dilation,
            pads,
            layer.padding_mode,
            has_bias,
            layer.groups,
        )

    def grown_pads(self, kernel: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
        """Padding for an effective kernel ``kernel`` ≥ K: each side grows by d·(K̃ − K)/2."""
        return tuple(
            (lo + d * (kt - k) // 2, hi + d * (kt - k) // 2)
            for (lo, hi), d, kt, k in zip(self.pads, self.dilation, kernel, self.kernel)
        )

    def split_pads(
        self, kernel: tuple[int, ...]
    ) -> tuple[tuple[tuple[int, int], ...], tuple[tuple[int, int], ...]]:
        """(inner pads in the layer's padding mode, outer zero pads) for an effective kernel
        ``kernel`` ≥ K, together the grown padding of :meth:`grown_pads`.

        Reflect and circular padding bound the input size (pad < n, pad ≤ n), so growing them
        would reject small inputs the parent accepts. The ring the growth adds only meets the
        zero ring of the grown kernel, so its values do not matter: for those modes the parent's
        own padding stays in its mode and the growth is zeros (exact, same valid inputs).
        Zeros and replicate padding accept any input size and grow in place.
        """
        grown = self.grown_pads(kernel)
        if self.padding_mode not in ("reflect", "circular"):
            return grown, tuple((0, 0) for _ in grown)
        outer = tuple((g_lo - lo, g_hi - hi) for (g_lo, g_hi), (lo, hi) in zip(grown, self.pads))
        return self.pads, outer


def pad_module(pads: tuple[tuple[int, int], ...], padding_mode: str) -> nn.Module:
    """A padding module of ``padding_mode`` adding ``pads`` = ((lo, hi) per spatial dim)."""
    flat = tuple(v for lo, hi in reversed(pads) for v in (lo, hi))  # last dimension first
    pad_cls = _PAD_MODULES[padding_mode][len(pads)]
    return pad_cls(flat, 0.0) if padding_mode == "zeros" else pad_cls(flat)


def make_layer(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    stride: tuple[int, ...] = (),
    dilation: tuple[int, ...] = (),
    pads: tuple[tuple[int, int], ...] = (),
    padding_mode: str = "zeros",
    zero_pads: tuple[tuple[int, int], ...] = (),
    groups: int = 1,
) -> nn.Module:
    """A Linear (2-D ``weight``) or Conv{1,2,3}d layer holding ``weight`` and ``bias``
    (a conv with ``groups``: ``weight`` (C_out, C_in/groups, *K)).

    Symmetric ``pads`` go to the conv itself (with ``padding_mode``); asymmetric ones to an
    explicit padding module of that mode in front of an unpadded conv. ``zero_pads`` (symmetric)
    are zeros added outside ``pads``: then ``pads`` go to a padding module of
    ``padding_mode`` and ``zero_pads`` to the conv (:meth:`ConvGeometry.split_pads`).
    """
    ndim = weight.dim() - 2
    c_out, c_in = weight.shape[0], weight.shape[1] * groups
    factory = {"device": weight.device, "dtype": weight.dtype}
    outer = any(lo or hi for lo, hi in zero_pads)
    symmetric = all(lo == hi for lo, hi in pads)
    if ndim == 0:
        layer: nn.Module = nn.Linear(c_in, c_out, bias=bias is not None, **factory)
    else:
        if outer:
            padding, mode = tuple(lo for lo, _ in zero_pads), "zeros"
        elif symmetric:
            padding, mode = tuple(lo for lo, _ in pads), padding_mode
        else:
            padding, mode = 0, "zeros"
        layer = CONV_TYPES[ndim - 1](
            c_in,
            c_out,
            tuple(weight.shape[2:]),
            stride=stride,
            padding=padding,
            dilation=dilation,
            bias=bias is not None,
            padding_mode=mode,
            groups=groups,
            **factory,
        )
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
    if ndim == 0 or (symmetric and not outer) or not any(lo or hi for lo, hi in pads):
        return layer
    return nn.Sequential(pad_module(pads, padding_mode), layer)


class ChannelLastBatchNorm(nn.BatchNorm1d):
    """BatchNorm over the last axis of (..., C) activations (a Linear layer's output, of any
    rank): statistics over every other axis. On (N, C) it is nn.BatchNorm1d."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.reshape(-1, self.num_features)).reshape_as(x)


def identity_batch_norm(channels: int, ndim: int, like: torch.Tensor) -> nn.Module:
    """A fresh BatchNorm on the channel axis that is the identity in eval mode: BatchNorm1d/2d/3d
    (axis 1) after a conv, :class:`ChannelLastBatchNorm` (last axis) after a Linear layer.

    Running stats are mean 0, var 1, so gamma = sqrt(var + eps) and beta = mean = 0 give
    (x − 0)/sqrt(1 + eps)·sqrt(1 + eps) + 0 = x. In train mode it uses batch statistics.
    """
    cls = ChannelLastBatchNorm if ndim == 0 else _BATCH_NORMS[ndim]
    bn = cls(channels, device=like.device, dtype=like.dtype)
    with torch.no_grad():
        bn.weight.copy_(torch.sqrt(bn.running_var + bn.eps))
        bn.bias.copy_(bn.running_mean)
    return bn


def to_numpy64(t: torch.Tensor) -> np.ndarray:
    """A float64 NumPy copy of a tensor on any device and floating dtype."""
    return t.detach().to(device="cpu", dtype=torch.float64).numpy().copy()


def to_tensor(a: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    """``a`` as a tensor with ``like``'s dtype and device (rounded to that dtype)."""
    return torch.from_numpy(np.ascontiguousarray(a)).to(device=like.device, dtype=like.dtype)


def gather(
    t: torch.Tensor, index: np.ndarray, axis: int, fill: torch.Tensor | float
) -> torch.Tensor:
    """``t`` re-indexed along ``axis``: entry j is ``t[index[j]]``, or ``fill`` where
    index[j] = −1 (a scalar, or a tensor holding the new entries in order). A new tensor."""
    picked = t.detach().index_select(axis, torch.as_tensor(np.maximum(index, 0), device=t.device))
    new = (slice(None),) * axis + (torch.as_tensor(index < 0, device=t.device),)
    picked[new] = fill
    return picked


def count_parameters(model: nn.Module) -> int:
    """Number of scalar parameters (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters())


def untie(model: nn.Module, names: Iterable[str]) -> list[str]:
    """Give every parameter of the modules ``names`` that other modules share (a head tied to
    the token embedding) its own copy in ``model``, so that replacing those modules leaves the
    others as they are; the report's notes on what was untied."""
    names = set(names)
    owners: dict[int, list[str]] = {}
    for pname, p in model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(p), []).append(pname)
    notes = []
    for shared in owners.values():
        mine = [p for p in shared if p.rpartition(".")[0] in names]
        if len(shared) < 2 or not mine:
            continue
        if len({id(model.get_submodule(p.rpartition(".")[0])) for p in shared}) < 2:
            continue  # one module under several names shares with itself
        for pname in mine:
            owner, _, attr = pname.rpartition(".")
            module = model.get_submodule(owner)
            old = module._parameters[attr]
            module._parameters[attr] = nn.Parameter(
                old.detach().clone(), requires_grad=old.requires_grad
            )
        notes.append(f"{' and '.join(shared)} were one Parameter: {', '.join(mine)} untied")
    return notes
