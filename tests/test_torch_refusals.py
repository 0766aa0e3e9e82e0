"""Layers the adapter does not understand are refused by name; the ones it handles stay exact.

Each test is one class of problem: a layer class that overrides forward, a parent that reads its
layer's parameters, hooks, parametrizations, shared or meta weights, padding that bounds the
input size, sizes beyond memory, BatchNorm after a Linear on token tensors. A refusal leaves the
parent's parameters, buffers, hooks and parametrizations untouched.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn.utils import parametrizations, parametrize  # noqa: E402
from torch_exactness import border_input, rel_dev  # noqa: E402

from netmorph_core._memory import ResourceLimitError  # noqa: E402
from netmorph_core.morph.graph import Module, conv_edge  # noqa: E402
from netmorph_core.torch import (  # noqa: E402
    MorphError,
    deepen,
    grow_ffn,
    grow_kernel,
    morph_module,
    morph_stacked,
    morph_subnet,
    widen,
)
from netmorph_core.torch.layer_reads import Chain  # noqa: E402
from netmorph_core.torch.samepad import DynamicSamePad, register_same_padding_conv  # noqa: E402
from netmorph_core.torch.support import check_editable  # noqa: E402
from netmorph_core.torch.surgery import ChannelLastBatchNorm  # noqa: E402
from netmorph_core.torch.weight_normed import is_weight_normed  # noqa: E402

F64_TOL = 1e-9


class StdConv2d(nn.Conv2d):
    """Weight-standardised conv (as timm's StdConv2d): the filter applied is (W − mean)/std."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = F.batch_norm(
            self.weight.reshape(1, self.out_channels, -1), None, None, training=True, eps=1e-6
        ).reshape_as(self.weight)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class Conv2dSame(nn.Conv2d):
    """TF-style dynamic "same" padding (as timm's Conv2dSame): out = ceil(in / stride)."""

    def __init__(self, c_in: int, c_out: int, k: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__(c_in, c_out, k, stride, padding=0, groups=groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for n, k, s, d in zip(x.shape[:1:-1], self.kernel_size[::-1], self.stride, self.dilation):
            total = max((math.ceil(n / s) - 1) * s + (k - 1) * d + 1 - n, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads))


class StdLinear(nn.Linear):
    """A Linear subclass that overrides only the function, e.g. a LoRA-style wrapper."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight + 0.1, self.bias)


class Conv3x3(nn.Conv2d):
    """A subclass that changes only the constructor: it computes nn.Conv2d's function."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(c_in, c_out, 3, padding=1)


class Net(nn.Module):
    def __init__(self, conv: nn.Module) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.conv = conv
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(torch.relu(self.stem(x)))))


class ReadsWeight(nn.Module):
    """A parent that reads its layer's weight directly instead of calling it."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.proj.weight, self.proj.bias)


class ReadsAttributes(nn.Module):
    """Calls its conv but also reads its attributes (Whisper's ``self.conv1.stride[0]``; from
    an ancestor further up, DeiT's ``self.embeddings.patch_embeddings.projection.weight``)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.inner = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.inner(self.conv(x.to(self.inner[0].weight.dtype)))
        return y[..., :: self.conv.stride[0]]


class LooksUpItsLayer(nn.Module):
    """Reads its conv's stride through ``_modules``, which no static check sees."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)[..., :: self._modules["conv"].stride[0]]


class NeverCalls(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4)
        self.unused = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x, x, x, need_weights=False)[0]


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)
        self.b.weight = self.a.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.a(x)))


def snapshot(model: nn.Module) -> tuple:
    """Everything a morph must not touch: state, hook and parametrization dicts, flags."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    hooks = [
        {
            a: dict(getattr(m, a))
            for a in vars(m)
            if a.endswith("hooks") and isinstance(getattr(m, a), dict)
        }
        for m in model.modules()
    ]
    params = [
        {n: p._backward_hooks for n, p in m.named_parameters(recurse=False)}
        for m in model.modules()
    ]
    return state, hooks, params, repr(model), [type(m) for m in model.modules()]


