"""Where widened channels go: a torch.fx walk from the widened layers to every consumer.

Widening a layer's outputs from C to C̃ channels changes the tensor every later operation sees
along the channel axis. The walk follows that tensor through the graph in topological order:

- channel-wise operations pass it on unchanged (activations, dropout, pooling, spatial
  padding modules, identity, scalar arithmetic, spatial means), noting whether a zero
  channel stays zero (φ(0) = 0) and whether gradient passes a zero pre-activation
  (φ'(0) ≠ 0; not for ReLU);
- BatchNorm (also subclasses with channel-wise activations inside, like timm's
  BatchNormAct2d; and frozen BatchNorm, whose weight, bias and statistics are buffers,
  like torchvision's FrozenBatchNorm2d) and per-channel PReLU pass it on and are widened
  themselves;
- grouped convolutions (g groups of p input and q output channels; depthwise: p = 1) grow by
  whole new groups: the map must hold every parent group as a block in order and the new
  channels as whole blocks of p (the walk asks widen for such a map, see
  :class:`BlockRequest`); a new group's filters read only new channels, and its q new output
  channels go on downstream as new channels (zero when its inputs are zero, since its bias is
  zero; met by zero columns further on otherwise);
- a product with a gate computed from the tensor (squeeze-and-excitation: pool → conv →
  act → conv → sigmoid) widens the gate's last conv with the same channel map;
- a product with a per-channel parameter (a layer scale, ConvNeXt's ``layer_scale``/``gamma``)
  widens that parameter; a product with a one-element parameter or buffer (a learned scalar
  gain) is channel-wise and leaves it as it is;
- ``chunk(k)`` along the channel axis splits the map into k parts: exact when every child part
  holds exactly the parent part's channels plus (C̃ − C)/k new ones, all parts with the same
  permutation (a fused gated MLP's ``gate, up = x.chunk(2, -1)`` pairs gate and up channels
  position by position). When the producer's map is not laid out that way the walk asks for
  one (:class:`BlockRequest`); ``split`` with sizes held by one attribute of the module it
  runs in (timm's ``MixedConv2d.splits``) keeps each parent part with the new channels among
  its channels and updates that attribute; other sizes written in the code are refused (they
  would no longer add up to the widened axis); chunk/split along another axis passes through;
- GLU (``F.glu``, ``nn.GLU``) along the channel axis gives a·σ(b) of the halves [a; b]:
  the halves grow alike as chunk(2)'s parts (r new channels each: a width of 2C + 2r, odd
  widths refused with a ValueError naming ``width``), and the output carries a half's map;
  a new output channel a_new·σ(b_new) is zero where a_new is. GLU along another axis is a
  channel-wise product;
- transpose/permute move the channel axis: to axis 1 (a spatial (N, C, *S) tensor, e.g. before
  a depthwise Conv1d) or to the last axis (channels last); the rank is read from the shapes
  recorded on the probe (or from permute's dims);
- shape reads (``x.shape[i]``, ``x.size(i)``) of axes other than the channel axis are
  unchanged by the widening and allowed; reading the channel count is refused when used;
- flatten turns channels into column blocks (channel c owns B consecutive features);
- concatenation along the channel axis shifts it by the other inputs' channel counts;
- an add of widened tensors needs every operand widened the same way;
- Conv and Linear layers consume it: they get new input columns.

The channel map ``src`` of a tensor gives, for each child channel, the parent channel it holds
or −1 for a new channel. Anything else the widened tensor reaches raises :class:`MorphError`.
"""

from __future__ import annotations

import contextlib
import copy
import io
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from .activation import PActivation
from .errors import MorphError
from .layer_reads import metadata_read
from .samepad import is_same_padding_conv
from .standardized import may_be_standardised
from .support import computes_linear
from .surgery import CONV_TYPES, ChannelLastBatchNorm
from .tracing import node_module, shell_copy

SPATIAL, VECTOR, LAST, FLAT = "spatial", "vector", "last", "flat"

# (φ(0) == 0, φ'(0) != 0) of channel-wise modules and functions.
_MODULES: dict[type[nn.Module], tuple[bool, bool]] = {
    nn.ReLU: (True, False),
    nn.ReLU6: (True, False),
    nn.Tanhshrink: (True, False),
    nn.LeakyReLU: (True, True),
    nn.ELU: (True, True),
    nn.SELU: (True, True),
    nn.CELU: (True, True),
    nn.GELU: (True, True),
    nn.SiLU: (True, True),
    nn.Mish: (True, True),
    nn.Tanh: (True, True),
    nn.Hardtanh: (True, True),
    nn.Hardswish: (True, True),
    nn.Softsign: (True, True),
    nn.Identity: (True, True),
    nn.Sigmoid: (False, True),
    nn.Hardsigmoid: (False, True),
    nn.Softplus: (False, True),
    nn.LogSigmoid: (False, True),
    nn.Dropout: (True, True),
    nn.Dropout1d: (True, True),
    nn.Dropout2d: (True, True),
    nn.Dropout3d: (True, True),
}
# timm.layers' own activation modules (timm.layers.activations, activations_me): elementwise,
# (zero at 0, nonzero slope) as their torch counterparts above.
_TIMM_ACTIVATIONS: dict[str, tuple[bool, bool]] = {
    **dict.fromkeys(
        ("GELU", "GELUTanh", "QuickGELU", "Swish", "SwishMe", "Mish", "MishMe", "Tanh"),
        (True, True),
    ),
    **dict.fromkeys(("HardSwish", "HardSwishMe", "HardMish", "HardMishMe"), (True, True)),
    **dict.fromkeys(("Sigmoid", "HardSigmoid", "HardSigmoidMe"), (False, True)),
}


def _elementwise(module: nn.Module) -> tuple[bool, bool] | None:
    """(zero at 0, nonzero slope) of an elementwise activation or dropout module; None for
    a module not known to be elementwise."""
    if type(module) in _MODULES:
        return _MODULES[type(module)]
    if type(module).__module__.startswith("timm.layers.activations"):
        return _TIMM_ACTIVATIONS.get(type(module).__name__)
    return None


_POOLS: tuple[type[nn.Module], ...] = (
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
    nn.Upsample,
)
_PADS: tuple[type[nn.Module], ...] = (
    nn.ConstantPad1d,
    nn.ConstantPad2d,
    nn.ConstantPad3d,
    nn.ReflectionPad1d,
    nn.ReflectionPad2d,
    nn.ReflectionPad3d,
    nn.ReplicationPad1d,
    nn.ReplicationPad2d,
    nn.ReplicationPad3d,
    nn.CircularPad1d,
    nn.CircularPad2d,
    nn.CircularPad3d,
)
_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_FUNCTIONS: dict[object, tuple[bool, bool]] = {
    F.relu: (True, False),
    torch.relu: (True, False),
    F.relu6: (True, False),
    F.leaky_relu: (True, True),
    F.elu: (True, True),
    F.selu: (True, True),
    F.celu: (True, True),
    F.gelu: (True, True),
    F.silu: (True, True),
    F.mish: (True, True),
    torch.tanh: (True, True),
    F.tanh: (True, True),
    F.hardtanh: (True, True),
    F.hardswish: (True, True),
    torch.neg: (True, True),
    operator.neg: (True, True),
    torch.sigmoid: (False, True),
    F.sigmoid: (False, True),
    F.softplus: (False, True),
    F.hardsigmoid: (False, True),
    F.dropout: (True, True),
    F.dropout1d: (True, True),
    F.dropout2d: (True, True),
    F.dropout3d: (True, True),
}
#: Functions that keep or drop whole samples (stochastic depth; identities in eval mode), found
#: by where they are defined: (module, name).
_SAMPLE_DROPS = {
    ("torchvision.ops.stochastic_depth", "stochastic_depth"),
    ("timm.layers.drop", "drop_path"),
}


def _function_kind(target: object) -> tuple[bool, bool] | None:
    """(φ(0) == 0, φ'(0) != 0) of a channel-wise function; None for any other."""
    found = _FUNCTIONS.get(target) if callable(target) else None
    if found is None:
        where = (getattr(target, "__module__", None), getattr(target, "__name__", None))
        found = (True, True) if where in _SAMPLE_DROPS else None
    return found


