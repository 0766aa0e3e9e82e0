"""widen and grow_kernel keep weight-standardised convs (Ŵ_o = g_o·(W_o − mean)/√(var + ε):
timm's ScaledStdConv2d, the NF-nets' only conv) and regrow their weight and gain.

Tiny models: stem → a → b → c → head, a/b/c standardised (with a gain, or without one as
StdConv2d), b grouped or not, every filter given its own mean offset and gain. Checked: float64
children within 1e-9 of the parent on real forward passes, float32 children within 4× the
parent's own rounding (``noise_ratio``: the rescaled gain is one more rounding; measured ≤ 2.2),
the parent unchanged, the class kept, old entries of Ŵ the parent's and new consumer columns
and kernel taps zero in Ŵ (to rounding), each gain rescaled by √(var' + ε)/√(var + ε), the
report's sources usable by remap_optimizer; timm's nf_resnet26 and nf_regnet_b0 (2×3×32×32
inputs) exact on a few layers; a conv without a gain refused as a consumer and under
grow_kernel, by name and reason, and exact as a producer.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch_exactness import rel_dev  # noqa: E402

from netmorph_core.torch import MorphError, grow_kernel, remap_optimizer, widen  # noqa: E402
from netmorph_core.torch.standardized import standardised_weight  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

F64_TOL = 1e-9
EPS = 1e-6


def _standardise(conv: nn.Conv2d, gain: torch.Tensor | None) -> torch.Tensor:
    return F.batch_norm(
        conv.weight.reshape(1, conv.out_channels, -1),
        None,
        None,
        weight=None if gain is None else gain.view(-1),
        training=True,
        momentum=0.0,
        eps=EPS,
    ).reshape_as(conv.weight)


class ScaledStdConv2d(nn.Conv2d):
    """As timm's ScaledStdConv2d: filter o is gain_o·scale·(W_o − mean)/√(var + eps), with
    ``scale`` a float stored at construction."""

    def __init__(self, c_in: int, c_out: int, k: int, groups: int = 1) -> None:
        super().__init__(c_in, c_out, k, padding=k // 2, groups=groups)
        self.eps = EPS
        self.scale = self.weight[0].numel() ** -0.5
        self.gain = nn.Parameter(torch.empty(c_out, 1, 1, 1).uniform_(0.5, 1.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = _standardise(self, self.gain * self.scale)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class StdConv2d(nn.Conv2d):
    """As timm's StdConv2d: filter o is (W_o − mean)/√(var + eps), no gain."""

    def __init__(self, c_in: int, c_out: int, k: int, groups: int = 1) -> None:
        super().__init__(c_in, c_out, k, padding=k // 2, groups=groups)
        self.eps = EPS

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = _standardise(self, None)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class Net(nn.Module):
    """stem → a → b → c → mean → head; a, b, c of ``cls`` (b with ``groups``)."""

    def __init__(self, cls: type, groups: int = 1) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.a = cls(8, 8, 3)
        self.b = cls(8, 8, 3, groups=groups)
        self.c = cls(8, 6, 1)
        self.head = nn.Linear(6, 4)
        with torch.no_grad():  # each filter its own mean: the new entries must sit on it
            for conv in (self.a, self.b, self.c):
                conv.weight.add_(torch.randn(conv.out_channels, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.tanh(self.a(torch.tanh(self.stem(x))))
        x = torch.tanh(self.c(torch.tanh(self.b(x))))
        return self.head(x.mean((2, 3)))


def _net(cls: type = ScaledStdConv2d, groups: int = 1, dtype: torch.dtype = torch.float64):
    torch.manual_seed(groups)
    return Net(cls, groups).to(dtype)


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _unchanged(model: nn.Module, before: dict[str, torch.Tensor]) -> bool:
    now = model.state_dict()
    return now.keys() == before.keys() and all(torch.equal(now[k], before[k]) for k in now)


def _check(parent: nn.Module, child: nn.Module, report: object, x: torch.Tensor) -> None:
    """Exact in float64 (on x and in the report), float32 within 4× the parent's rounding;
    the standardised layers keep their class; the report's sources carry an optimizer over
    (which steps the parent: call last)."""
    if x.dtype == torch.float64:
        assert rel_dev(parent, child, x) <= F64_TOL and report.rel_dev_f64 <= F64_TOL
    else:
        assert report.noise_ratio <= 4, report
    for name in ("a", "b", "c"):
        assert type(child.get_submodule(name)) is type(parent.get_submodule(name))
    optimizer = torch.optim.Adam(parent.parameters())
    parent(x).sum().backward()
    optimizer.step()
    remap_optimizer(optimizer, parent, child, report=report)


def _stats(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    flat = w.detach().double().reshape(w.shape[0], -1)
    return flat.mean(1), flat.var(1, unbiased=False)


def _check_old_filters(old: nn.Module, new: nn.Module, taps: tuple, tol: float) -> None:
    """``new``'s filters are ``old``'s with new entries: its Ŵ is ``old``'s at ``taps`` (the
    old entries) and 0 elsewhere, each filter's mean is unchanged and its gain is rescaled by
    √(var' + ε)/√(var + ε)."""
    w_old, w_new = standardised_weight(old), standardised_weight(new)
    scale = float(w_old.abs().max())
    assert float((w_new[taps] - w_old).abs().max()) <= tol * scale
    rest = torch.ones(w_new.shape, dtype=torch.bool)
    rest[taps] = False
    assert float(w_new[rest].abs().max()) <= tol * scale
    (mean, var), (mean2, var2) = _stats(old.weight), _stats(new.weight)
    assert torch.allclose(mean2, mean, rtol=tol, atol=tol * float(mean.abs().max()))
    ratio = torch.sqrt((var2 + EPS) / (var + EPS))
    gain = new.gain.detach().double().reshape(-1)
    assert torch.allclose(gain, old.gain.detach().double().reshape(-1) * ratio, rtol=tol)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("zero_side", ["outer", "inner"])
def test_widen_with_standardised_producer_and_consumer(zero_side: str, dtype: torch.dtype) -> None:
    """a gets 4 new filters, standardised on their own (their gain the mean of the old ones);
    b's new columns sit on each filter's mean (centred noise with zero_side="inner"), its gain
    absorbs the variance, and its old entries of Ŵ are the parent's."""
    parent = _net(dtype=dtype)
    x = torch.randn(4, 3, 8, 8, dtype=dtype)
    before = _state(parent)
    child, report = widen(parent, "a", 12, zero_side=zero_side, seed=0, probe=x)
    assert _unchanged(parent, before)
    a, b = child.a, child.b
    assert a.weight.shape == (12, 8, 3, 3) and a.gain.shape == (12, 1, 1, 1)
    assert b.weight.shape == (8, 12, 3, 3) and b.gain.shape == (8, 1, 1, 1)
    assert b.scale == parent.b.scale  # the stored float the forward reads
    rows = report.param_sources["a.weight"].index[0]
    assert torch.allclose(
        a.gain.detach()[torch.as_tensor(rows < 0)].reshape(-1),
        parent.a.gain.detach().mean().expand(4),
    )
    cols = report.param_sources["b.weight"].index[1]
    old = torch.as_tensor(cols >= 0)
    assert report.param_sources["b.gain"].parent == "b.gain"
    if dtype == torch.float64:
        w_old, w_new = standardised_weight(parent.b), standardised_weight(b)
        assert torch.allclose(w_new[:, old], w_old[:, cols[cols >= 0]], rtol=1e-12, atol=1e-12)
        mean, var = _stats(parent.b.weight)
        mean2, var2 = _stats(b.weight)
        assert torch.allclose(mean2, mean, rtol=1e-12, atol=1e-14)
        ratio = torch.sqrt((var2 + EPS) / (var + EPS))
        gain = parent.b.gain.detach().reshape(-1)
        assert torch.allclose(b.gain.detach().reshape(-1), gain * ratio)
        if zero_side == "outer":
            assert float(w_new[:, ~old].abs().max()) <= 1e-12 * float(w_old.abs().max())
        else:
            assert float(w_new[:, ~old].abs().max()) > 0.1  # random new columns, mean-free
            assert float(a.weight.detach()[torch.as_tensor(rows < 0)].abs().max()) == 0.0
    _check(parent, child, report, x)


def test_auto_zeroes_the_columns_of_a_standardised_producer() -> None:
    """A zero filter sits where the standardisation has gradient 1/√ε: "auto" gives the new
    filters random entries and zeroes the consumer's columns (in Ŵ) instead."""
    parent = _net()
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    child, report = widen(parent, "a", 12, seed=0, probe=x)
    assert any(
        n.startswith("zero_side='outer': zeroed new filters of the weight-standardised 'a'")
        for n in report.notes
    )
    rows = torch.as_tensor(report.param_sources["a.weight"].index[0] < 0)
    assert float(child.a.weight.detach()[rows].abs().min()) > 0
    assert rel_dev(parent, child, x) <= F64_TOL


def test_widen_into_a_grouped_standardised_consumer_grows_whole_new_filters() -> None:
    """b (groups 4, 2 inputs per group) grows by 2 new groups: new filters standardised on
    their own, its old filters untouched; c's new columns rescale its gain."""
    parent = _net(groups=4)
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    before = _state(parent)
    child, report = widen(parent, "a", 12, seed=0, probe=x)
    assert _unchanged(parent, before)
    b = child.b
    assert (b.in_channels, b.out_channels, b.groups) == (12, 12, 6)
    out = report.param_sources["b.weight"].index[0]
    kept = torch.as_tensor(out >= 0)
    assert torch.equal(b.weight.detach()[kept], parent.b.weight.detach()[out[out >= 0]])
    assert torch.equal(b.gain.detach()[kept], parent.b.gain.detach()[out[out >= 0]])
    cols = report.param_sources["c.weight"].index[1]
    taps = (slice(None), torch.as_tensor(cols >= 0))
    old = ScaledStdConv2d(8, 6, 1).double()
    with torch.no_grad():  # the parent's c with its columns in the child's order
        old.weight.copy_(parent.c.weight[:, cols[cols >= 0]])
        old.gain.copy_(parent.c.gain)
    _check_old_filters(old, child.c, taps, 1e-12)
    _check(parent, child, report, x)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("groups", [1, 4])
def test_grow_kernel_keeps_the_standardisation(groups: int, dtype: torch.dtype) -> None:
    """New taps at each filter's mean are zero in Ŵ; the old taps' Ŵ is the parent's; the
    gain absorbs the variance; the layer keeps its class, scale and groups."""
    parent = _net(groups=groups, dtype=dtype)
    x = torch.randn(4, 3, 8, 8, dtype=dtype)
    before = _state(parent)
    child, report = grow_kernel(parent, "b", 5, probe=x)
    assert _unchanged(parent, before)
    b = child.b
    assert b.kernel_size == (5, 5) and b.padding == (2, 2) and b.groups == groups
    assert b.scale == parent.b.scale
    assert {"b.weight", "b.gain"} <= set(report.param_sources)
    if dtype == torch.float64:
        _check_old_filters(parent.b, b, (Ellipsis, slice(1, 4), slice(1, 4)), 1e-12)
    _check(parent, child, report, x)


@pytest.mark.parametrize(
    ("groups", "grow", "at", "what"),
    [
        (1, lambda m: widen(m, "a", 12, seed=0), "b", "new input columns"),
        (4, lambda m: widen(m, "a", 12, seed=0), "c", "new input columns"),
        (1, lambda m: grow_kernel(m, "b", 5), "b", "new kernel taps"),
    ],
    ids=["widen consumer", "widen through a grouped consumer", "grow_kernel"],
)
def test_without_a_gain_new_entries_in_old_filters_are_refused(
    groups: int, grow: object, at: str, what: str
) -> None:
    """The variance change has nothing to absorb it (a grouped b grows by whole new filters,
    which need no gain, but its new outputs reach c's columns)."""
    parent = _net(StdConv2d, groups)
    before = _state(parent)
    with pytest.raises(
        MorphError,
        match=rf"'{at}' is StdConv2d, a weight-standardised conv without a gain: {what} change "
        "each filter's variance",
    ):
        grow(parent)
    assert _unchanged(parent, before)


def test_without_a_gain_a_producer_is_exact() -> None:
    """New filters are standardised on their own and need no gain: c widened into the head."""
    parent = _net(StdConv2d)
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    before = _state(parent)
    child, report = widen(parent, "c", 10, seed=0, probe=x)
    assert _unchanged(parent, before)
    assert rel_dev(parent, child, x) <= F64_TOL and report.rel_dev_f64 <= F64_TOL
    assert type(child.c) is StdConv2d and child.c.weight.shape == (10, 8, 1, 1)


class PaddedNet(Net):
    """Net with a pad on odd sizes before a (torch.fx cannot trace it): widen walks the
    exported graph, where a standardised conv's weight is computed by batch_norm."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.tanh(self.stem(x))
        if x.shape[-1] % 2:
            x = F.pad(x, (0, 1, 0, 1))
        x = torch.tanh(self.a(x))
        x = torch.tanh(self.c(torch.tanh(self.b(x))))
        return self.head(x.mean((2, 3)))


@pytest.mark.parametrize(("cls", "at"), [(ScaledStdConv2d, "a"), (StdConv2d, "c")])
def test_the_exported_walk_finds_standardised_convs(cls: type, at: str) -> None:
    torch.manual_seed(0)
    parent = PaddedNet(cls).double()
    with pytest.raises(torch.fx.proxy.TraceError):
        torch.fx.symbolic_trace(parent)
    x = torch.randn(2, 3, 7, 7, dtype=torch.float64)
    before = _state(parent)
    child, report = widen(parent, at, 12, seed=0, probe=x)
    assert _unchanged(parent, before)
    assert rel_dev(parent, child, x) <= F64_TOL and report.rel_dev_f64 <= F64_TOL
    assert type(child.get_submodule(at)) is cls and child.get_submodule(at).out_channels == 12


def _timm() -> object:
    from thirdparty import import_timm

    try:
        return import_timm()
    except ImportError:
        pytest.skip("timm is not installed")


def _timm_model(name: str) -> nn.Module:
    timm = _timm()
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=3).double().eval()
    with torch.no_grad():  # trained-like: no zero (skip-init) gains, non-zero biases
        for pname, p in model.named_parameters():
            if pname.endswith(("gain", "bias")):
                p.uniform_(0.5, 1.5)
    return model


@pytest.mark.parametrize(
    ("name", "operation", "at"),
    [
        ("nf_resnet26", "widen", "stages.1.0.conv1"),
        ("nf_resnet26", "grow_kernel", "stages.1.0.conv2"),
        ("nf_regnet_b0", "widen", "stem.conv"),
        ("nf_regnet_b0", "grow_kernel", "stages.2.4.conv2"),
    ],
)
def test_timm_nf_nets_widen_and_grow_kernel_exactly(name: str, operation: str, at: str) -> None:
    """NF-nets are ScaledStdConv2d and no norm layers: widen (producer and consumers
    standardised) and grow_kernel (nf_regnet_b0's grouped conv2 too) keep them exactly."""
    parent = _timm_model(name)
    layer = parent.get_submodule(at)
    assert type(layer).__name__ == "ScaledStdConv2d"
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    before = _state(parent)
    if operation == "widen":
        child, report = widen(parent, at, layer.out_channels + 8, seed=0, probe=x)
    else:
        child, report = grow_kernel(parent, at, 5, probe=x)
    assert _unchanged(parent, before)
    assert rel_dev(parent, child, x) <= F64_TOL and report.rel_dev_f64 <= F64_TOL
    grown = child.get_submodule(at)
    assert type(grown) is type(layer) and grown.gain.shape[0] == grown.out_channels
    assert any("weight standardisation kept" in n for n in report.notes)


@pytest.mark.parametrize("operation", ["widen", "grow_kernel"])
def test_timm_same_padding_variant_with_static_padding(operation: str) -> None:
    """ScaledStdConv2dSame (dm_nfnet) at stride 1 pads statically: kept and grown like
    ScaledStdConv2d (its stride-2 layers pad dynamically and stay refused by every operation)."""
    same_conv = _timm().layers.ScaledStdConv2dSame
    torch.manual_seed(0)
    parent = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.GELU(),
        same_conv(8, 8, 3),
        nn.GELU(),
        same_conv(8, 4, 3),
    ).double()
    with torch.no_grad():
        for pname, p in parent.named_parameters():
            if pname.endswith("gain"):
                p.uniform_(0.5, 1.5)
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64)
    before = _state(parent)
    if operation == "widen":
        child, report = widen(parent, "2", 12, seed=0, probe=x)
    else:
        child, report = grow_kernel(parent, "2", 5, probe=x)
    assert _unchanged(parent, before)
    assert rel_dev(parent, child, x) <= F64_TOL and report.rel_dev_f64 <= F64_TOL
    assert type(child[2]) is same_conv and not child[2].same_pad