def assert_unchanged(model: nn.Module, snap: tuple) -> None:
    state, hooks, params, text, types = snap
    now = model.state_dict()
    assert now.keys() == state.keys()
    assert all(torch.equal(now[k], v) for k, v in state.items())
    after = snapshot(model)
    assert after[1] == hooks and after[2] == params
    assert after[3] == text and after[4] == types


def refused(model: nn.Module, call: Callable[[nn.Module], object], exc: type, match: str) -> None:
    snap = snapshot(model)
    with pytest.raises(exc, match=match) as info:
        call(model)
    assert type(info.value) is exc
    assert_unchanged(model, snap)


SPEC = Module([conv_edge("a", "s", "m", 3), conv_edge("b", "m", "t", 1)], channels={"m": 8})
OPERATIONS: dict[str, Callable[..., object]] = {
    "deepen": lambda m, at, **kw: deepen(m, at, seed=0, **kw),
    "grow_kernel": lambda m, at, **kw: grow_kernel(m, at, 5, **kw),
    "morph_subnet": lambda m, at, **kw: morph_subnet(m, at, [(6, 3), (None, 1)], seed=0, **kw),
    "morph_stacked": lambda m, at, **kw: morph_stacked(
        m, at, [[(None, 3)], [(None, 3)]], seed=0, **kw
    ),
    "morph_module": lambda m, at, **kw: morph_module(m, at, SPEC, seed=0, **kw),
    "widen producer": lambda m, at, **kw: widen(m, at, 6, seed=0, **kw),
    "widen consumer": lambda m, at, **kw: widen(m, "stem", 6, seed=0, **kw),
}


@pytest.mark.parametrize("cls", [StdConv2d, Conv2dSame], ids=lambda c: c.__name__)
@pytest.mark.parametrize("operation", OPERATIONS)
def test_subclass_overriding_forward_is_refused_by_name(cls: type, operation: str) -> None:
    torch.manual_seed(0)
    conv = cls(4, 4, 3) if cls is Conv2dSame else cls(4, 4, 3, padding=1)
    model = Net(conv).double()
    match = (
        rf"'conv' is {cls.__qualname__} \(from [\w.]+\), a subclass of nn\.Conv2d that overrides"
    )
    if operation == "widen consumer":  # torch.fx traces into the subclass and meets its code
        match = r"(widening \['stem'\]: call_function 'conv2d'|torch\.fx cannot trace Net)"
    refused(model, lambda m: OPERATIONS[operation](m, "conv"), MorphError, match)


def test_timm_linear_computes_nn_linear_and_is_morphed_exactly() -> None:
    """timm's Linear overrides forward only to cast weights under TorchScript: it is shown to
    compute x·Wᵀ + b, so it is morphed, and widen's graph keeps it as one layer."""
    from thirdparty import import_timm

    try:
        timm = import_timm()
    except ImportError:
        pytest.skip("timm is not installed")
    torch.manual_seed(0)
    model = nn.Sequential(timm.layers.Linear(4, 6), nn.Tanh(), timm.layers.Linear(6, 3)).double()
    x = torch.randn(5, 4, dtype=torch.float64)
    for grow in (
        lambda m: deepen(m, "0", seed=0, probe=x),
        lambda m: morph_subnet(m, "2", [(7, None), (None, None)], seed=0, probe=x),
        lambda m: widen(m, "0", 9, seed=0, probe=x),
    ):
        child, _ = grow(model)
        assert rel_dev(model, child, x) <= F64_TOL


def test_linear_subclass_overriding_forward_is_refused() -> None:
    model = nn.Sequential(StdLinear(4, 4), nn.Tanh()).double()
    refused(model, lambda m: deepen(m, "0"), MorphError, "StdLinear.*overrides forward")


def test_subclass_with_its_own_constructor_only_is_morphed_exactly() -> None:
    torch.manual_seed(1)
    model = Net(Conv3x3(4, 4)).double()
    x = border_input((2, 3, 7, 6))
    for op in (deepen, grow_kernel):
        child, report = op(model, "conv", *(() if op is deepen else (5,)), probe=x)
        assert rel_dev(model, child, x) <= F64_TOL and report.rel_dev_f64 <= F64_TOL