_POOL_FUNCTIONS = {
    F.max_pool1d,
    F.max_pool2d,
    F.max_pool3d,
    F.avg_pool1d,
    F.avg_pool2d,
    F.avg_pool3d,
    F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d,
    F.adaptive_avg_pool3d,
    F.adaptive_max_pool1d,
    F.adaptive_max_pool2d,
    F.adaptive_max_pool3d,
    F.interpolate,
}
_METHODS: dict[str, tuple[bool, bool]] = {
    "relu": (True, False),
    "relu_": (True, False),
    "tanh": (True, True),
    "tanh_": (True, True),
    "sigmoid": (False, True),
    "sigmoid_": (False, True),
    "neg": (True, True),
    "contiguous": (True, True),
    "clone": (True, True),
}
_ADD = {operator.add, operator.sub, torch.add, torch.sub, "add", "sub", "add_", "sub_"}
_MUL = {operator.mul, operator.truediv, torch.mul, torch.div, "mul", "div", "mul_", "div_"}
_DIV = {operator.truediv, torch.div, "div", "div_"}
_CAT = {torch.cat, torch.concat, torch.concatenate}
_RESHAPES = {"reshape", "view", "unsqueeze", "expand", "expand_as", "to", "type_as"}
_REDUCE = {torch.mean, torch.sum, torch.amax, "mean", "sum", "amax"}
_MOVES = {"transpose", torch.transpose, "permute", torch.permute}


@dataclass(frozen=True)
class Flow:
    """A tensor carrying widened channels.

    ``src``: child channel → parent channel (−1: new). ``layout``: "spatial" (N, C, *S) of rank
    ``ndim``, "vector" (N, C), "last" (…, C) of unknown rank, "flat" (N, C·B). ``zero_broken``:
    the first operation that maps a zero channel to non-zero (None: zero stays zero);
    ``dead``: the first operation with zero gradient at 0 (None: gradient passes).
    """

    src: np.ndarray
    layout: str
    ndim: int | None  # the rank; None for a "last" tensor of unknown rank
    zero_broken: str | None = None
    dead: str | None = None

    @property
    def parent_channels(self) -> int:
        return int(np.count_nonzero(self.src >= 0))


@dataclass(frozen=True)
class Use:
    """A module to update: ``kind`` "conv", "linear" (consumers) or "batch_norm", "group_norm",
    "frozen_batch_norm" (buffers), "prelu", "grouped" (grouped or depthwise convs growing by
    whole new groups) (widened channel-wise; ``flow`` is what it consumes); or "scale": the
    per-channel parameter ``name`` multiplying the tensor, its channels along ``axis``."""

    name: str
    kind: str
    flow: Flow
    axis: int = 0


@dataclass
class WidthPlan:
    """Every module a widening touches, with the channel map it sees."""

    producers: tuple[str, ...]
    uses: list[Use] = field(default_factory=list)
    gates: dict[str, np.ndarray] = field(default_factory=dict)
    #: module → (attribute, the child's value) of a split's sizes or a slice's bound the
    #: widening grows
    sizes: dict[str, tuple[str, int | list[int] | tuple[int, ...]]] = field(default_factory=dict)

    @property
    def consumers(self) -> list[Use]:
        return [u for u in self.uses if u.kind in ("conv", "linear")]

    def zero_broken(self) -> str | None:
        """Why zeroed new producer rows would not reach the consumers as zeros (None: they do)."""
        return next((u.flow.zero_broken for u in self.consumers if u.flow.zero_broken), None)

    def dead(self) -> str | None:
        """An operation on the way to a consumer whose gradient at 0 is 0 (None: none)."""
        return next((u.flow.dead for u in self.consumers if u.flow.dead), None)


def dual_role_refusal(layer: nn.Module) -> str | None:
    """Why ``layer``, widened, cannot also consume channels widened with it (None: it can).
    A plain Linear or ungrouped convolution takes new input columns and new output rows in
    two independent edits (a residual stage's first block reads the stem it is summed with);
    grouped layers, weight norms and weight standardisation tie the two together."""
    if isinstance(layer, CONV_TYPES) and layer.groups != 1:
        return "is a grouped convolution"
    if not isinstance(layer, (nn.Linear, *CONV_TYPES)):
        return f"is a {type(layer).__name__}"
    if hasattr(layer, "parametrizations") or may_be_standardised(layer):
        return "has its weight reparametrised"
    return None


class PartnerRequest(MorphError):
    """A widened tensor is added to the output of other conv/linear layers (``partners``), which
    are not widened: widen adds them to its producers and walks again (the message is the
    refusal where it cannot)."""

    def __init__(self, message: str, partners: list[str]) -> None:
        super().__init__(message)
        self.partners = partners


def layer_origins(origins: list[str]) -> list[str]:
    """The layer names among a walk's ``origins`` descriptions (a layer is its quoted name;
    model inputs, parameters and other modules are described otherwise); empty unless every
    origin is a layer."""
    names = [o[1:-1] for o in origins if len(o) > 2 and o[0] == o[-1] == "'" and "'" not in o[1:-1]]
    return names if len(names) == len(origins) else []


class BlockRequest(Exception):
    """The walk needs the producer's channel map laid out in ``blocks`` equal parts, each with
    the parent part's channels plus the same share of new ones and the same permutation
    (:func:`~.width.block_channel_map`); or, ``whole_groups``, in whole groups of ``blocks``
    channels: the parent's groups in order and all-new groups between them
    (:func:`~.width.group_channel_map`). widen builds that map and walks again."""

    def __init__(self, blocks: int, whole_groups: bool = False) -> None:
        super().__init__(f"the channel map must come in blocks of {blocks}")
        self.blocks = blocks
        self.whole_groups = whole_groups


_FROZEN_BUFFERS = ("weight", "bias", "running_mean", "running_var")


def is_frozen_batch_norm(m: nn.Module) -> bool:
    """A frozen BatchNorm (torchvision's, timm's or detection libraries' FrozenBatchNorm2d):
    y = (x − mean)/√(var + eps)·weight + bias per channel (axis 1), every one of weight, bias,
    running_mean and running_var a 1-D buffer of the same size, no parameters, no children."""
    buffers = dict(m.named_buffers(recurse=False))
    return (
        "FrozenBatchNorm" in type(m).__name__
        and not list(m.parameters())
        and not list(m.children())
        and all(b in buffers and buffers[b].dim() == 1 for b in _FROZEN_BUFFERS)
        and len({buffers[b].numel() for b in _FROZEN_BUFFERS}) == 1
    )


def chunk_flow(
    flow: Flow, parts: int, root: np.ndarray, fail: Callable[[str], Exception]
) -> list[Flow]:
    """The flows of ``flow.chunk(parts)`` along its channel axis. Part i of the child must hold
    exactly part i of the parent (plus new channels), with every part's map the same; when it
    does not and ``flow`` carries the producer's map ``root``, raise :class:`BlockRequest`;
    otherwise ``fail(why)``."""
    total, child = flow.parent_channels, flow.src.size
    if total % parts or child % parts:
        raise fail(
            f"chunks the widened channels into {parts} parts: the parent's {total} and the "
            f"child's {child} channels must both be multiples of {parts} (a width of {total} "
            f"+ a multiple of {parts})"
        )
    pieces = flow.src.reshape(parts, -1)
    size = total // parts
    local = np.where(pieces >= 0, pieces - size * np.arange(parts)[:, None], -1)
    inside = (pieces < 0) | ((local >= 0) & (local < size))
    if np.all(inside) and all(np.array_equal(local[0], row) for row in local):
        return [replace(flow, src=row) for row in local]
    if np.array_equal(flow.src, root):
        raise BlockRequest(parts)
    raise fail(
        f"chunks the widened channels into {parts} parts, but after the operations before it "
        "the parts cannot grow consistently"
    )


def glu_flow(flow: Flow, root: np.ndarray, fail: Callable[[str], Exception]) -> Flow:
    """The flow out of GLU along the channel axis, a·σ(b) of the halves [a; b]: the map of
    a half (:func:`chunk_flow` of 2 parts, which may ask widen for a map in two equal blocks:
    r new channels in each half). A new output channel a_new·σ(b_new) is zero where a_new is
    (zero new rows) and meets zero columns otherwise; gradient reaches a_new through σ(b_new).
    ValueError naming ``width`` where the producer's width is odd."""
    if flow.src.size % 2 and np.array_equal(flow.src, root):
        raise ValueError(
            f"width={flow.src.size}: {flow.src.size} channels cannot be halved; a GLU takes "
            "the widened channels as halves [a; b] and gives a·σ(b), so the width must be even "
            f"({flow.parent_channels} + 2r: r new channels in each half)"
        )
    return chunk_flow(flow, 2, root, fail)[0]


