"""Where widened channels go in an exported graph (Hugging Face models, torch.export).

torch.fx cannot trace Hugging Face models, nor models whose forward branches on tensor values
or sizes (timm's EfficientNet and ByobNet; widen falls back to this walk when fx fails);
:func:`.tracing.export_graph` records them with torch.export, whose graph holds ATen calls
and reads every parameter with ``get_attr``: a Linear layer is ``aten.linear(x,
<layer>.weight, <layer>.bias)``, transformers' ``Conv1D`` (y = x·W + b, W: in × out) is
``aten.addmm(<layer>.bias, x.view(-1, in), <layer>.weight)``.
A layer call is recognised by the module owning its weight. The widened channels are the last
axis of a Linear or Conv1D output, or axis 1 of a convolution's (N, C, *S) output, and the walk
follows them as :mod:`.consumers` does in a torch.fx graph, into the same
:class:`~.consumers.WidthPlan`:

- element-wise ATen ops pass the tensor on (activations, dropout, casts, copies), noting
  whether a zero channel stays zero and whether gradient passes 0; so do ops that keep the
  last axis in place (view/reshape with the same last size, unsqueeze, expand,
  transpose/permute/select/slice/index/reductions of other axes);
- arithmetic with a scalar, with a tensor of size 1 on the last axis (broadcast along the
  channels) or with another widened tensor of the same channel map is channel-wise;
- a product with a tensor computed by another Linear/Conv1D layer through element-wise ops
  (SwiGLU's SiLU(gate(x))·up(x)) widens that layer with the same channel map, as
  :func:`~.transformer.grow_ffn` grows gate and up together;
- concatenation along the last axis shifts the map;
- ``chunk(k)`` along the last axis splits the map into k parts that grow alike (a fused
  gate/up projection; :func:`~.consumers.chunk_flow`, which may ask widen for a map in equal
  blocks); split with sizes fixed in the graph is refused; along other axes both pass;
- ``glu`` along the channel axis (the last, or axis 1 of a convolution's output: Speech2Text's
  subsampler) gives a·σ(b) of the halves [a; b], which grow alike
  (:func:`~.consumers.glu_flow`); along another axis it is channel-wise;
- transpose/permute move the channel axis: to the last axis or to axis 1 (N, C, …); at axis 1
  the walk follows reshapes that keep N and C the first two axes (``view(B, C, H, W)``,
  ``flatten(2)``), ops on the spatial axes and element-wise ops;
- a BatchNorm module's call on channels at axis 1 gets the new channels (every call of it
  must see the same widened channels); so does a frozen BatchNorm (its buffers; its ops,
  x·scale + shift, run inside its module, which must take the widened tensor as its one input
  and give one output); pooling, resizing and padding of the spatial axes pass
  them on (a constant pad by a non-zero value makes a zero channel non-zero);
- a Linear or Conv1D layer reading the channels last consumes it (new input columns), and so
  does a convolution reading them at axis 1; a grouped (depthwise) convolution grows by whole
  new groups (:func:`~.consumers.grouped_outputs`) whose new outputs go on as new channels.

Anything else is refused, naming the ATen op, the node and the module it ran in: a sum with
a tensor that is not widened (a residual stream: grow_width), a norm's statistics over the
channels (grow_width), a reshape splitting them into attention heads (add_heads), attention
itself, the model's output.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch
from torch import fx, nn

from .consumers import (
    LAST,
    SPATIAL,
    BlockRequest,
    Flow,
    PartnerRequest,
    Use,
    WidthPlan,
    chunk_flow,
    dual_role_refusal,
    glu_flow,
    grouped_outputs,
    is_frozen_batch_norm,
    layer_origins,
)
from .errors import MorphError
from .standardized import is_weight_standardised
from .surgery import CONV_TYPES
from .tracing import export_graph, node_module
from .transformer_layout import as_matrix, is_conv1d

#: Element-wise ops: (φ(0) == 0, φ'(0) != 0).
_UNARY: dict[str, tuple[bool, bool]] = {
    "relu": (True, False),
    "relu6": (True, False),
    "gelu": (True, True),
    "silu": (True, True),
    "tanh": (True, True),
    "hardtanh": (True, True),
    "leaky_relu": (True, True),
    "elu": (True, True),
    "selu": (True, True),
    "celu": (True, True),
    "mish": (True, True),
    "hardswish": (True, True),
    "neg": (True, True),
    "sin": (True, True),
    "erf": (True, True),
    "sigmoid": (False, True),
    "hardsigmoid": (False, True),
    "softplus": (False, True),
    "exp": (False, True),
    "dropout": (True, True),
    "alpha_dropout": (True, True),
    "clone": (True, True),
    "contiguous": (True, True),
    "detach": (True, True),
    "alias": (True, True),
    "lift_fresh_copy": (True, True),
    "to": (True, True),
    "_to_copy": (True, True),
    "type_as": (True, True),
}
#: Reshapes: the channel axis stays last when the last size is unchanged (row-major order
#: keeps every entry's last coordinate).
_RESHAPES = {"view", "reshape", "_unsafe_view", "expand", "flatten", "unsqueeze", "squeeze"}
#: Ops on one axis (``dim`` argument 1, default 0): channel-wise unless it is the last one.
_AXIS_OPS = {"select", "slice", "narrow"}
_REDUCTIONS = {"mean", "sum", "amax", "amin"}
_ADDS = {"add", "sub", "rsub"}
_MULS = {"mul", "div"}
_NORMS = {"layer_norm", "native_layer_norm", "rms_norm", "group_norm", "batch_norm"}
#: BatchNorm calls: (input, weight, bias, running_mean, running_var, …); per channel at axis 1.
_BATCH_NORMS = {
    "batch_norm",
    "_native_batch_norm_legit_no_training",
    "_native_batch_norm_legit",
    "native_batch_norm",
}
#: GroupNorm calls: (input, num_groups, weight, bias, eps, …); one group per channel at axis 1
#: is a per-channel norm (Wav2Vec2's first feature-extractor convolution).
_GROUP_NORMS = {"group_norm", "native_group_norm"}
#: Ops on the spatial axes of an (N, C, *S) tensor, channel by channel.
_POOLS = {
    f"{kind}_pool{d}d" for kind in ("adaptive_avg", "adaptive_max", "avg", "max") for d in (1, 2, 3)
} | {f"upsample_{m}{d}d" for m in ("nearest", "bilinear", "bicubic") for d in (1, 2)}
_PADS = {"pad", "constant_pad_nd", "reflection_pad1d", "reflection_pad2d", "replicate_pad2d"}
_ATTENTION = {"scaled_dot_product_attention", "_scaled_dot_product_flash_attention"}
_NO_OUTPUT = {"_assert_tensor_metadata"}
#: Layer calls: op → (position of the weight, position of the data input, layer kind).
_LAYER_CALLS = {
    "linear": (1, 0, "linear"),
    "addmm": (2, 1, "conv1d"),
    "conv1d": (1, 0, "conv"),
    "conv2d": (1, 0, "conv"),
    "conv3d": (1, 0, "conv"),
    "convolution": (1, 0, "conv"),
}


#: What the walk does with channels at axis 1 of an (N, C, *S) tensor.
_SPATIAL_ONLY = (
    "acts on a tensor whose widened channels are at axis 1 (N, C, …): in an exported graph widen "
    "follows them there through element-wise ops, reshapes of the other axes, transposes and "
    "convolutions only"
)


def _aten(node: fx.Node) -> str | None:
    """The ATen op name of ``node`` ("linear", "add", …), None for anything else."""
    schema = getattr(node.target, "_schema", None)
    if node.op != "call_function" or schema is None or not schema.name.startswith("aten::"):
        return None
    return schema.name.removeprefix("aten::")


#: Where a weight-normed layer's direction v is read (:mod:`.weight_normed`).
_NORMED_V = ".parametrizations.weight.original1"


def _weight_owner(weight: object) -> str | None:
    """The module owning a layer call's weight argument: ``<owner>.weight`` read with
    ``get_attr``, or a weight norm ``aten._weight_norm(<owner>.parametrizations.weight.
    original1, ….original0, dim)`` (None: neither)."""
    if not isinstance(weight, fx.Node):
        return None
    if _aten(weight) == "_weight_norm":
        v = weight.args[0]
        if isinstance(v, fx.Node) and v.op == "get_attr" and str(v.target).endswith(_NORMED_V):
            return str(v.target).removesuffix(_NORMED_V)
        return None
    owner, _, attr = str(weight.target).rpartition(".")
    return owner if weight.op == "get_attr" and attr == "weight" else None


#: Views of a weight on the way into or out of its standardisation.
_WEIGHT_VIEWS = ("reshape", "view", "reshape_as", "view_as", "_unsafe_view")


def _standardised_owner(weight: object) -> str | None:
    """The module whose weight W a layer call's weight argument standardises (timm's
    ``StdConv2d``, Hugging Face BiT's ``WeightStandardizedConv2d``: ``batch_norm(W.reshape(1,
    out, -1), None, None, training=True).reshape_as(W)``, :mod:`.standardized`), else None."""
    if not isinstance(weight, fx.Node) or _aten(weight) not in _WEIGHT_VIEWS:
        return None
    norm = weight.args[0]
    if not isinstance(norm, fx.Node) or _aten(norm) != "batch_norm":
        return None
    if norm.args[3:5] != (None, None):  # running statistics: not a standardisation
        return None
    viewed = norm.args[0]
    if not isinstance(viewed, fx.Node) or _aten(viewed) not in _WEIGHT_VIEWS:
        return None
    return _weight_owner(viewed.args[0])


def _shape(node: object) -> tuple[int, ...] | None:
    val = node.meta.get("val") if isinstance(node, fx.Node) else None
    return tuple(int(n) for n in val.shape) if isinstance(val, torch.Tensor) else None


def _sole_use(node: fx.Node) -> bool:
    """Whether the tensor an in-place binary op (``aten.add_``: ``x += y``) overwrites is used
    by that op alone, so that the op computes what its out-of-place form would."""
    target = node.args[0] if node.args else None
    return isinstance(target, fx.Node) and set(target.users) == {node}


def _arg(node: fx.Node, index: int, name: str, default: object) -> object:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


class _ExportedWalk:
    """One walk over an exported graph; see the module docstring."""

    def __init__(
        self, model: nn.Module, gm: fx.GraphModule, producers: Sequence[str], src: np.ndarray
    ) -> None:
        self.modules = dict(model.named_modules())
        self.gm = gm
        self.producers = tuple(producers)
        self.src = src
        self.flows: dict[fx.Node, Flow] = {}
        self.pieces: dict[fx.Node, list[Flow]] = {}  # the parts of a chunked widened tensor
        self.norm_calls: dict[str, set[fx.Node]] = {}  # BatchNorm module → its calls
        self.frozen: dict[str, list[fx.Node]] = {}  # frozen BatchNorm module → its nodes
        self.derived: dict[str, set[fx.Node]] = {}  # standardised layer → its weight's nodes
        self.plan = WidthPlan(self.producers)

    # -- reading the graph ----------------------------------------------------------------

    def layer_call(self, node: fx.Node) -> tuple[str, str] | None:
        """(module name, kind) when ``node`` is the call of a Linear ("linear"), Conv1D
        ("conv1d") or convolution ("conv") layer through the weight it owns (or its weight
        norm's, :func:`_weight_owner`)."""
        spec = _LAYER_CALLS.get(_aten(node) or "")
        if spec is None or len(node.args) <= spec[0]:
            return None
        owner = _weight_owner(node.args[spec[0]])
        if owner is None:  # a standardised weight: the layer's own rule, verified by running it
            owner = self._standardised(node.args[spec[0]])
            if owner is None:
                return None
        module = self.modules.get(owner)
        kind = spec[2]
        expected = {
            "linear": isinstance(module, nn.Linear),
            "conv1d": module is not None and is_conv1d(module),
            "conv": isinstance(module, CONV_TYPES),
        }[kind]
        return (owner, kind) if expected else None

    def _standardised(self, weight: fx.Node) -> str | None:
        """The weight-standardised layer whose weight ``weight`` computes (verified by running
        the layer, :func:`.standardized.is_weight_standardised`), from that layer's own
        parameters alone; the nodes computing it are noted in ``self.derived``."""
        owner = _standardised_owner(weight)
        if owner is None or not is_weight_standardised(self.modules.get(owner, nn.Identity())):
            return None
        chain, todo = set(), [weight]
        while todo:
            node = todo.pop()
            if node in chain:
                continue
            chain.add(node)
            if node.op == "get_attr" and str(node.target).rpartition(".")[0] != owner:
                return None  # another module's tensor takes part
            if node.op == "placeholder":
                return None
            todo += node.all_input_nodes
        self.derived.setdefault(owner, set()).update(chain)
        return owner

    def describe(self, node: fx.Node) -> str:
        op = _aten(node)
        if node.op == "output":
            return "the model's output"
        what = (
            f"aten.{op}" if op else f"{node.op} {getattr(node.target, '__name__', node.target)!r}"
        )
        owner = node_module(node)
        where = ""
        if owner in self.modules:
            where = f", in {owner!r} ({type(self.modules[owner]).__name__})"
        return f"{what} (node {node.name!r}{where})"

    def hint(self, node: fx.Node) -> str:
        """What grows the module ``node`` ran in, when it is attention or a norm."""
        owner = node_module(node)
        for name in _ancestors(owner):
            cls = type(self.modules.get(name)).__name__
            if "Attention" in cls:
                return f"; {name!r} is attention ({cls}): add_heads grows it"
            if "Norm" in cls:
                return f"; {name!r} is a norm ({cls}): grow_width widens the stream it normalises"
        return ""

    def fail(self, node: fx.Node, why: str) -> MorphError:
        return MorphError(
            f"widening {list(self.producers)}: {self.describe(node)} {why}{self.hint(node)}"
        )

    def origins(self, node: fx.Node, seen: dict[fx.Node, list[str]] | None = None) -> list[str]:
        """The layers, parameters or model inputs a tensor comes from (through BatchNorm, a
        per-channel map, to what it normalises)."""
        seen = {} if seen is None else seen
        if node in seen:
            return seen[node]
        seen[node] = []
        layer = self.layer_call(node)
        params = [a for a in node.all_input_nodes if a.op == "get_attr"]
        if layer is not None:
            found = [repr(layer[0])]
        elif params and _aten(node) in _BATCH_NORMS:  # per channel: from what it normalises
            found = self.origins(node.args[0], seen) if isinstance(node.args[0], fx.Node) else []
        elif params:
            owner = str(params[0].target).rpartition(".")[0]
            cls = type(self.modules.get(owner)).__name__
            found = [f"{owner!r} ({cls})"]
        elif node.op == "placeholder":
            found = [f"the model input {node.target!r}"]
        elif node.op == "get_attr":
            found = [f"the parameter {node.target!r}"]
        else:
            found = []
            for arg in node.all_input_nodes:
                found += [o for o in self.origins(arg, seen) if o not in found]
        seen[node] = found
        return found

    # -- the walk -------------------------------------------------------------------------

    def run(self) -> WidthPlan:
        calls = {p: 0 for p in self.producers}
        for node in self.gm.graph.nodes:
            if node.op in ("get_attr", "placeholder"):
                continue
            chunks = [a for a in node.all_input_nodes if a in self.pieces]
            if chunks:
                index = node.args[1] if node.target is operator.getitem else None
                if len(chunks) > 1 or not isinstance(index, int):
                    raise self.fail(node, "uses the parts of a chunked widened tensor together")
                self.flows[node] = self.pieces[chunks[0]][index]
                continue
            if any(node in inside for inside in self.frozen.values()):
                continue  # computed by _frozen_batch_norm
            widened = [a for a in node.all_input_nodes if a in self.flows]
            owner = node_module(node)
            if widened and is_frozen_batch_norm(self.modules.get(owner, nn.Identity())):
                self._frozen_batch_norm(node, owner, widened)
                continue
            layer = self.layer_call(node)
            if layer is not None and layer[0] in calls:
                calls[layer[0]] += 1
                if widened:  # new input columns, then new output rows
                    why = dual_role_refusal(self.modules[layer[0]])
                    if why is not None:
                        raise self.fail(node, f"consumes channels widened with it and {why}")
                    self._step(node, widened, layer)
                self.flows[node] = self._start(node, layer[1])
                continue
            if widened:
                self._step(node, widened, layer)
        for name, count in calls.items():
            if count != 1:
                raise MorphError(
                    f"widening {list(self.producers)}: {name!r} is called {count} times in the "
                    "exported graph; it must be called exactly once"
                )
        self._check_calls()
        return self.plan

    def _start(self, node: fx.Node, kind: str) -> Flow:
        """The producer's output: channels last (Linear, Conv1D) or at axis 1 (a convolution's
        (N, C, *S) output)."""
        if kind != "conv":
            return Flow(self.src, LAST, None)
        rank = len(_shape(node) or ())
        if rank < 3:
            raise self.fail(node, f"is a convolution with an output of rank {rank}, not (N, C, …)")
        return Flow(self.src, SPATIAL, rank)

    def _check_calls(self) -> None:
        """Every call of a consumer sees the same widened channels, a gate is called once,
        and no parameter of a touched layer is read outside its own calls."""
        merged: dict[str, Use] = {}
        for use in self.plan.uses:
            first = merged.get(use.name)
            if first is not None and not np.array_equal(first.flow.src, use.flow.src):
                raise MorphError(
                    f"widening {list(self.producers)}: {use.name!r} is called on widened "
                    "tensors whose channels do not line up"
                )
            if first is not None:
                a, b = first.flow, use.flow
                use = Use(
                    use.name,
                    use.kind,
                    replace(a, zero_broken=a.zero_broken or b.zero_broken, dead=a.dead or b.dead),
                )
            merged[use.name] = use
        self.plan.uses = list(merged.values())
        consumers = {u.name for u in self.plan.uses}
        touched = {*self.producers, *self.plan.gates, *consumers}
        gate_calls = dict.fromkeys(self.plan.gates, 0)
        for node in self.gm.graph.nodes:
            name = (self.layer_call(node) or ("",))[0]
            if name in gate_calls:
                gate_calls[name] += 1
            if name in consumers and node.args[_LAYER_CALLS[_aten(node)][1]] not in self.flows:
                raise MorphError(
                    f"widening {list(self.producers)}: {name!r} is also called on tensors that "
                    "are not widened"
                )
        for node in self.gm.graph.nodes:
            if _aten(node) not in _BATCH_NORMS | _GROUP_NORMS:
                continue
            stats = [a for a in node.args[1:5] if isinstance(a, fx.Node) and a.op == "get_attr"]
            owners = {str(a.target).rpartition(".")[0] for a in stats}
            if owners & self.norm_calls.keys() and node not in self.norm_calls[owners.pop()]:
                raise MorphError(
                    f"widening {list(self.producers)}: {self.describe(node)} also normalises "
                    "tensors that are not widened with the same BatchNorm"
                )
        for name, count in gate_calls.items():
            if count != 1:
                raise MorphError(
                    f"widening {list(self.producers)}: the gate {name!r} is called {count} times "
                    "in the exported graph; it must be called exactly once"
                )
        for node in self.gm.graph.nodes:
            if node.op != "get_attr":
                continue
            owner = str(node.target).rpartition(".")[0].removesuffix(".parametrizations.weight")
            if owner not in touched:
                continue
            if owner in self.norm_calls and str(node.target).endswith(".num_batches_tracked"):
                continue  # a BatchNorm's step counter (train mode), one number
            for user in node.users:
                if user in self.norm_calls.get(owner, ()) or user in self.frozen.get(owner, ()):
                    continue
                if user in self.derived.get(owner, ()):
                    continue  # computes the standardised weight the layer's call reads
                if _aten(user) == "_weight_norm" and all(
                    (self.layer_call(u) or ("",))[0] == owner for u in user.users
                ):
                    continue  # g and v, read by the weight norm the layer's calls read
                if (self.layer_call(user) or ("",))[0] != owner:
                    raise MorphError(
                        f"widening {list(self.producers)}: {self.describe(user)} reads "
                        f"{node.target!r} outside the layer's own call (a shared or tied "
                        "parameter?); its shape would change under it"
                    )

    def _pass(self, node: fx.Node, flow: Flow, zero: bool, live: bool) -> None:
        here = self.describe(node)
        self.flows[node] = replace(
            flow,
            zero_broken=flow.zero_broken or (None if zero else here),
            dead=flow.dead or (None if live else here),
        )

    def _step(self, node: fx.Node, widened: list[fx.Node], layer: tuple[str, str] | None) -> None:
        flow = self.flows[widened[0]]
        op = _aten(node)
        if op is not None and op.endswith("_") and op[:-1] in _UNARY:
            op = op[:-1]  # in place (relu_, hardtanh_): the same function
        if op is not None and op.endswith("_") and op[:-1] in _ADDS | _MULS:
            op = op[:-1] if _sole_use(node) else op  # `x += y` where only the sum is used on
        if node.op == "output":
            raise self.fail(node, "receives widened channels: the output would change shape")
        if op in _NO_OUTPUT:
            return
        if layer is not None:
            self._consume(node, layer, widened, flow)
            return
        if op in _ADDS:
            self._add(node, op)
            return
        if op in _MULS:
            self._mul(node, op)
            return
        if flow.layout == SPATIAL and op in ("cat", "chunk", "split", "split_with_sizes", "unbind"):
            raise self.fail(node, f"{_SPATIAL_ONLY}; not through aten.{op}")
        if op == "cat":
            self._cat(node)
            return
        if op in ("chunk", "split", "split_with_sizes", "unbind") and node.args[0] is widened[0]:
            self._chunk(node, op, flow)
            return
        if op == "glu" and node.args[0] is widened[0] and len(widened) == 1:
            self._glu(node, flow)
            return
        if op in _BATCH_NORMS and node.args[0] is widened[0] and len(widened) == 1:
            self._batch_norm(node, flow)
            return
        if op in _GROUP_NORMS and node.args[0] is widened[0] and len(widened) == 1:
            self._group_norm(node, flow)
            return
        if op in _NORMS:
            raise self.fail(node, "normalises over the widened channels")
        if op in _ATTENTION:
            raise self.fail(node, "attends over the widened channels")
        if not node.args or node.args[0] is not widened[0] or len(widened) > 1:
            raise self.fail(node, "takes the widened tensor as a non-data argument")
        if op in _UNARY:
            self._pass(node, flow, *_UNARY[op])
        elif op in _POOLS | _PADS:
            self._spatial_op(node, op, flow)
        elif op == "pow":
            exponent = _arg(node, 1, "exponent", None)
            if not isinstance(exponent, (int, float)):
                raise self.fail(node, "raises the widened channels to a tensor power")
            self._pass(node, flow, exponent > 0, exponent == 1)
        elif op in _RESHAPES | _AXIS_OPS | _REDUCTIONS | {"transpose", "permute", "index"}:
            self._layout(node, op, flow)
        else:
            raise self.fail(node, "consumes widened channels and cannot be updated by widen")

    def _batch_norm(self, node: fx.Node, flow: Flow) -> None:
        """A BatchNorm module's call on the channels at axis 1: it gets the new channels
        (running mean 0, var 1, weight 1, bias 0: a zero channel stays zero)."""
        stats = [a for a in node.args[1:5] if isinstance(a, fx.Node) and a.op == "get_attr"]
        owners = {str(a.target).rpartition(".")[0] for a in stats}
        module = self.modules.get(next(iter(owners))) if len(owners) == 1 else None
        if not isinstance(module, nn.modules.batchnorm._BatchNorm):
            raise self.fail(node, "normalises the widened channels with statistics of no module")
        if flow.layout != SPATIAL and not (flow.layout == LAST and len(_shape(node) or ()) == 2):
            raise self.fail(node, "is a BatchNorm reading channels that are not at axis 1")
        if module.num_features != flow.parent_channels:
            raise self.fail(
                node,
                f"normalises {module.num_features} channels but the widened tensor has "
                f"{flow.parent_channels} in the parent",
            )
        name = next(iter(owners))
        self.norm_calls.setdefault(name, set()).add(node)
        self.plan.uses.append(Use(name, "batch_norm", flow))
        self._pass(node, flow, True, True)

    def _frozen_batch_norm(self, node: fx.Node, name: str, widened: list[fx.Node]) -> None:
        """The ops of a frozen BatchNorm module ``name`` (x·scale + shift per channel, from
        its buffers), entered at ``node``: its one data input is the widened tensor at axis 1,
        its one output goes on with the new channels (weight 1, bias 0, mean 0, var 1: a zero
        channel stays zero)."""
        inside = [n for n in self.gm.graph.nodes if node_module(n) == name]
        members = set(inside)
        inputs = {
            a for n in inside for a in n.all_input_nodes if a not in members and a.op != "get_attr"
        }
        outputs = [n for n in inside if any(u not in members for u in n.users)]
        module = self.modules[name]
        flow = self.flows[widened[0]]
        if inputs != {widened[0]} or len(outputs) != 1:
            raise self.fail(node, "is a frozen BatchNorm not called once on the widened tensor")
        if flow.layout != SPATIAL:
            raise self.fail(node, "is a frozen BatchNorm reading channels that are not at axis 1")
        if module.weight.numel() != flow.parent_channels:
            raise self.fail(
                node,
                f"normalises {module.weight.numel()} channels but the widened tensor has "
                f"{flow.parent_channels} in the parent",
            )
        self.frozen[name] = inside
        self.plan.uses.append(Use(name, "frozen_batch_norm", flow))
        self._pass(outputs[0], flow, True, True)

    def _group_norm(self, node: fx.Node, flow: Flow) -> None:
        """A GroupNorm module's call with one group per channel (axis 1): per channel, so it
        gets the new channels in groups of their own (weight 1, bias 0: a zero channel stays
        zero); any other grouping normalises over the widened channels."""
        params = [a for a in node.args[2:4] if isinstance(a, fx.Node) and a.op == "get_attr"]
        owners = {str(a.target).rpartition(".")[0] for a in params}
        module = self.modules.get(next(iter(owners))) if len(owners) == 1 else None
        if not isinstance(module, nn.GroupNorm) or flow.layout != SPATIAL:
            raise self.fail(node, "normalises over the widened channels")
        if not module.num_groups == module.num_channels == flow.parent_channels:
            raise self.fail(
                node,
                f"normalises over the widened channels ({module.num_groups} groups of "
                f"{module.num_channels} channels, not one group per channel)",
            )
        name = next(iter(owners))
        self.norm_calls.setdefault(name, set()).add(node)
        self.plan.uses.append(Use(name, "group_norm", flow))
        self._pass(node, flow, True, True)

    def _spatial_op(self, node: fx.Node, op: str, flow: Flow) -> None:
        """Pooling, resizing and padding of the spatial axes of an (N, C, *S) tensor: channel
        by channel (a constant pad by a non-zero value makes a zero channel non-zero)."""
        if flow.layout != SPATIAL:
            raise self.fail(node, "pools or pads a tensor whose widened channels are not at axis 1")
        if op in _PADS:
            pad = _arg(node, 1, "pad", ())
            if not isinstance(pad, (list, tuple)) or len(pad) // 2 > (flow.ndim or 0) - 2:
                raise self.fail(node, f"pads axes {pad!r}, which may include the channel axis")
            value = _arg(node, 3 if op == "pad" else 2, "value", 0.0)
            self._pass(node, flow, value in (0, None), True)
            return
        self._pass(node, flow, True, True)

    def _consume(
        self, node: fx.Node, layer: tuple[str, str], widened: list[fx.Node], flow: Flow
    ) -> None:
        name, kind = layer
        data = node.args[_LAYER_CALLS[_aten(node)][1]]
        if widened != [data]:
            raise self.fail(node, "takes the widened tensor as a non-data argument")
        if kind == "conv":
            self._conv(node, name, flow)
            return
        if flow.layout == SPATIAL:
            raise self.fail(
                node,
                "is a Linear layer reading a tensor whose widened channels are "
                "on axis 1 (N, C, …), not the last axis",
            )
        in_features = as_matrix(self.modules[name]).shape[1]
        if in_features != flow.parent_channels:
            raise self.fail(
                node,
                f"expects {in_features} inputs but the widened tensor has "
                f"{flow.parent_channels} channels in the parent",
            )
        self.plan.uses.append(Use(name, "linear", flow))

    def _conv(self, node: fx.Node, name: str, flow: Flow) -> None:
        """A convolution reading the widened channels at axis 1: new input columns, or for a
        grouped (depthwise) one whole new groups whose outputs go on as new channels (its new
        filters read only new channels and have zero bias: zero stays zero)."""
        m = self.modules[name]
        if flow.layout != SPATIAL:
            raise self.fail(node, "is a convolution reading the last axis of a Linear output")
        if flow.ndim != m.weight.dim():
            raise self.fail(
                node,
                f"is a convolution of rank {m.weight.dim()} reading a tensor of rank {flow.ndim}",
            )
        if m.in_channels != flow.parent_channels:
            raise self.fail(
                node,
                f"expects {m.in_channels} input channels but the widened tensor has "
                f"{flow.parent_channels} channels in the parent",
            )
        if m.groups == 1:
            self.plan.uses.append(Use(name, "conv", flow))
            return
        per_in, per_out = m.in_channels // m.groups, m.out_channels // m.groups
        out = grouped_outputs(flow.src, per_in, per_out)
        if out is None:
            whole = (flow.src.size - flow.parent_channels) % per_in == 0
            if whole and np.array_equal(flow.src, self.src):
                raise BlockRequest(per_in, whole_groups=True)
            raise self.fail(
                node,
                f"is a grouped convolution (groups={m.groups}, {per_in} input channels per "
                f"group): new input channels need whole new groups, i.e. a width of "
                f"{flow.parent_channels} + a multiple of {per_in}, reaching it with the "
                "parent's groups intact",
            )
        self.plan.uses.append(Use(name, "grouped", flow))
        self._pass(node, replace(flow, src=out), True, True)

    def _placed(self, node: fx.Node, flow: Flow, axis: int, rank: int) -> Flow:
        """``flow`` with its channels at ``axis`` of a tensor of ``rank``: the last axis, or
        axis 1 of an (N, C, *S) tensor."""
        if axis == rank - 1:
            return replace(flow, layout=LAST, ndim=None)
        if axis == 1:
            return replace(flow, layout=SPATIAL, ndim=rank)
        raise self.fail(
            node,
            f"moves the widened channels off the last axis (to axis {axis} of {rank}); widen "
            "follows them as the last axis or at axis 1 (N, C, …)",
        )

    def _spatial(self, node: fx.Node, op: str, flow: Flow, before: tuple, after: tuple) -> Flow:
        """Reshapes, axis ops and reductions of a tensor whose channels are at axis 1."""
        rank = len(before)
        if op in _RESHAPES:
            if before[:2] != after[:2]:
                raise self.fail(
                    node,
                    f"reshapes the widened tensor {before} to {after}, which does not keep its "
                    "batch and channel axes (N, C, …)",
                )
            return self._placed(node, flow, 1, len(after))
        if op in _AXIS_OPS:
            dim = _arg(node, 1, "dim", 0)
            if not isinstance(dim, int) or dim % rank <= 1:
                raise self.fail(node, "selects or slices the batch or channel axis")
            return self._placed(node, flow, 1, len(after))
        if op in _REDUCTIONS:
            dims = _arg(node, 1, "dim", None)
            dims = [dims] if isinstance(dims, int) else dims
            if not dims or any(not isinstance(d, int) or d % rank <= 1 for d in dims):
                raise self.fail(node, "reduces over the batch or channel axis")
            return self._placed(node, flow, 1, len(after))
        raise self.fail(node, _SPATIAL_ONLY)

    def _moved(self, node: fx.Node, op: str, flow: Flow, rank: int) -> Flow:
        """transpose/permute: the channel axis goes where the permutation puts it."""
        axis = 1 if flow.layout == SPATIAL else rank - 1
        if op == "transpose":
            d0, d1 = _arg(node, 1, "dim0", None), _arg(node, 2, "dim1", None)
            if not isinstance(d0, int) or not isinstance(d1, int):
                raise self.fail(node, "transposes computed axes")
            dims = list(range(rank))
            dims[d0 % rank], dims[d1 % rank] = dims[d1 % rank], dims[d0 % rank]
        else:
            dims = list(_arg(node, 1, "dims", ()))
            if not all(isinstance(d, int) for d in dims) or len(dims) != rank:
                raise self.fail(node, f"permutes with dims {dims!r}")
            dims = [d % rank for d in dims]
        return self._placed(node, flow, dims.index(axis), rank)

    def _last_axis(self, node: fx.Node, dim: object) -> bool:
        """Whether axis ``dim`` of ``node``'s (widened) input is its last one."""
        rank = len(_shape(node.args[0]) or ())
        if not isinstance(dim, int) or rank == 0:
            raise self.fail(node, f"acts on axis {dim!r} of a tensor of unknown rank")
        return dim % rank == rank - 1

    def _layout(self, node: fx.Node, op: str, flow: Flow) -> None:
        """Reshapes, axis ops and reductions: channel-wise when the last axis stays put."""
        before, after = _shape(node.args[0]), _shape(node)
        if before is None or after is None:
            raise self.fail(node, "has no recorded shape")
        if op in ("transpose", "permute"):
            self._pass(node, self._moved(node, op, flow, len(before)), True, True)
            return
        if flow.layout == SPATIAL:
            self._pass(node, self._spatial(node, op, flow, before, after), True, True)
            return
        if op in _RESHAPES:
            keeps = before[-1:] == after[-1:] == (flow.parent_channels,)
            if not keeps:
                raise self.fail(
                    node,
                    f"reshapes the widened tensor {before} to {after}, which does not keep the "
                    f"{flow.parent_channels} channels as the last axis",
                )
        elif op in _AXIS_OPS and self._last_axis(node, _arg(node, 1, "dim", 0)):
            raise self.fail(node, "selects or slices the widened channels")
        elif op in _REDUCTIONS:
            dims = _arg(node, 1, "dim", None)
            dims = [dims] if isinstance(dims, int) else dims
            if not dims or any(self._last_axis(node, d) for d in dims):
                raise self.fail(node, "reduces over the widened channels")
        elif op == "index" and len(_arg(node, 1, "indices", ())) >= len(before):
            raise self.fail(node, "indexes the widened channels")
        self._pass(node, flow, True, True)

    def _chunk(self, node: fx.Node, op: str, flow: Flow) -> None:
        """chunk/split: parts of the last axis grow alike; parts of another axis keep the
        map."""
        dim = _arg(node, 1 if op == "unbind" else 2, "dim", 0)
        taken = [u.args[1] for u in node.users if u.target is operator.getitem]
        if not self._last_axis(node, dim):
            self.pieces[node] = [flow] * max(
                (i + 1 for i in taken if isinstance(i, int)), default=0
            )
            return
        if op != "chunk":
            raise self.fail(
                node,
                "splits the widened channels into parts of sizes fixed in the graph, which "
                "would no longer add up to the widened axis; chunk(k, dim) grows every part",
            )
        parts = _arg(node, 1, "chunks", None)
        if not isinstance(parts, int):
            raise self.fail(node, "chunks into a computed number of parts")
        self.pieces[node] = chunk_flow(flow, parts, self.src, lambda why: self.fail(node, why))

    def _glu(self, node: fx.Node, flow: Flow) -> None:
        """GLU: along the channel axis (axis 1 of an (N, C, …) tensor, or the last) the
        halves grow alike (:func:`~.consumers.glu_flow`); along another axis it is a
        channel-wise product."""
        dim = _arg(node, 1, "dim", -1)
        rank = len(_shape(node.args[0]) or ())
        if not isinstance(dim, int) or rank == 0:
            raise self.fail(node, f"gates along axis {dim!r} of a tensor of unknown rank")
        channel = dim % rank == (1 if flow.layout == SPATIAL else rank - 1)
        if not channel:
            self._pass(node, flow, True, True)
            return
        self._pass(node, glu_flow(flow, self.src, lambda why: self.fail(node, why)), True, True)

    def _broadcast(self, operand: object, flow: Flow) -> bool:
        """A Python number, or a tensor of size 1 on the channel axis (the last one, or axis
        1 of an (N, C, *S) tensor, counted from the right): the same for every channel."""
        if isinstance(operand, (int, float)):
            return True
        shape = _shape(operand)
        if shape is None:
            return False
        if flow.layout == SPATIAL:
            at = len(shape) - (flow.ndim - 1)
            return at < 0 or shape[at] == 1
        return not shape or shape[-1] == 1

    def _operands(self, node: fx.Node) -> list[object]:
        return [_arg(node, 0, "self", None), _arg(node, 1, "other", None)]

    def _merged(self, node: fx.Node, tensors: list[fx.Node], what: str) -> Flow:
        flows = [self.flows[t] for t in tensors]
        if any((f.layout, f.ndim) != (flows[0].layout, flows[0].ndim) for f in flows):
            raise self.fail(node, f"{what} widened tensors with their channels on other axes")
        if any(not np.array_equal(f.src, flows[0].src) for f in flows):
            raise self.fail(node, f"{what} widened tensors whose channels do not line up")
        merged = flows[0]
        for f in flows[1:]:
            merged = replace(
                merged, zero_broken=merged.zero_broken or f.zero_broken, dead=merged.dead or f.dead
            )
        return merged

    def _add(self, node: fx.Node, op: str) -> None:
        operands = self._operands(node)
        widened = [a for a in operands if a in self.flows]
        others = [a for a in operands if a not in self.flows]
        flow = self.flows[widened[0]]
        if any(not self._broadcast(a, flow) for a in others):
            partners = [o for a in others if isinstance(a, fx.Node) for o in self.origins(a)]
            refusal = self.fail(
                node,
                f"adds the widened channels to a tensor from {', '.join(partners) or 'elsewhere'}"
                ", which is not widened: widen every producer of the sum together (at=[...]); "
                "a transformer's residual stream grows with grow_width",
            )
            raise PartnerRequest(str(refusal), layer_origins(partners))
        zero = all(isinstance(a, (int, float)) and a == 0 for a in others)
        self._pass(node, self._merged(node, widened, "adds"), zero, True)

    def _mul(self, node: fx.Node, op: str) -> None:
        operands = self._operands(node)
        if op == "div" and operands[1] in self.flows:
            raise self.fail(node, "divides by a widened tensor")
        widened = [a for a in operands if a in self.flows]
        flow = self._merged(node, widened, "multiplies")
        zero_factors = sum(self.flows[a].zero_broken is None for a in widened)
        live = True
        for other in [a for a in operands if a not in self.flows]:
            if self._broadcast(other, flow):
                live = live and not (isinstance(other, (int, float)) and other == 0)
                continue
            find = self._spatial_gate if flow.layout == SPATIAL else self._gate
            gate, gate_zero = find(node, other, flow)
            self.plan.gates[gate] = flow.src
            zero_factors += gate_zero
        # a product of two factors that are both zero on the new channels has zero gradient
        dead = flow.dead or (self.describe(node) if zero_factors > 1 else None)
        zero = zero_factors > 0
        self.flows[node] = replace(
            flow,
            zero_broken=None if zero else flow.zero_broken,
            dead=dead or (None if live else self.describe(node)),
        )

    def _spatial_gate(self, node: fx.Node, start: fx.Node, flow: Flow) -> tuple[str, bool]:
        """The convolution of ``flow.parent_channels`` outputs computing ``start`` through
        single-use element-wise ops (a squeeze-and-excitation gate: pool → conv → act → conv
        → sigmoid), and whether its zeroed new rows give zero there."""
        path, zero = start, True
        while isinstance(path, fx.Node) and len(path.users) == 1:
            layer = self.layer_call(path)
            if layer is not None:
                name, kind = layer
                module = self.modules[name]
                if (
                    kind == "conv"
                    and module.out_channels == flow.parent_channels
                    and name not in self.producers
                    and name not in self.plan.gates
                ):
                    return name, zero
                break
            op = _aten(path)
            if op not in _UNARY:
                break
            zero = zero and _UNARY[op][0]
            path = path.args[0]
        raise self.fail(
            node,
            f"{_SPATIAL_ONLY}; not through a product with a tensor other than a gate that a "
            "convolution computes through element-wise ops (squeeze-and-excitation)",
        )

    def _gate(self, node: fx.Node, start: fx.Node, flow: Flow) -> tuple[str, bool]:
        """The Linear/Conv1D layer computing ``start`` through single-use element-wise ops
        and reshapes (SwiGLU's gate), and whether its zeroed new rows give zero there."""
        path, zero = start, True
        while isinstance(path, fx.Node) and len(path.users) == 1:
            layer = self.layer_call(path)
            if layer is not None:
                name, kind = layer
                rows = as_matrix(self.modules[name]).shape[0] if kind != "conv" else None
                if (
                    rows == flow.parent_channels
                    and name not in self.producers
                    and name not in self.plan.gates
                    and (_shape(path) or (0,))[-1] == flow.parent_channels
                ):
                    return name, zero
                break
            op = _aten(path)
            if op in _UNARY:
                zero = zero and _UNARY[op][0]
            elif op not in _RESHAPES or (_shape(path) or (0,))[-1:] != (flow.parent_channels,):
                break
            path = path.args[0]
        partners = ", ".join(self.origins(start)) or "elsewhere"
        raise self.fail(
            node,
            f"multiplies the widened channels with a tensor from {partners}, which is not "
            "widened and not computed by a Linear/Conv1D layer through element-wise ops (a "
            "gate such as SwiGLU's)",
        )

    def _cat(self, node: fx.Node) -> None:
        tensors = list(_arg(node, 0, "tensors", ()))
        widened = [t for t in tensors if t in self.flows]
        first = widened[0]
        rank = len(_shape(first) or ())
        dim = _arg(node, 1, "dim", 0)
        if not rank or not isinstance(dim, int):
            raise self.fail(node, "concatenates tensors of unknown rank")
        merged = self._merged(node, widened, "concatenates") if dim % rank != rank - 1 else None
        if merged is not None:
            if len(widened) != len(tensors):
                others = [o for t in tensors if t not in self.flows for o in self.origins(t)]
                raise self.fail(
                    node,
                    "concatenates widened and other tensors (from "
                    f"{', '.join(others) or 'elsewhere'}) along another axis",
                )
            self.flows[node] = merged
            return
        pieces, offset = [], 0
        for t in tensors:
            if t in self.flows:
                src = self.flows[t].src
                pieces.append(np.where(src >= 0, src + offset, -1))
                offset += self.flows[t].parent_channels
            else:
                count = (_shape(t) or (0,))[-1]
                pieces.append(np.arange(offset, offset + count))
                offset += count
        flow = self.flows[first]
        for t in widened[1:]:
            f = self.flows[t]
            flow = replace(
                flow, zero_broken=flow.zero_broken or f.zero_broken, dead=flow.dead or f.dead
            )
        self.flows[node] = replace(flow, src=np.concatenate(pieces))


def _ancestors(name: str | None) -> list[str]:
    """``name`` and its enclosing modules, innermost first ("a.b.c", "a.b", "a")."""
    if not name:
        return []
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(len(parts), 0, -1)]