def test_multihead_attention_projection_is_refused() -> None:
    model = Attention().double()
    match = r"belongs to 'attn' \(MultiheadAttention\)"
    refused(model, lambda m: deepen(m, "attn.out_proj"), MorphError, match)
    refused(model, lambda m: widen(m, "attn.out_proj", 12), MorphError, match)
    layer = nn.TransformerEncoderLayer(8, 2, 16, batch_first=True).double()
    refused(layer, lambda m: deepen(m, "linear1"), MorphError, "TransformerEncoderLayer")


def test_parent_reading_the_weight_directly_is_refused() -> None:
    refused(
        ReadsWeight(), lambda m: deepen(m, "proj"), MorphError, r"reads proj\.bias, proj\.weight"
    )
    refused(NeverCalls(), lambda m: deepen(m, "unused"), MorphError, "never calls it")
    nested = nn.Sequential(ReadsWeight(), nn.Tanh())
    refused(nested, lambda m: deepen(m, "0.proj"), MorphError, r"'0' \(ReadsWeight\)")


@pytest.mark.parametrize("operation", ["morph_stacked", "morph_module"])
def test_ancestor_reading_a_replaced_layers_attributes_is_refused(operation: str) -> None:
    """The replacing module would lack the attribute (parallel branches have no stride): refused
    before any work, naming it; grow_kernel keeps the layer's class and attributes and stays
    exact. (deepen and morph_subnet put a Chain answering the stride in its place:
    tests/test_torch_chain_stride.py.)"""
    model = ReadsAttributes().double()
    match = r"'conv': the model \(ReadsAttributes\) reads conv\.stride"
    refused(model, lambda m: OPERATIONS[operation](m, "conv"), MorphError, match)
    x = torch.randn(2, 2, 5, 5, dtype=torch.float64)
    child, _ = grow_kernel(model, "conv", 5)
    assert rel_dev(model, child, x) <= F64_TOL


@pytest.mark.parametrize("operation", ["morph_stacked", "morph_module"])
def test_weight_dtype_read_of_a_layer_replaced_by_branches_is_refused(operation: str) -> None:
    """Parallel branches and module graphs have no first layer to answer ``weight.dtype``."""
    model = ReadsAttributes().double()
    match = r"'inner\.0': the model \(ReadsAttributes\) reads inner\.0\.weight"
    refused(model, lambda m: OPERATIONS[operation](m, "inner.0"), MorphError, match)


@pytest.mark.parametrize("operation", ["deepen", "morph_subnet"])
def test_ancestor_reading_only_the_weight_dtype_gets_a_chain(operation: str) -> None:
    """``self.inner[0].weight.dtype`` is the one read: the layers that replace ``inner.0`` come
    as a Chain whose ``weight`` is its first layer's, so the read holds and the child is
    exact."""
    model = ReadsAttributes().double()
    child, _ = OPERATIONS[operation](model, "inner.0")
    assert type(child.inner[0]) is Chain
    assert child.inner[0].weight is child.inner[0][0].weight
    assert child.inner[0].weight.dtype == torch.float64
    x = torch.randn(2, 2, 5, 5, dtype=torch.float64)
    assert rel_dev(model, child, x) <= F64_TOL


def test_child_failing_on_the_probe_is_refused_by_name() -> None:
    """A use of the layer the checks miss: the child's forward raises on the probe the parent
    runs on; refused with the operation, the layer and the error, the parent unchanged."""
    match = r"deepen at \['conv'\]: the child fails on the probe .*AttributeError"
    refused(
        LooksUpItsLayer().double(),
        lambda m: deepen(m, "conv", seed=0, input_shape=(1, 2, 5, 5), tol=None),
        MorphError,
        match,
    )


HOOKS: dict[str, Callable[[nn.Module], object]] = {
    "forward hook": lambda m: m.register_forward_hook(lambda mod, i, o: o * 2),
    "forward pre-hook": lambda m: m.register_forward_pre_hook(lambda mod, i: None),
    "backward hook": lambda m: m.register_full_backward_hook(lambda mod, gi, go: None),
    "state_dict hook": lambda m: m._register_state_dict_hook(lambda *a: None),
    "gradient hook": lambda m: m.weight.register_hook(lambda g: g),
}