class _OneLevel(fx.Tracer):
    """torch.fx's tracer with every submodule a leaf: one module's own forward."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return True


def _splits_by(module: nn.Module, attr: str, split: object) -> bool:
    """Whether ``module``'s forward splits by its attribute ``attr``: traced alone (a copy
    without values, :func:`.tracing.shell_copy`) with every size of ``attr`` one larger, it
    runs exactly one ``split`` call, with those sizes."""
    probe = shell_copy(module)
    sizes = getattr(module, attr)
    setattr(probe, attr, type(sizes)(n + 1 for n in sizes))
    try:
        graph = _OneLevel().trace(probe)
    except Exception:  # a forward that cannot be traced alone cannot be shown to split by attr
        return False
    found = [n.args[1] if len(n.args) > 1 else None for n in graph.nodes if n.target is split]
    return found == [getattr(probe, attr)]


def _slices_by(module: nn.Module, attr: str) -> bool:
    """Whether ``module``'s forward slices by its int attribute ``attr``: traced alone (a copy
    without values) with ``attr`` one larger, exactly one slice of its graph is bounded by it."""
    probe = shell_copy(module)
    setattr(probe, attr, getattr(module, attr) + 1)
    try:
        graph = _OneLevel().trace(probe)
    except Exception:  # a forward that cannot be traced alone cannot be shown to slice by attr
        return False
    bounds = [
        i.stop
        for n in graph.nodes
        if n.target is operator.getitem and isinstance(n.args[1], (tuple, slice))
        for i in (n.args[1] if isinstance(n.args[1], tuple) else (n.args[1],))
        if isinstance(i, slice)
    ]
    return bounds.count(getattr(probe, attr)) == 1


def _computes_base_layer(m: nn.Module) -> bool:
    """A subclass of a torch linear or conv layer that computes what its base layer computes
    with whatever weight it holds: it keeps its base class's forward (torchvision's
    ``Conv3DSimple``), is a linear layer whose forward is shown to be x·Wᵀ + b (timm's
    ``Linear``, :func:`.support.computes_linear`), or a recognised dynamic "same" padding conv
    (timm's ``Conv2dSame``: its padding depends on the input's spatial size only; verified by
    :func:`.support.check_layer_class` before any morph)."""
    if any(
        isinstance(m, base) and type(m).forward is base.forward for base in (nn.Linear, *CONV_TYPES)
    ):
        return True
    if isinstance(m, nn.Linear):
        return computes_linear(m)
    return is_same_padding_conv(m)


class _Tracer(fx.Tracer):
    """torch.fx's tracer with :class:`PActivation`, every BatchNorm (subclasses included),
    frozen BatchNorm, convs that may be weight-standardised (checked and refused by name as
    widen's producers or consumers) and subclasses of linear and conv layers that compute
    their base layer's function (:func:`_computes_base_layer`) kept as one leaf."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        # decided before tracing: computes_linear runs the layer, which tracing would record
        self.base_layers = {id(m) for m in model.modules() if _computes_base_layer(m)}

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        leaf = isinstance(m, (PActivation, _BATCH_NORMS, nn.GroupNorm)) or is_frozen_batch_norm(m)
        leaf = leaf or may_be_standardised(m) or id(m) in self.base_layers
        return leaf or super().is_leaf_module(m, module_qualified_name)


class FxTraceError(MorphError):
    """torch.fx cannot trace the model (widen then falls back to torch.export)."""


def trace(model: nn.Module, purpose: str) -> fx.GraphModule:
    """Symbolically trace a copy of ``model`` (tracing runs its forward code, which may count
    calls or cache tensors; the caller's RNG is restored); MorphError naming the model and
    fx's reason."""
    try:
        with torch.random.fork_rng(devices=[]):
            dup = copy.deepcopy(model)
            return fx.GraphModule(dup, _Tracer(dup).trace(dup))
    except Exception as exc:  # fx raises many types (TraceError, TypeError, RuntimeError, ...)
        raise FxTraceError(
            f"torch.fx cannot trace {type(model).__name__} ({type(exc).__name__}: {exc}); "
            f"{purpose} needs the traced graph"
        ) from exc


def _describe(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    if node.op == "call_module":
        return f"module {node.target!r} ({type(modules[node.target]).__name__})"
    if node.op == "placeholder":
        return f"the model input {node.target!r}"
    name = getattr(node.target, "__name__", str(node.target))
    return f"{node.op} {name!r} (node {node.name!r})"


def _channels(node: fx.Node, modules: dict[str, nn.Module], dim: int = 1) -> int | None:
    """The size along axis ``dim`` of an unwidened tensor, when the graph tells it: its shape
    recorded on the probe, else the module that makes it (a conv's out_channels through ops
    that keep the channels); None where neither holds (a part of a chunk or split)."""
    shape = getattr(node.meta.get("tensor_meta"), "shape", None)
    if shape is not None and -len(shape) <= dim < len(shape):
        return int(shape[dim])
    if node.op == "call_module":
        m = modules[node.target]
        if isinstance(m, CONV_TYPES):
            return m.out_channels
        if isinstance(m, nn.Linear):
            return m.out_features
        if isinstance(m, _BATCH_NORMS):
            return m.num_features
    if node.op == "call_function" and node.target in _CAT:
        counts = [_channels(t, modules, dim) for t in _arg(node, 0, "tensors", ())]
        return None if None in counts else sum(counts)
    if node.op == "call_function" and node.target is operator.getitem:
        return None  # a part of a chunk, split or unbind
    inputs = node.all_input_nodes
    return _channels(inputs[0], modules, dim) if inputs else None


def _view_shape(node: fx.Node) -> tuple:
    """The sizes a ``view``/``reshape`` call asks for (given one by one or as a tuple)."""
    shape = tuple(node.args[1:]) or tuple(node.kwargs.get("shape", ()))
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    return shape


def _arg(node: fx.Node, index: int, name: str, default: object) -> object:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


class _Walk:
    """One walk over a traced graph; see the module docstring."""

    def __init__(
        self,
        gm: fx.GraphModule,
        producers: Sequence[str],
        src: np.ndarray,
        originals: dict[str, nn.Module] | None = None,
    ) -> None:
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.originals = originals or {}  # the model's own modules (containers included)
        self.producers = tuple(producers)
        self.src = src
        self.flows: dict[fx.Node, Flow] = {}
        self.shape_nodes: dict[fx.Node, Flow] = {}  # x.shape / x.size() of a widened x
        self.counts: dict[fx.Node, Flow] = {}  # its channel count, sized views only read it
        self.pieces: dict[fx.Node, list[Flow]] = {}  # the parts of a chunked widened tensor
        self.plan = WidthPlan(self.producers)

    def rank(self, node: fx.Node) -> int | None:
        """The rank of ``node``'s tensor as recorded on the probe (None: not recorded)."""
        shape = getattr(node.meta.get("tensor_meta"), "shape", None)
        return None if shape is None else len(shape)

    def origins(self, node: fx.Node, seen: dict[fx.Node, list[str]] | None = None) -> list[str]:
        """The layers (or model inputs) a tensor comes from, through any operations."""
        seen = {} if seen is None else seen
        if node in seen:
            return seen[node]
        if node.op == "call_module" and isinstance(
            self.modules[node.target], (*CONV_TYPES, nn.Linear)
        ):
            found = [repr(node.target)]
        elif node.op == "placeholder":
            found = [f"the model input {node.target!r}"]
        else:
            found = []
            for arg in node.all_input_nodes:
                found += [o for o in self.origins(arg, seen) if o not in found]
            found = found or [_describe(node, self.modules)]
        seen[node] = found
        return found

    def fail(self, node: fx.Node, why: str) -> MorphError:
        return MorphError(f"widening {list(self.producers)}: {_describe(node, self.modules)} {why}")

    def run(self) -> WidthPlan:
        calls = {p: 0 for p in self.producers}
        for node in self.gm.graph.nodes:
            if node.op == "get_attr":
                continue
            widened = [a for a in node.all_input_nodes if a in self.flows]
            shapes = [a for a in node.all_input_nodes if a in self.shape_nodes]
            counts = [a for a in node.all_input_nodes if a in self.counts]
            if counts and not (widened and node.target in ("view", "reshape")):
                raise self.fail(
                    node,
                    "sizes something other than a view of the widened tensor by its channel count",
                )
            if node.op == "call_module" and node.target in calls:
                calls[node.target] += 1
                layer = self.modules[node.target]
                if widened:  # new input columns, then new output rows
                    why = dual_role_refusal(layer)
                    if why is not None:
                        raise self.fail(node, f"consumes channels widened with it and {why}")
                    self._module(node, widened, self.flows[widened[0]])
                layout = SPATIAL if isinstance(layer, CONV_TYPES) else LAST
                ndim = layer.weight.dim() if isinstance(layer, CONV_TYPES) else self.rank(node)
                self.flows[node] = Flow(self.src, layout, ndim)
                continue
            if self._piece(node):
                continue
            if shapes:
                self._shape_use(node, shapes)
            if widened:
                self._step(node, widened)
            flow = self.flows.get(node)
            if flow is not None and flow.layout == LAST and node.target not in _MOVES:
                self.flows[node] = replace(flow, ndim=self.rank(node))  # rank-changing ops
        for name, count in calls.items():
            if count != 1:
                raise MorphError(
                    f"widening {list(self.producers)}: {name!r} is called {count} times in the "
                    "traced graph; it must be called exactly once"
                )
        self._check_shared()
        return self.plan

    def _check_attr(self, node: fx.Node) -> None:
        touched = {*self.producers, *(u.name for u in self.plan.uses)}
        if str(node.target).rpartition(".")[0] in touched and not metadata_read(node):
            raise MorphError(
                f"widening {list(self.producers)}: the graph reads {node.target!r} directly "
                "(get_attr); its shape would change under it"
            )

    def _check_shared(self) -> None:
        """Every call of a module being updated must see the same widened channels (its uses
        are then merged into one), and no parameter of one may be read directly."""
        merged: dict[str, Use] = {}
        for use in self.plan.uses:
            first = merged.get(use.name)
            if first is None:
                merged[use.name] = use
                continue
            a, b = first.flow, use.flow
            if not np.array_equal(a.src, b.src) or a.layout != b.layout:
                raise MorphError(
                    f"widening {list(self.producers)}: module {use.name!r} is called on widened "
                    "tensors whose channels do not line up"
                )
            flow = replace(a, zero_broken=a.zero_broken or b.zero_broken, dead=a.dead or b.dead)
            merged[use.name] = Use(use.name, use.kind, flow)
        self.plan.uses = list(merged.values())
        for use in self.plan.uses:
            nodes = [
                n for n in self.gm.graph.nodes if n.op == "call_module" and n.target == use.name
            ]
            if any(n.args[0] not in self.flows for n in nodes):
                raise MorphError(
                    f"widening {list(self.producers)}: module {use.name!r} is also called on "
                    "tensors that are not widened"
                )
        for node in self.gm.graph.nodes:
            if node.op == "get_attr":
                self._check_attr(node)

    def _piece(self, node: fx.Node) -> bool:
        """Take one part of a chunked widened tensor (True), or refuse any other use of the
        parts; False when ``node`` reads no chunk."""
        chunks = [a for a in node.all_input_nodes if a in self.pieces]
        if not chunks:
            return False
        if node.op == "call_function" and node.target is operator.getitem and len(chunks) == 1:
            index = node.args[1]
            if isinstance(index, int):
                self.flows[node] = self.pieces[chunks[0]][index]
                return True
        raise self.fail(node, "uses the parts of a chunked widened tensor other than one by one")

    def _is_channel(self, flow: Flow, dim: int) -> bool:
        """Whether axis ``dim`` of a tensor carrying ``flow`` may be its channel axis."""
        if flow.layout == LAST:
            if flow.ndim is None:
                return dim >= -1  # a non-negative axis of unknown rank may be the last one
            return dim % flow.ndim == flow.ndim - 1
        return dim % (flow.ndim or 2) == 1

    def _shape_use(self, node: fx.Node, shapes: list[fx.Node]) -> None:
        """``x.shape[i]`` of a widened ``x``: unchanged unless i is the channel axis."""
        flow = self.shape_nodes[shapes[0]]
        if node.op == "call_function" and node.target is operator.getitem:
            index = node.args[1]
            if isinstance(index, slice) and flow.ndim is not None:
                axes = list(range(flow.ndim))[index]
            else:
                axes = [index] if isinstance(index, int) else None
            if axes is not None and (
                not node.users or not any(self._is_channel(flow, a) for a in axes)
            ):
                return
            if self._sizes_views(node, flow, axes):
                self.counts[node] = flow
                return
        raise self.fail(
            node,
            f"reads the shape of a widened tensor ({shapes[0].name!r}) where it holds (or may "
            "hold) the channel count; widen does not follow code that computes with it (such "
            "as a channel shuffle's reshape)"
            + (" — pass probe= or input_shape= so the rank is known" if flow.ndim is None else ""),
        )

    def _sizes_views(self, node: fx.Node, flow: Flow, axes: list[int] | None) -> bool:
        """Whether ``node`` is the channel count of a widened tensor of known rank that only
        sizes views of widened tensors, once each (``x.transpose(1, 2).view(B, C, H, W)``
        in PVT-v2's MLP; checked in :meth:`_view`)."""
        if flow.ndim is None or axes is None or len(axes) != 1:
            return False
        return all(
            user.op == "call_method"
            and user.target in ("view", "reshape")
            and user.args[0] is not node
            and _view_shape(user).count(node) == 1
            for user in node.users
        )

    def _pass(self, node: fx.Node, flow: Flow, zero: bool, live: bool) -> None:
        here = _describe(node, self.modules)
        self.flows[node] = replace(
            flow,
            zero_broken=flow.zero_broken or (None if zero else here),
            dead=flow.dead or (None if live else here),
        )

    def _step(self, node: fx.Node, widened: list[fx.Node]) -> None:
        flow = self.flows[widened[0]]
        if node.op == "output":
            raise self.fail(
                node, "receives widened channels: the model's output would change shape"
            )
        if node.op == "call_module":
            self._module(node, widened, flow)
            return
        target = node.target
        if node.op == "call_method" and target == "size":
            dim = _arg(node, 1, "dim", None)
            if dim is None:
                self.shape_nodes[node] = flow
            elif not isinstance(dim, int) or (node.users and self._is_channel(flow, dim)):
                raise self.fail(
                    node,
                    "reads the channel count of a widened tensor; widen does not follow code "
                    "that computes with it (such as a channel shuffle's reshape)",
                )
            return
        if node.op == "call_function" and target is getattr and node.args[1] == "shape":
            self.shape_nodes[node] = flow
            return
        if node.op == "call_method" and target == "dim":
            return
        if node.op == "call_function" and target is getattr and node.args[1] == "ndim":
            return
        if node.args and node.args[0] is not widened[0] and target not in _CAT | _ADD | _MUL:
            raise self.fail(node, "takes a widened tensor as a non-data argument")
        kind = _function_kind(target) if node.op == "call_function" else _METHODS.get(target)
        if kind is not None:
            self._pass(node, flow, *kind)
        elif target in _POOL_FUNCTIONS:
            if node.kwargs.get("return_indices"):
                raise self.fail(node, "returns pooling indices")
            self._pass(node, flow, True, True)
        elif target in _ADD:
            self._add(node, widened)
        elif target in _MUL:
            self._mul(node, widened)
        elif target in _CAT:
            self._cat(node)
        elif target in ("chunk", torch.chunk, "split", torch.split, torch.functional.split):
            self._chunk(node, flow)
        elif target is F.glu:
            self._glu(node, flow, _arg(node, 1, "dim", -1))
        elif target in _MOVES:
            self._move(node, flow)
        elif target in (torch.flatten, "flatten"):
            self._flatten(node, flow, _arg(node, 1, "start_dim", 0), _arg(node, 2, "end_dim", -1))
        elif target in ("view", "reshape"):
            self._view(node, flow)
        elif target in _REDUCE:
            self._reduce(node, flow)
        elif target is operator.getitem and node.op == "call_function":
            self._slice(node, flow)
        else:
            raise self.fail(node, "consumes widened channels and cannot be updated by widen")

    def _module(self, node: fx.Node, widened: list[fx.Node], flow: Flow) -> None:
        m = self.modules[node.target]
        name = node.target
        if node.args[0] is not widened[0] or len(widened) > 1:
            raise self.fail(node, "takes a widened tensor as a non-data argument")
        if isinstance(m, CONV_TYPES):
            if flow.layout != SPATIAL or flow.ndim != len(m.kernel_size) + 2:
                raise self.fail(node, f"cannot consume a {flow.layout} tensor of rank {flow.ndim}")
            if m.groups != 1:
                self._grouped(node, m, flow)
                return
            self._expect(node, m.in_channels, flow)
            self.plan.uses.append(Use(name, "conv", flow))
        elif isinstance(m, nn.Linear):
            if flow.layout == SPATIAL:
                raise self.fail(node, "acts on the last axis, which is not the channel axis")
            if flow.layout == FLAT:
                if m.in_features % flow.parent_channels:
                    raise self.fail(
                        node,
                        f"has {m.in_features} inputs, not a multiple of the "
                        f"{flow.parent_channels} flattened channels",
                    )
            else:
                self._expect(node, m.in_features, flow)
            self.plan.uses.append(Use(name, "linear", flow))
        elif isinstance(m, _BATCH_NORMS):
            if flow.layout not in (SPATIAL, VECTOR, LAST) or (
                flow.layout == LAST and not isinstance(m, nn.BatchNorm1d)
            ):
                raise self.fail(node, f"cannot normalise a {flow.layout} tensor per channel")
            self._expect(node, m.num_features, flow)
            self.plan.uses.append(Use(name, "batch_norm", flow))
            last = flow.layout == LAST and not isinstance(m, ChannelLastBatchNorm)
            self.flows[node] = replace(flow, layout=VECTOR if last else flow.layout)
            self._norm_children(node, m, name)
        elif isinstance(m, nn.GroupNorm):
            self._group_norm(node, m, flow)
            self.plan.uses.append(Use(name, "group_norm", flow))
            self.flows[node] = flow
            self._norm_children(node, m, name)
        elif is_frozen_batch_norm(m):
            if flow.layout not in (SPATIAL, VECTOR):
                raise self.fail(node, f"cannot normalise a {flow.layout} tensor per channel")
            self._expect(node, m.weight.numel(), flow)
            self.plan.uses.append(Use(name, "frozen_batch_norm", flow))
            self.flows[node] = flow
        elif isinstance(m, nn.PReLU):
            if m.num_parameters > 1:
                self._expect(node, m.num_parameters, flow)
                self.plan.uses.append(Use(name, "prelu", flow))
            self._pass(node, flow, True, True)
        elif isinstance(m, PActivation):
            zero = float(m.phi(torch.zeros(1, dtype=torch.float64))) == 0.0
            self._pass(node, flow, zero, True)
        elif type(m) in _MODULES:
            self._pass(node, flow, *_MODULES[type(m)])
        elif isinstance(m, _POOLS):
            if getattr(m, "return_indices", False):
                raise self.fail(node, "returns pooling indices")
            self._pass(node, flow, True, True)
        elif isinstance(m, _PADS):
            if flow.layout != SPATIAL or flow.ndim < 2 + len(m.padding) // 2:
                raise self.fail(node, "pads the channel axis")
            self._pass(node, flow, getattr(m, "value", 0.0) == 0.0, True)
        elif isinstance(m, nn.Flatten):
            self._flatten(node, flow, m.start_dim, m.end_dim)
        elif isinstance(m, nn.GLU):
            self._glu(node, flow, m.dim)
        else:
            raise self.fail(node, "consumes widened channels and cannot be updated by widen")

    def _norm_children(self, node: fx.Node, m: nn.Module, name: str) -> None:
        """What a norm module applies after normalising (timm's BatchNormAct2d and
        GroupNormAct: drop, act) must be channel-wise."""
        for child_name, child in m.named_children():
            rule = _elementwise(child)
            if rule is None:
                raise self.fail(
                    node,
                    f"applies {type(child).__name__} ({name}.{child_name}) after normalising, "
                    "which widen does not know to be channel-wise",
                )
            self._pass(node, self.flows[node], *rule)

    def _group_norm(self, node: fx.Node, m: nn.GroupNorm, flow: Flow) -> None:
        """A GroupNorm normalises each group of C/G channels on its own: the widened tensor
        must keep the parent's groups in order and add whole new groups (which it normalises
        apart, with gain 1 and bias 0: a zero group stays zero)."""
        if flow.layout not in (SPATIAL, VECTOR):
            raise self.fail(node, f"cannot normalise a {flow.layout} tensor in groups")
        self._expect(node, m.num_channels, flow)
        size = m.num_channels // m.num_groups
        if size == 1 or grouped_outputs(flow.src, size, size) is not None:
            return
        groups = f"{m.num_groups} group{'s' * (m.num_groups != 1)}"
        self._whole_groups(node, flow, size, f"normalises in groups ({groups} of {size} channels)")

    def _whole_groups(
        self, node: fx.Node, flow: Flow, size: int, what: str, tail: str = ""
    ) -> None:
        """``flow`` does not come in whole groups of ``size``: ask widen for a channel map in
        whole groups where that would do (BlockRequest), else refuse naming ``what``."""
        whole = (flow.src.size - flow.parent_channels) % size == 0
        if whole and np.array_equal(flow.src, self.src):
            raise BlockRequest(size, whole_groups=True)
        raise self.fail(
            node,
            f"{what}: new input channels need whole new groups, i.e. a width of "
            f"{flow.parent_channels} + a multiple of {size}"
            + ("" if whole else f" (got {flow.src.size})")
            + tail,
        )

    def _expect(self, node: fx.Node, channels: int, flow: Flow) -> None:
        if channels != flow.parent_channels:
            raise self.fail(
                node,
                f"expects {channels} channels but the widened tensor has "
                f"{flow.parent_channels} in the parent",
            )

    def _operands(self, node: fx.Node) -> list[object]:
        return [*node.args, *node.kwargs.values()]

    def _merged(self, node: fx.Node, flows: list[Flow]) -> Flow:
        """One flow for operands whose channels must line up."""
        if any(not np.array_equal(f.src, flows[0].src) for f in flows):
            raise self.fail(node, "combines widened tensors whose channels do not line up")
        merged = flows[0]
        for f in flows[1:]:
            merged = replace(
                merged, zero_broken=merged.zero_broken or f.zero_broken, dead=merged.dead or f.dead
            )
        return merged

    def _add(self, node: fx.Node, widened: list[fx.Node]) -> None:
        tensors = [a for a in self._operands(node) if isinstance(a, fx.Node)]
        others = [a for a in tensors if a not in self.flows]
        if others:
            partners = [o for a in others for o in self.origins(a)]
            raise PartnerRequest(
                str(
                    self.fail(
                        node,
                        f"adds the widened channels to {', '.join(partners)}, which "
                        f"{'is' if len(partners) == 1 else 'are'} not widened: widen every "
                        "producer of this sum together (at=[...]) with the same width",
                    )
                ),
                layer_origins(partners),
            )
        flows = [self.flows[a] for a in tensors]
        if any(
            f.layout != flows[0].layout or not np.array_equal(f.src, flows[0].src) for f in flows
        ):
            raise self.fail(node, "adds widened tensors whose channels do not line up")
        scalars = [a for a in self._operands(node) if not isinstance(a, fx.Node)]
        zero = all(a == 0 for a in scalars if isinstance(a, (int, float)))
        merged = flows[0]
        for f in flows[1:]:
            merged = replace(
                merged, zero_broken=merged.zero_broken or f.zero_broken, dead=merged.dead or f.dead
            )
        self._pass(node, merged, zero, True)

    def _grouped(self, node: fx.Node, m: nn.Module, flow: Flow) -> None:
        """A grouped conv consuming the widened tensor grows by whole new groups (depthwise:
        one channel per group); its new output channels go on as new channels."""
        if flow.layout != SPATIAL or flow.ndim != m.weight.dim():
            raise self.fail(node, f"cannot consume a {flow.layout} tensor of rank {flow.ndim}")
        self._expect(node, m.in_channels, flow)
        per_in, per_out = m.in_channels // m.groups, m.out_channels // m.groups
        out = grouped_outputs(flow.src, per_in, per_out)
        if out is None:
            self._whole_groups(
                node,
                flow,
                per_in,
                f"is a grouped convolution (groups={m.groups}, {per_in} input channels per group)",
                ", reaching it with the parent's groups intact (not through a concatenation or a "
                "chunk)",
            )
        self.plan.uses.append(Use(node.target, "grouped", flow))
        self._pass(node, replace(flow, src=out), True, True)

    def _gate(self, node: fx.Node, gate: fx.Node, flow: Flow) -> str:
        """The conv that computes ``gate`` through single-use channel-wise operations (the
        expand conv of a squeeze-and-excitation block); MorphError when there is none."""
        path = gate
        while True:
            if len(path.users) != 1:
                break
            if path.op == "call_module":
                m = self.modules[path.target]
                if isinstance(m, (*CONV_TYPES, nn.Linear)):
                    if isinstance(m, CONV_TYPES) and m.groups != 1:
                        break
                    if path.target in self.producers or path.target in self.plan.gates:
                        break
                    if m.weight.shape[0] != flow.parent_channels or flow.layout != SPATIAL:
                        break
                    return path.target
                if type(m) not in _MODULES or len(path.args) != 1:
                    break
            elif not (
                (path.op == "call_function" and _function_kind(path.target) is not None)
                or (path.op == "call_method" and path.target in _METHODS)
            ):
                break
            path = path.args[0]
        raise self.fail(
            node,
            f"multiplies widened channels with {_describe(gate, self.modules)}, which is not "
            "widened and not a gate computed by a conv through channel-wise operations",
        )

    def _mul(self, node: fx.Node, widened: list[fx.Node]) -> None:
        tensors = [a for a in self._operands(node) if isinstance(a, fx.Node)]
        for a in [t for t in tensors if t not in self.flows]:
            base = a
            while base.op == "call_method" and base.target in _RESHAPES:
                base = base.args[0]
            if base.op == "get_attr":
                if node.target in _DIV and node.args[0] is a:
                    raise self.fail(node, "divides by a widened tensor")
                if self._scalar(node, a, base, self.flows[widened[0]]):
                    continue
                self._layer_scale(node, a, base, self.flows[widened[0]])
                return
            self.plan.gates[self._gate(node, a, self.flows[widened[0]])] = self.flows[
                widened[0]
            ].src
            self.flows[a] = self.flows[widened[0]]
        tensors = [a for a in tensors if a in self.flows]
        flows = [self.flows[a] for a in tensors]
        if any(not np.array_equal(f.src, flows[0].src) for f in flows):
            raise self.fail(node, "multiplies widened tensors whose channels do not line up")
        if node.target in _DIV and len(tensors) > 1:
            raise self.fail(node, "divides by a widened tensor")
        zero = any(f.zero_broken is None for f in flows)
        self.flows[node] = replace(
            flows[0],
            zero_broken=None if zero else flows[0].zero_broken,
            dead=next((f.dead for f in flows if f.dead), None),
        )

    def _scalar(self, node: fx.Node, operand: fx.Node, attr: fx.Node, flow: Flow) -> bool:
        """Whether ``operand`` is a one-element parameter or buffer (through reshapes with
        constant shapes) that keeps the widened tensor's rank: the same factor for every
        channel, left as it is."""
        owner, _, name = str(attr.target).rpartition(".")
        value = getattr(self.gm.get_submodule(owner), name, None)
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            return False
        shape, chain, step = tuple(value.shape), [], operand
        while step is not attr:
            chain.append(step)
            step = step.args[0]
        for step in reversed(chain):
            shape = self._reshaped(node, step, shape, str(attr.target))
        rank = flow.ndim if flow.layout in (SPATIAL, LAST) else 2
        if len(shape) > (1 if rank is None else rank):
            raise self.fail(
                node,
                f"multiplies widened channels with {attr.target!r} of shape {shape}, which "
                "would add axes to the widened tensor",
            )
        return True

    def _layer_scale(self, node: fx.Node, operand: fx.Node, param: fx.Node, flow: Flow) -> None:
        """A product of the widened tensor with a per-channel parameter (a layer scale such as
        ConvNeXt's ``layer_scale``/``gamma``, read directly or through reshapes with constant
        shapes): the parameter is widened along its channel axis like BatchNorm's weight."""
        try:
            value = self.gm.get_parameter(param.target)
        except AttributeError:
            raise self.fail(
                node, f"multiplies widened channels with {param.target!r}, which is not a parameter"
            ) from None
        reads = [n for n in self.gm.graph.nodes if n.op == "get_attr" and n.target == param.target]
        chain, shape = [], tuple(value.shape)
        step = operand
        while step is not param:
            chain.append(step)
            step = step.args[0]
        for step in [param, *chain]:
            if len(step.users) != 1:
                raise self.fail(
                    node,
                    f"multiplies widened channels with the parameter {param.target!r}, which "
                    "is also used elsewhere: widening would change its shape there",
                )
        for step in reversed(chain):
            shape = self._reshaped(node, step, shape, param.target)
        if len(reads) != 1 or len(self._operands(node)) != 2:
            raise self.fail(node, f"uses the parameter {param.target!r} more than once")
        c = flow.parent_channels
        axes = [i for i, n in enumerate(value.shape) if n != 1]
        rank = {SPATIAL: flow.ndim, VECTOR: 2}.get(flow.layout, len(shape))
        full = (1,) * (rank - len(shape)) + shape if len(shape) <= rank else shape
        where = -1 if flow.layout == LAST else 1
        if (
            flow.layout == FLAT
            or value.numel() != c
            or len(axes) > 1
            or len(full) != rank
            or full[where] != c
            or sum(n != 1 for n in full) > 1
        ):
            raise self.fail(
                node,
                f"multiplies widened channels with the parameter {param.target!r} of shape "
                f"{tuple(value.shape)}, which is not one value per channel along the channel "
                "axis",
            )
        axis = axes[0] if axes else 0
        self.plan.uses.append(Use(param.target, "scale", flow, axis))
        self.flows[node] = flow

    def _reshaped(self, node: fx.Node, step: fx.Node, shape: tuple, name: str) -> tuple:
        """The shape of the parameter ``name`` after the reshape ``step`` (constant shapes)."""
        if step.target in ("to", "type_as"):
            return shape
        args = step.args[1:]
        if any(isinstance(a, fx.Node) for a in args) or step.kwargs:
            raise self.fail(node, f"reshapes the parameter {name!r} with a computed shape")
        meta = torch.empty(shape, device="meta")
        return tuple(getattr(meta, str(step.target))(*args).shape)

    def _channel_axis(self, flow: Flow, dim: object) -> bool:
        if not isinstance(dim, int):
            return False
        if flow.layout == LAST:
            return dim == -1
        rank = 2 if flow.layout in (VECTOR, FLAT) else flow.ndim
        return dim in (1, 1 - rank)

    def _cat(self, node: fx.Node) -> None:
        tensors = _arg(node, 0, "tensors", ())
        dim = _arg(node, 1, "dim", 0)
        flows = [self.flows[t] for t in tensors if t in self.flows]
        if (
            isinstance(dim, int)
            and len(flows) == len(tensors)
            and not any(self._is_channel(f, dim) for f in flows)
        ):  # along another axis: every operand must carry the same channels
            if any(f.layout != flows[0].layout or f.ndim != flows[0].ndim for f in flows):
                raise self.fail(node, "concatenates widened tensors of different layouts")
            self._pass(node, self._merged(node, flows), True, True)
            return
        if any(not self._channel_axis(f, dim) for f in flows) or any(
            f.layout != flows[0].layout for f in flows
        ):
            raise self.fail(node, f"concatenates along dim={dim!r}, not the channel axis")
        pieces, offset = [], 0
        for t in tensors:
            if t in self.flows:
                src = self.flows[t].src
                pieces.append(np.where(src >= 0, src + offset, -1))
                offset += self.flows[t].parent_channels
            else:
                count = _channels(t, self.modules, dim)
                if count is None:
                    raise self.fail(
                        node,
                        f"concatenates {_describe(t, self.modules)}, whose channel count "
                        "cannot be read from the graph",
                    )
                pieces.append(np.arange(offset, offset + count))
                offset += count
        merged = flows[0]
        for f in flows[1:]:
            merged = replace(
                merged, zero_broken=merged.zero_broken or f.zero_broken, dead=merged.dead or f.dead
            )
        self.flows[node] = replace(merged, src=np.concatenate(pieces))

    def _chunk(self, node: fx.Node, flow: Flow) -> None:
        """``chunk(k, dim)``/``split(size, dim)``: parts along the channel axis grow
        consistently (:func:`chunk_flow`); along any other axis every part keeps the map."""
        chunk = node.target in ("chunk", torch.chunk)
        dim = _arg(node, 2, "dim", 0)
        if not isinstance(dim, int):
            raise self.fail(node, f"splits along a computed axis {dim!r}")
        if not self._is_channel(flow, dim):
            taken = [u.args[1] for u in node.users if u.target is operator.getitem]
            self.pieces[node] = [flow] * max(
                (i + 1 for i in taken if isinstance(i, int)), default=0
            )
            return
        if flow.layout == FLAT or (flow.layout == LAST and flow.ndim is None and dim != -1):
            raise self.fail(
                node,
                f"splits a {flow.layout} tensor along axis {dim}, which may hold the widened "
                "channels; pass probe= or input_shape= so the rank is known",
            )
        if not chunk:
            self._sized_split(node, flow)
            return
        parts = _arg(node, 1, "chunks", None)
        if not isinstance(parts, int):
            raise self.fail(node, "chunks into a computed number of parts")
        self.pieces[node] = chunk_flow(flow, parts, self.src, lambda why: self.fail(node, why))

    def _glu(self, node: fx.Node, flow: Flow, dim: object) -> None:
        """GLU along ``dim``: along the channel axis the halves grow alike
        (:func:`glu_flow`); along another axis each channel is gated by a value of its own
        channel, a channel-wise product (a zero channel stays zero)."""
        if not isinstance(dim, int):
            raise self.fail(node, f"gates along a computed axis {dim!r}")
        if not self._is_channel(flow, dim):
            self._pass(node, flow, True, True)
            return
        if flow.layout == FLAT or (flow.layout == LAST and flow.ndim is None and dim != -1):
            raise self.fail(
                node,
                f"halves a {flow.layout} tensor along axis {dim}, which may hold the widened "
                "channels; pass probe= or input_shape= so the rank is known",
            )
        self._pass(node, glu_flow(flow, self.src, lambda why: self.fail(node, why)), True, True)

    def _sized_split(self, node: fx.Node, flow: Flow) -> None:
        """``split(sizes, dim)`` along the channel axis inside a module that holds ``sizes`` as
        one attribute (timm's ``MixedConv2d.splits``) and runs this split once: part i keeps
        the parent's part i and the new channels among them, and the attribute gets the
        child's sizes (:attr:`WidthPlan.sizes`). The parent channels must reach the split in
        part order; the producer's own map is asked for with its channels in order
        (:class:`BlockRequest`)."""
        sizes = node.args[1]
        fixed = (
            f"splits the widened channels into parts of the sizes {sizes!r} written in the "
            "code, which would no longer add up to the widened axis"
        )
        owner = node_module(node)
        module = self.originals.get(owner) if owner is not None else None
        if not isinstance(sizes, (list, tuple)) or not all(isinstance(n, int) for n in sizes):
            raise self.fail(node, f"{fixed}; write it as chunk(k, dim) so every part grows")
        attrs = [
            a
            for a, v in (vars(module) if module is not None else {}).items()
            if not a.startswith("_") and isinstance(v, (list, tuple)) and list(v) == list(sizes)
        ]
        attrs = [a for a in attrs if _splits_by(module, a, node.target)]
        if len(attrs) != 1:
            where = f"{owner!r} ({type(module).__name__})" if module is not None else "no module"
            raise self.fail(
                node,
                f"{fixed}; {where} holds {'no' if not attrs else 'more than one'} attribute "
                "its forward splits by; write it as chunk(k, dim) so every part grows",
            )
        splits = [
            n for n in self.gm.graph.nodes if n.target is node.target and node_module(n) == owner
        ]
        if len(splits) != 1:
            raise self.fail(node, f"{fixed}; {owner!r} splits {len(splits)} times in the graph")
        bounds = np.cumsum([0, *sizes])
        part = np.searchsorted(bounds, flow.src, side="right") - 1  # parent channel → its part
        old = flow.src >= 0
        if not old.any() or bounds[-1] != flow.parent_channels or min(sizes) < 1:
            raise self.fail(node, f"{fixed}, not the {flow.parent_channels} channels it splits")
        # a new channel belongs to the part of the parent channel before it (or the first)
        index = np.maximum.accumulate(np.where(old, np.arange(old.size), -1))
        first = int(np.argmax(old))
        owners = np.where(index >= 0, part[np.maximum(index, 0)], part[first])
        if np.any(np.diff(owners) < 0) or len(set(owners.tolist())) != len(sizes):
            if np.array_equal(flow.src, self.src):
                raise BlockRequest(1, whole_groups=True)
            raise self.fail(
                node, f"{fixed}, and the operations before it moved channels between the parts"
            )
        cuts = np.searchsorted(owners, np.arange(len(sizes) + 1), side="left")
        pieces = []
        for i in range(len(sizes)):
            src = flow.src[cuts[i] : cuts[i + 1]]
            pieces.append(replace(flow, src=np.where(src >= 0, src - bounds[i], -1)))
        self.pieces[node] = pieces
        child = [int(p.src.size) for p in pieces]
        self.plan.sizes[owner] = (attrs[0], type(getattr(module, attrs[0]))(child))

    def _slice(self, node: fx.Node, flow: Flow) -> None:
        """``x[:, :n]`` of a widened tensor that keeps every one of the parent's n channels
        (slices of other axes pass): without a bound it passes; with n written in the code it
        must come from the one int attribute of the module running the slice that its forward
        slices by (timm's GhostModule: ``cat([x1, x2])[:, :self.out_chs]``), which gets the
        child's channel count (:attr:`WidthPlan.sizes`)."""
        items = node.args[1] if isinstance(node.args[1], tuple) else (node.args[1],)
        rank = flow.ndim if flow.layout != VECTOR else 2
        if flow.layout == FLAT:  # its axis 1 holds channels × positions
            raise self.fail(node, "slices a flattened widened tensor")
        if rank is None or len(items) > rank or not all(isinstance(i, slice) for i in items):
            raise self.fail(node, "indexes a widened tensor other than by slices of its axes")
        axis = next((a for a in range(len(items)) if self._is_channel(flow, a)), None)
        cut = items[axis] if axis is not None else slice(None)
        if cut.start not in (None, 0) or cut.step not in (None, 1):
            raise self.fail(node, "slices the widened channels other than from the first")
        if cut.stop is not None:
            self._slice_bound(node, flow, cut.stop)
        self._pass(node, flow, True, True)

    def _slice_bound(self, node: fx.Node, flow: Flow, stop: object) -> None:
        """The attribute the slice bound ``stop`` comes from, grown to the child's channels."""
        why = f"keeps {stop!r} of the {flow.parent_channels} channels"
        if stop != flow.parent_channels:
            raise self.fail(node, f"{why}, and the new ones would fall outside")
        owner = node_module(node) or ""  # "": the model's own forward
        module = self.originals.get(owner)
        attrs = [
            a
            for a, v in (vars(module) if module is not None else {}).items()
            if not a.startswith("_") and type(v) is int and v == stop and _slices_by(module, a)
        ]
        if module is None or len(attrs) != 1 or owner in self.plan.sizes:
            where = f"{owner!r}" if owner else "the model"
            raise self.fail(
                node,
                f"{why} written in the code, and {where} holds no one int attribute its "
                "forward slices by that could grow with the channels",
            )
        self.plan.sizes[owner] = (attrs[0], int(flow.src.size))

    def _move(self, node: fx.Node, flow: Flow) -> None:
        """transpose/permute: the channel axis goes where the permutation puts it; the result
        must hold it at axis 1 of a batched spatial tensor or as the last axis."""
        args = node.args[1:]
        rank = flow.ndim if flow.layout != VECTOR else 2
        permute = node.target in ("permute", torch.permute)
        if permute:
            dims = args[0] if len(args) == 1 and isinstance(args[0], (tuple, list)) else args
            dims = list(dims or node.kwargs.get("dims", ()))
            rank = len(dims)
        if flow.layout == FLAT or rank is None:
            raise self.fail(
                node,
                f"moves the axes of a {flow.layout} tensor of unknown rank; pass probe= or "
                "input_shape= so the rank is known",
            )
        if not permute:
            d0, d1 = _arg(node, 1, "dim0", None), _arg(node, 2, "dim1", None)
            if not isinstance(d0, int) or not isinstance(d1, int):
                raise self.fail(node, "transposes computed axes")
            dims = list(range(rank))
            dims[d0 % rank], dims[d1 % rank] = dims[d1 % rank], dims[d0 % rank]
        if not all(isinstance(d, int) for d in dims) or sorted(d % rank for d in dims) != list(
            range(rank)
        ):
            raise self.fail(node, f"permutes with dims {dims!r}")
        axis = rank - 1 if flow.layout == LAST else 1
        moved = [d % rank for d in dims].index(axis)
        if moved == rank - 1:
            self.flows[node] = replace(flow, layout=VECTOR if rank == 2 else LAST, ndim=rank)
        elif moved == 1:
            self.flows[node] = replace(flow, layout=SPATIAL, ndim=rank)
        else:
            raise self.fail(
                node,
                f"moves the widened channels to axis {moved} of {rank}; widen follows them at "
                "axis 1 (N, C, ...) or as the last axis",
            )

    def _flatten(self, node: fx.Node, flow: Flow, start: object, end: object) -> None:
        if flow.layout == VECTOR and start in (1, -1) and end in (1, -1):
            self.flows[node] = flow
        elif flow.layout == SPATIAL and start == 1 and end in (-1, flow.ndim - 1):
            self.flows[node] = replace(flow, layout=FLAT, ndim=2)
        elif (
            flow.layout == SPATIAL
            and isinstance(start, int)
            and flow.ndim is not None
            and 2 <= start < flow.ndim
            and end in (-1, flow.ndim - 1)
        ):  # the spatial axes only: (N, C, H, W) → (N, C, H·W)
            self.flows[node] = replace(flow, ndim=start + 1)
        else:
            raise self.fail(
                node,
                f"flattens a {flow.layout} tensor with start_dim={start}, end_dim={end}; "
                "only flatten(start_dim=1) of a batched (N, C, ...) tensor is supported",
            )

    def _view(self, node: fx.Node, flow: Flow) -> None:
        shape = _view_shape(node)
        if len(shape) == 2 and shape[1] == -1 and self._is_batch(shape[0]):
            self._flatten(node, flow, 1, -1)
            return
        counts = [i for i, a in enumerate(shape) if a in self.counts]
        if counts and self._keeps_channels(node, flow, shape, counts):
            layout = SPATIAL if flow.layout == SPATIAL else LAST
            self.flows[node] = replace(flow, layout=layout, ndim=len(shape))
            return
        raise self.fail(
            node,
            "reshapes a widened tensor other than to (batch, -1) or, by its own channel count, "
            "to (batch, C, …) or (…, C)",
        )

    def _keeps_channels(self, node: fx.Node, flow: Flow, shape: tuple, counts: list[int]) -> bool:
        """Whether the view ``node`` to ``shape``, sized at ``counts`` by the channel count of
        the flow it reshapes, keeps the channel axis whole: (N, C, *S) → (N, C, *S') — the
        batch read from a shape and, on the probe, the same N in and out — or (…, C) → (…', C)."""
        if len(counts) != 1 or not np.array_equal(self.counts[shape[counts[0]]].src, flow.src):
            return False
        if flow.layout == SPATIAL:
            before = getattr(node.args[0].meta.get("tensor_meta"), "shape", None)
            after = getattr(node.meta.get("tensor_meta"), "shape", None)
            same_batch = before is not None and after is not None and before[0] == after[0]
            return (
                counts[0] == 1
                and isinstance(shape[0], fx.Node)
                and self._is_batch(shape[0])
                and same_batch
            )
        return flow.layout == LAST and counts[0] == len(shape) - 1

    def _is_batch(self, value: object) -> bool:
        """Whether a view's size ``value`` is the batch: an int, or axis 0 of a widened
        tensor's shape."""
        if isinstance(value, int):
            return True
        if not isinstance(value, fx.Node):
            return False
        if value.op == "call_method" and value.target == "size":
            return _arg(value, 1, "dim", None) == 0
        return (
            value.op == "call_function"
            and value.target is operator.getitem
            and value.args[0] in self.shape_nodes
            and value.args[1] == 0
        )

    def _reduce(self, node: fx.Node, flow: Flow) -> None:
        dims = _arg(node, 1, "dim", None)
        keep = bool(_arg(node, 2, "keepdim", False))
        dims = (dims,) if isinstance(dims, int) else dims
        if not isinstance(dims, (tuple, list)) or not all(isinstance(d, int) for d in dims):
            raise self.fail(node, "reduces over the channel axis (or over every axis)")
        if flow.layout == LAST:
            if any(d >= 0 or d == -1 for d in dims):
                raise self.fail(node, "reduces over axes the channels may occupy")
            self.flows[node] = flow
            return
        rank = flow.ndim if flow.layout == SPATIAL else 2
        axes = {d % rank for d in dims}
        if any(a < 2 for a in axes):
            raise self.fail(node, "reduces over the batch or channel axis")
        ndim = rank if keep else rank - len(axes)
        self.flows[node] = replace(flow, layout=SPATIAL if ndim > 2 else VECTOR, ndim=ndim)


def grouped_outputs(src: np.ndarray, per_in: int, per_out: int) -> np.ndarray | None:
    """The channel map after a grouped conv with ``per_in`` input and ``per_out`` output
    channels per group, or None when ``src`` does not come in whole groups. Every block of
    ``per_in`` child channels must be a parent group in order (its outputs j·per_out + r come
    from parent group j) or all new (a new group: new outputs). Depthwise: per_in = 1."""
    if src.size % per_in:
        return None
    pieces = []
    for row in src.reshape(-1, per_in):
        if np.all(row < 0):
            pieces.append(np.full(per_out, -1))
        elif row[0] % per_in == 0 and np.array_equal(row, row[0] + np.arange(per_in)):
            pieces.append(row[0] // per_in * per_out + np.arange(per_out))
        else:
            return None
    return np.concatenate(pieces)


def _runs(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> bool:
    """Whether an eval-mode copy of ``model`` runs on ``inputs`` (without gradients; the
    caller's RNG is restored)."""
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            copy.deepcopy(model).eval()(*inputs)
    except Exception:  # the model's forward raises any type
        return False
    return True


def plan_widening(
    model: nn.Module,
    producers: Sequence[str],
    src: np.ndarray,
    inputs: tuple[torch.Tensor, ...] | None = None,
) -> WidthPlan:
    """Trace ``model`` and find every module the widening of ``producers`` (all with channel map
    ``src``) touches; ``inputs`` (optional) record every tensor's shape first (an eval-mode run
    without gradients), which tells the walk the ranks of channels-last tensors. Raises
    MorphError when the graph cannot be updated exactly, :class:`BlockRequest` when ``src``
    must come in equal blocks."""
    gm = trace(model, "widen")
    if inputs is not None:
        training = {m: m.training for m in gm.modules()}
        try:
            gm.eval()
            with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):  # its traceback
                ShapeProp(gm).propagate(*inputs)
        except Exception as exc:  # any failure of the model on its probe, or of the graph
            if _runs(model, inputs):  # the traced graph computes otherwise than the model
                raise FxTraceError(
                    f"torch.fx's graph of {type(model).__name__} fails on the probe where the "
                    f"model runs ({type(exc).__name__}: {exc}); widen needs a faithful graph"
                ) from exc
            raise MorphError(
                f"widening {list(producers)}: {type(model).__name__} fails on the probe "
                f"({type(exc).__name__}: {exc})"
            ) from exc
        finally:
            for m, mode in training.items():
                m.training = mode
    return _Walk(gm, producers, src, dict(model.named_modules())).run()