def plan_exported_widening(
    model: nn.Module,
    producers: Sequence[str],
    src: np.ndarray,
    example_inputs: torch.Tensor | tuple[torch.Tensor, ...],
) -> WidthPlan:
    """Export ``model`` on ``example_inputs`` and find every module the widening of
    ``producers`` (all with channel map ``src``) touches. MorphError when the graph cannot be
    updated exactly."""
    items = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else example_inputs
    like = next((p for p in model.parameters() if p.is_floating_point()), None)
    if like is not None:
        items = tuple(t.to(like.dtype) if t.is_floating_point() else t for t in items)
    gm = export_graph(model, tuple(items))
    return _ExportedWalk(model, gm, producers, src).run()


class _NormOutputWalk(_ExportedWalk):
    """The walk from the output of a LayerNorm (the producer named): the readers of a
    normalised stream, such as a hierarchical stage's output."""

    def layer_call(self, node: fx.Node) -> tuple[str, str] | None:
        found = super().layer_call(node)
        if found is not None or _aten(node) != "layer_norm" or len(node.args) < 3:
            return found
        weight = node.args[2]  # layer_norm(input, normalized_shape, weight, bias, eps)
        if not isinstance(weight, fx.Node) or weight.op != "get_attr":
            return None
        owner, _, attr = str(weight.target).rpartition(".")
        return (owner, "norm") if attr == "weight" and owner in self.producers else None


def plan_norm_readers(
    model: nn.Module,
    norm: str,
    src: np.ndarray,
    example_inputs: torch.Tensor | tuple[torch.Tensor, ...],
) -> WidthPlan:
    """Export ``model`` and find every layer reading the output of the LayerNorm ``norm``
    (called once, with a weight), as if its channels were widened with map ``src``; MorphError
    where anything else reads them (a residual sum, another norm, the model's output)."""
    items = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else example_inputs
    like = next((p for p in model.parameters() if p.is_floating_point()), None)
    if like is not None:
        items = tuple(t.to(like.dtype) if t.is_floating_point() else t for t in items)
    gm = export_graph(model, tuple(items))
    return _NormOutputWalk(model, gm, (norm,), src).run()