@pytest.mark.parametrize("kind", HOOKS)
def test_hooks_on_the_morphed_layer_are_refused(kind: str) -> None:
    torch.manual_seed(2)
    model = Net(nn.Conv2d(4, 4, 3, padding=1)).double()
    HOOKS[kind](model.conv)
    for operation in ("deepen", "grow_kernel", "widen producer", "widen consumer"):
        call = OPERATIONS[operation]
        refused(model, lambda m, call=call: call(m, "conv"), MorphError, rf"'conv' .*{kind}")


def test_hooks_and_parametrizations_elsewhere_stay_on_the_child_and_are_exact() -> None:
    torch.manual_seed(3)
    model = Net(nn.Conv2d(4, 4, 3, padding=1)).double()
    model.stem.register_forward_hook(lambda mod, i, o: 3 * o + 1)
    model.stem.register_forward_pre_hook(lambda mod, i: (i[0].flip(-1),))
    parametrizations.weight_norm(model.stem)
    x = border_input((2, 3, 6, 7))
    for op, args in ((deepen, ()), (grow_kernel, (5,)), (widen, (7,))):
        child, report = (
            op(model, "conv", *args, probe=x, seed=0)
            if op is not grow_kernel
            else op(model, "conv", *args, probe=x)
        )
        assert len(child.stem._forward_hooks) == 1 and len(child.stem._forward_pre_hooks) == 1
        assert parametrize.is_parametrized(child.stem, "weight")
        assert rel_dev(model, child, x) <= F64_TOL and report.rel_dev_f64 <= F64_TOL


@pytest.mark.parametrize(
    ("apply", "match"),
    [
        (lambda c: parametrizations.spectral_norm(c), "_SpectralNorm"),
        (lambda c: parametrize.register_parametrization(c, "bias", nn.Identity()), "'bias'"),
        (lambda c: torch.nn.utils.weight_norm(c), "forward pre-hook WeightNorm"),
        (lambda c: torch.nn.utils.spectral_norm(c), "forward pre-hook SpectralNorm"),
    ],
    ids=["spectral_norm", "custom", "old weight_norm", "old spectral_norm"],
)
@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_parametrized_layers_are_refused(apply: Callable, match: str) -> None:
    torch.manual_seed(4)
    model = Net(nn.Conv2d(4, 4, 3, padding=1)).double()
    apply(model.conv)
    for operation in ("deepen", "grow_kernel", "morph_module", "widen consumer"):
        call = OPERATIONS[operation]
        refused(model, lambda m, call=call: call(m, "conv"), MorphError, match)


@pytest.mark.parametrize("dim", [0, 2])
@pytest.mark.parametrize("operation", ["deepen", "morph_subnet", "morph_stacked", "morph_module"])
def test_weight_normed_layer_is_replaced_by_its_weight(operation: str, dim: int) -> None:
    """W = g·v/‖v‖ is a function of (g, v) alone: the operations that replace the layer keep W
    in plain layers; the parent keeps its parametrization (its class is shared with copies)."""
    torch.manual_seed(5)
    model = Net(nn.Conv2d(4, 4, 3, padding=1)).double()
    parametrizations.weight_norm(model.conv, dim=dim)
    before = snapshot(model)
    x = border_input((2, 3, 6, 7))
    call = {
        "deepen": lambda: deepen(model, "conv", probe=x, seed=0),
        "morph_subnet": lambda: morph_subnet(model, "conv", [(6, 3), (None, 1)], probe=x, seed=0),
        "morph_stacked": lambda: morph_stacked(
            model, "conv", [[(None, 3)], [(None, 3)]], probe=x, seed=0
        ),
        "morph_module": lambda: morph_module(model, "conv", SPEC, probe=x, seed=0),
    }[operation]
    child, report = call()
    assert rel_dev(model, child, x) <= F64_TOL and report.rel_dev_f64 <= F64_TOL
    assert not any(parametrize.is_parametrized(m) for m in child.conv.modules())
    assert parametrize.is_parametrized(model.conv, "weight")
    assert_unchanged(model, before)
    with torch.no_grad():
        model(x)  # the parent still runs: its parametrized class keeps its weight property


def test_weight_normed_layer_keeps_its_norm_where_it_stays() -> None:
    """grow_kernel and widen keep the layer and its weight norm (tests/test_torch_weight_normed.py
    has the cases); an operation that would set W itself still refuses it by name."""
    torch.manual_seed(5)
    model = Net(nn.Conv2d(4, 4, 3, padding=1)).double()
    parametrizations.weight_norm(model.conv)
    before = snapshot(model)
    x = border_input((2, 3, 6, 7))
    for operation in ("grow_kernel", "widen producer", "widen consumer"):
        child, report = OPERATIONS[operation](model, "conv", probe=x)
        assert rel_dev(model, child, x) <= F64_TOL and report.rel_dev_f64 <= F64_TOL
        assert is_weight_normed(child.conv)
    assert_unchanged(model, before)
    with pytest.raises(MorphError, match=r"a weight-normed layer .*widen and grow_kernel keep"):
        check_editable(model, ["conv"])


def test_shared_weights_and_modules_are_refused() -> None:
    """widen would change a shared module's outputs at every call (tests/
    test_torch_shared_modules.py: the operations that keep its function replace it under
    each name)."""
    refused(Tied(), lambda m: widen(m, "a", 6), MorphError, "b.weight")
    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, nn.Tanh(), shared)
    refused(
        model,
        lambda m: widen(m, "0", 6),
        MorphError,
        r"registered under several names \['0', '2'\]",
    )


@pytest.mark.filterwarnings("ignore:Complex modules are a new feature")
def test_meta_device_and_non_float_weights_are_refused() -> None:
    with torch.device("meta"):
        meta = Net(nn.Conv2d(4, 4, 3, padding=1))
    with pytest.raises(ValueError, match="meta device"):
        deepen(meta, "conv")
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2))
    model[2].weight = nn.Parameter(torch.ones(2, 4, dtype=torch.int64), requires_grad=False)
    refused(model, lambda m: deepen(m, "2"), TypeError, r"'2': 'weight' has dtype torch\.int64")
    refused(model.to(torch.complex64), lambda m: deepen(m, "0"), TypeError, "complex64")


@pytest.mark.parametrize(
    ("mode", "dilation", "size"), [("reflect", 2, 3), ("circular", 2, 2), ("reflect", 1, 2)]
)
def test_bounded_padding_child_accepts_every_input_the_parent_accepts(
    mode: str, dilation: int, size: int
) -> None:
    """Reflect needs pad < n and circular pad ≤ n: grown pads would reject the smallest inputs
    the parent accepts; the child keeps the parent's padding in its mode, the growth in zeros."""
    torch.manual_seed(5)
    parent = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=dilation, dilation=dilation, padding_mode=mode), nn.ReLU()
    ).double()
    small = border_input((2, 3, size, size + 1))
    big = border_input((2, 3, 9, 8))
    spec = Module([conv_edge("a", "s", "m", 3), conv_edge("b", "m", "t", 3)], channels={"m": 12})
    for call in (
        lambda: deepen(parent, "0", width=12, kernel_size=(3, 3), probe=big, seed=0),
        lambda: grow_kernel(parent, "0", 7, probe=big),
        lambda: morph_module(parent, "0", spec, probe=big, seed=0),
    ):
        child, _ = call()
        assert rel_dev(parent, child, small) <= F64_TOL
        assert rel_dev(parent, child, big) <= F64_TOL


@pytest.mark.parametrize(
    "call",
    [
        lambda m: deepen(m, "0", width=10**9),
        lambda m: morph_subnet(m, "0", [(10**9, 3), (None, 1)]),
        lambda m: morph_stacked(m, "0", [[(None, 3)], [(10**9, 3), (None, 1)]]),
        lambda m: grow_kernel(m, "0", 4001),
        lambda m: widen(m, "0", 10**9),
    ],
    ids=["deepen", "subnet", "stacked", "grow_kernel", "widen"],
)
def test_sizes_beyond_memory_are_refused_before_allocating(
    call: Callable, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NETMORPH_MAX_BYTES", str(1 << 30))
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1))
    refused(
        model,
        call,
        ResourceLimitError,
        r"(width=1000000000|kernel_size=\(4001, 4001\)|10\*\*9|1000000000)",
    )


def test_batch_norm_after_linear_acts_on_the_last_axis() -> None:
    torch.manual_seed(6)
    parent = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    x = torch.randn(2, 7, 6, dtype=torch.float64)
    child, report = deepen(
        parent, "0", width=9, batch_norm=True, activation="tanh", probe=x, seed=0
    )
    bn = child[0][1]
    assert isinstance(bn, ChannelLastBatchNorm) and bn.num_features == 9
    assert rel_dev(parent, child, x) <= F64_TOL and report.rel_dev_f64 <= F64_TOL
    for probe in (x[0, 0], x[0], x[:, None]):  # (C,), (T, C), (N, 1, T, C): every rank
        assert rel_dev(parent, child, probe) <= F64_TOL
    # train mode: statistics over every axis but the last, as BatchNorm1d on (N·T, C)
    h = torch.randn(2, 7, 9, dtype=torch.float64)
    bn.train()
    ref = F.batch_norm(h.reshape(-1, 9), None, None, bn.weight, bn.bias, training=True, eps=bn.eps)
    assert torch.allclose(bn(h), ref.reshape_as(h), atol=1e-12)
    # the new BatchNorm is widened with F1 (torch.fx sees it as one per-channel leaf)
    wide, report = widen(child.eval(), "0.0", 12, probe=x, seed=0)
    assert wide[0][1].num_features == 12 and report.rel_dev_f64 <= F64_TOL


def test_layers_inside_children_and_graph_modules_stay_morphable() -> None:
    """The parent check traces adapter modules and fx.GraphModules instead of refusing them."""
    torch.manual_seed(7)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 1)).double()
    x = border_input((2, 3, 6, 6))
    stacked, _ = morph_stacked(model, "2", [[(None, 1)], [(8, 1), (None, 1)]], probe=x, seed=0)
    for parent, at in ((stacked, "2.branches.1.0"), (torch.fx.symbolic_trace(model), "2")):
        child, report = deepen(parent, at, probe=x, seed=0)
        assert rel_dev(model, child, x) <= F64_TOL and report.rel_dev_f64 <= F64_TOL


@register_same_padding_conv
class DeclaredSameConv(Conv2dSame):
    """Conv2dSame declared to the adapter, which then keeps its rule exactly."""


@register_same_padding_conv
class FalselyDeclaredConv(StdConv2d):
    """Declared as dynamic "same" padding, but standardises its weight instead."""


TimmConv2dSame = type("Conv2dSame", (Conv2dSame,), {"__module__": "timm.layers.conv2d_same"})


@pytest.mark.parametrize(
    ("cls", "k", "stride", "operation"),
    [
        (DeclaredSameConv, 3, 2, "deepen"),
        (DeclaredSameConv, 4, 2, "deepen"),
        (TimmConv2dSame, 1, 3, "grow_kernel"),
        (DeclaredSameConv, 3, 1, "grow_kernel"),
        (DeclaredSameConv, 3, 2, "morph_subnet"),
        (DeclaredSameConv, 3, 2, "morph_stacked"),
        (TimmConv2dSame, 3, 2, "morph_module"),
    ],
)
def test_dynamic_same_padding_is_kept_exactly(
    cls: type, k: int, stride: int, operation: str
) -> None:
    """TF "same" padding depends on the input size (out = ceil(n/s)): the child keeps the rule
    as a DynamicSamePad and is exact on odd and even sizes with large borders."""
    torch.manual_seed(8)
    model = Net(cls(4, 4, k, stride)).double()
    x = border_input((2, 3, 9, 8))
    kwargs = {"probe": x} if operation == "grow_kernel" else {"probe": x, "seed": 0}
    if operation == "deepen":
        kwargs["kernel_size"] = (3, k)
        kwargs["width"] = 40
    call = {
        "deepen": lambda: deepen(model, "conv", **kwargs),
        "grow_kernel": lambda: grow_kernel(model, "conv", k + 4, **kwargs),
        "morph_subnet": lambda: morph_subnet(model, "conv", [(40, 3), (None, k)], **kwargs),
        "morph_stacked": lambda: morph_stacked(
            model, "conv", [[(None, k)], [(None, k + 2)]], **kwargs
        ),
        "morph_module": lambda: morph_module(model, "conv", SPEC if k == 3 else None, **kwargs),
    }[operation]
    child, report = call()
    assert isinstance(child.conv[0], DynamicSamePad)
    assert report.rel_dev_f64 <= F64_TOL
    for size in ((5, 6), (7, 7), (2, 3), (10, 11)):
        assert rel_dev(model, child, border_input((2, 3, *size), seed=1)) <= F64_TOL


@pytest.mark.parametrize("cls", [DeclaredSameConv, TimmConv2dSame], ids=lambda c: c.__name__)
@pytest.mark.parametrize("at", ["stem", "conv"])
def test_dynamic_same_padding_conv_widens_exactly(cls: type, at: str) -> None:
    """widen edits a dynamic "same" padding conv's weight in place, as producer (``conv``) or
    consumer (``stem`` widened): its padding rule reads only the input's spatial size, so the
    child keeps the class and is exact on other input sizes too."""
    torch.manual_seed(10)
    model = Net(cls(4, 4, 3, 2))
    model.stem = cls(3, 4, 3, 1)
    model = model.double()
    x = border_input((2, 3, 9, 8))
    child, report = widen(model, at, 7, probe=x, seed=0)
    assert type(child.conv) is cls and type(child.stem) is cls
    assert child.get_submodule(at).out_channels == 7
    assert report.rel_dev_f64 <= F64_TOL
    for size in ((5, 6), (7, 7), (10, 11)):
        assert rel_dev(model, child, border_input((2, 3, *size), seed=1)) <= F64_TOL


@pytest.mark.parametrize("operation", ["deepen", "separable", "grow_kernel", "morph_subnet"])
def test_dynamic_same_padding_depthwise_is_kept_exactly(operation: str) -> None:
    """A depthwise TF "same" padding conv (EfficientNet-TF) keeps the rule and its groups."""
    torch.manual_seed(9)
    model = Net(DeclaredSameConv(4, 4, 3, 2, groups=4)).double()
    x = border_input((2, 3, 9, 8))
    call = {
        "deepen": lambda: deepen(model, "conv", probe=x, seed=0),
        "separable": lambda: deepen(model, "conv", separable=True, probe=x, seed=0),
        "grow_kernel": lambda: grow_kernel(model, "conv", 5, probe=x),
        "morph_subnet": lambda: morph_subnet(model, "conv", [(8, 3), (None, 1)], probe=x, seed=0),
    }[operation]
    child, report = call()
    assert isinstance(child.conv[0], DynamicSamePad)
    assert all(m.groups == 4 for m in child.conv.modules() if isinstance(m, nn.Conv2d))
    assert report.rel_dev_f64 <= F64_TOL
    for size in ((5, 6), (7, 7), (2, 3), (10, 11)):
        assert rel_dev(model, child, border_input((2, 3, *size), seed=1)) <= F64_TOL


@pytest.mark.parametrize("operation", ["deepen", "widen"])
def test_dynamic_same_padding_is_verified(operation: str) -> None:
    bad = Net(FalselyDeclaredConv(4, 4, 3)).double()
    call = {"deepen": lambda m: deepen(m, "conv"), "widen": lambda m: widen(m, "conv", 6)}
    refused(bad, call[operation], MorphError, "does not compute that rule")


@pytest.mark.parametrize("operation", ["deepen", "morph_subnet"])
def test_a_replaced_layer_is_untied_from_its_partner(operation: str) -> None:
    """Deepening or splitting one of two layers that share a weight gives it its own copy: the
    other keeps the parent's Parameter, the child computes the parent's function."""
    torch.manual_seed(5)
    parent = Tied().double()
    before = snapshot(parent)
    x = torch.randn(3, 4, dtype=torch.float64)
    if operation == "deepen":
        child, report = deepen(parent, "a")
    else:
        child, report = morph_subnet(parent, "a", [(6, None), (None, None)])
    assert_unchanged(parent, before)
    assert parent.b.weight is parent.a.weight
    assert isinstance(child.a, nn.Sequential)
    assert child.b.weight is not parent.b.weight
    assert torch.equal(child.b.weight, parent.b.weight)
    assert any("a.weight untied" in n for n in report.notes), report.notes
    torch.testing.assert_close(child(x), parent(x), rtol=0, atol=1e-12)


class CastsToItsLayer(nn.Module):
    """Casts its input to its layer's weight dtype (T5's feed-forward), then calls it."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.proj(x.to(self.proj.weight.dtype))))


class SlicesByItsLayer(CastsToItsLayer):
    """Also slices by the weight's shape: a read no replacement answers."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.tanh(self.proj(x))
        return self.head(y[..., : self.proj.weight.shape[0]])


@pytest.mark.parametrize(
    "grow",
    [lambda m: deepen(m, "proj", seed=0), lambda m: widen(m, "proj", 8, seed=0)],
    ids=["deepen", "widen"],
)
def test_a_parent_reading_its_layers_dtype_is_morphed_exactly(grow: Callable) -> None:
    model = CastsToItsLayer().double()
    x = torch.randn(5, 4, dtype=torch.float64)
    child, _ = grow(model)
    assert rel_dev(model, child, x) <= F64_TOL


def test_a_parent_reading_its_layers_weight_shape_is_refused() -> None:
    refused(
        SlicesByItsLayer().double(),
        lambda m: deepen(m, "proj", seed=0),
        MorphError,
        r"reads proj\.weight directly in its forward",
    )


class _PadsFromKernelSize(nn.Module):
    """A stem that pads its input by half its conv's kernel size, read in its forward."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = self.conv.kernel_size[0] // 2
        return self.conv(F.pad(x, (pad, pad, pad, pad)))


def test_a_child_whose_output_changes_shape_is_refused_naming_the_model() -> None:
    """The padding follows the grown kernel: the child's output grows from 8×8 to 9×9."""
    torch.manual_seed(0)
    parent = nn.Sequential(_PadsFromKernelSize(), nn.ReLU(), nn.Conv2d(8, 4, 1)).double()
    before = {k: v.clone() for k, v in parent.state_dict().items()}
    want = r"grow_kernel at \['0.conv'\] on Sequential: .*\(2, 4, 8, 8\).*\(2, 4, 9, 9\)"
    with pytest.raises(MorphError, match=want):
        grow_kernel(parent, "0.conv", (5, 5), input_shape=(2, 3, 16, 16))
    assert all(torch.equal(before[k], v) for k, v in parent.state_dict().items())


class _SmallCnn(nn.Module):
    """Convolutions, then a two-layer classifier: no transformer blocks."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(F.adaptive_avg_pool2d(self.features(x), 1))


def test_transformer_operations_on_a_cnn_name_the_layer_operations() -> None:
    parent = _SmallCnn().double().eval()
    before = {k: v.clone() for k, v in parent.state_dict().items()}
    with pytest.raises(MorphError, match="a convolutional network: grow it with deepen, widen"):
        grow_ffn(parent, 16)
    assert all(torch.equal(v, parent.state_dict()[k]) for k, v in before.items())


def test_the_solvers_own_memory_estimate_names_the_layer(monkeypatch: pytest.MonkeyPatch) -> None:
    """A chain the adapter's own bounds let through whose solve would still exceed the limit:
    the core's ResourceLimitError reaches the caller naming the operation and the layer."""
    torch.manual_seed(7)
    model = nn.Sequential(nn.Conv2d(3, 64, 7, padding=3), nn.ReLU(), nn.Conv2d(64, 2, 1)).double()
    monkeypatch.setenv("NETMORPH_MAX_BYTES", str(8 << 20))  # the new layers' 3.3 MiB fit

    def call(m: nn.Module) -> object:
        layers = [(64, 3), (64, 5), (None, 1)]  # no closed form: solved by alternation
        return morph_subnet(m, "0", layers, seed=0, input_shape=(1, 3, 8, 8))

    refused(model, call, ResourceLimitError, r"morph_subnet at \['0'\]: morph_subnet into")
