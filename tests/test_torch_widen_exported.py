"""widen on models torch.fx cannot trace (a forward that branches on a tensor's size, as timm's
dynamic "same" padding does): the consumers are found in the torch.export graph instead, through
BatchNorm, in-place activations and sums, padding and pooling; what that walk does not follow is
refused by name, and the parent (in eval or train mode) is left as it was.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch_exactness import border_input, rel_dev  # noqa: E402

from netmorph_core.torch import MorphError, widen  # noqa: E402

F64_TOL = 1e-9


class Branchy(nn.Module):
    """stem → BN → ReLU6 (in place) → pad by one on odd sizes → depthwise 3×3 → BN →
    hardtanh → conv 1×1 → (GroupNorm when ``group_norm``) → pooled head."""

    def __init__(self, group_norm: bool = False) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3)
        self.bn1 = nn.BatchNorm2d(6)
        self.dw = nn.Conv2d(6, 6, 3, groups=6)
        self.bn2 = nn.BatchNorm2d(6)
        self.pw = nn.Conv2d(6, 4, 1)
        self.norm = nn.GroupNorm(2, 4) if group_norm else nn.Identity()
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self.bn1(self.stem(x)), inplace=True)
        if y.shape[-1] % 2:
            y = F.pad(y, (0, 1, 0, 1))
        y = F.hardtanh(self.bn2(self.dw(y)))
        y = self.norm(self.pw(y))
        return self.head(F.adaptive_avg_pool2d(y, 1).flatten(1))


def _trained(model: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    model = model.double()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize(("at", "width"), [("stem", 8), ("dw", 12)])
def test_widen_falls_back_to_the_exported_graph(at: str, width: int, train: bool) -> None:
    model = _trained(Branchy()).train(train)
    with pytest.raises(torch.fx.proxy.TraceError):
        torch.fx.symbolic_trace(model)
    state = _state(model)
    x = border_input((2, 3, 9, 9))
    child, report = widen(model, at, width, seed=0, probe=(x,), zero_side="outer")
    assert model.training is train  # the parent's mode, buffers and parameters are kept
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert report.rel_dev_f64 <= F64_TOL and rel_dev(model, child, x) <= F64_TOL
    assert child.bn2.num_features == width  # a widened stem grows dw by whole new groups


def test_the_exported_walk_refuses_what_it_does_not_follow() -> None:
    model = _trained(Branchy(group_norm=True)).eval()
    state = _state(model)
    with pytest.raises(MorphError, match=r"aten\.group_norm .*'norm'.*normalises over"):
        widen(model, "pw", 6, seed=0, input_shape=(2, 3, 9, 9))
    with pytest.raises(MorphError, match=r"torch\.fx cannot trace Branchy.*pass probe="):
        widen(model, "stem", 8, seed=0)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


class InPlaceSum(nn.Module):
    """Two branches summed in place (``z += right(y)``: aten.add_ in the exported graph) after
    a size-dependent pad that torch.fx cannot trace."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.left, self.right = nn.Conv2d(6, 5, 3, padding=1), nn.Conv2d(6, 5, 1)
        self.head = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.stem(x))
        if y.shape[-1] % 2:
            y = F.pad(y, (0, 1, 0, 1))
        z = self.left(y)
        z += self.right(y)
        return self.head(F.adaptive_avg_pool2d(F.relu(z), 1).flatten(1))


@pytest.mark.parametrize(("at", "partner"), [("left", "right"), ("right", "left")])
def test_an_in_place_residual_sum_widens_with_its_partner(at: str, partner: str) -> None:
    model = _trained(InPlaceSum()).eval()
    state = _state(model)
    x = border_input((2, 3, 9, 9))
    child, report = widen(model, at, 8, seed=0, probe=(x,))
    assert report.rel_dev_f64 <= F64_TOL and rel_dev(model, child, x) <= F64_TOL
    assert child.get_submodule(partner).out_channels == 8 and child.head.in_features == 8
    assert any(f"['{partner}']" in note for note in report.notes)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


class NormedSumWithGate(nn.Module):
    """A size-dependent pad (no torch.fx), then a residual sum of two conv → BatchNorm
    branches (the partner is found through its BatchNorm) and a squeeze-and-excitation gate
    (pool → conv → ReLU → conv → sigmoid) on the sum."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.left, self.right = nn.Conv2d(6, 5, 3, padding=1), nn.Conv2d(6, 5, 1)
        self.bn_left, self.bn_right = nn.BatchNorm2d(5), nn.BatchNorm2d(5)
        self.squeeze, self.excite = nn.Conv2d(5, 3, 1), nn.Conv2d(3, 5, 1)
        self.head = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.stem(x))
        if y.shape[-1] % 2:
            y = F.pad(y, (0, 1, 0, 1))
        z = self.bn_left(self.left(y)) + self.bn_right(self.right(y))
        gate = torch.sigmoid(self.excite(F.relu(self.squeeze(F.adaptive_avg_pool2d(z, 1)))))
        return self.head(F.adaptive_avg_pool2d(z * gate, 1).flatten(1))


@pytest.mark.parametrize(("at", "partner"), [("left", "right"), ("right", "left")])
def test_partners_through_batch_norm_and_a_gate_widen_together(at: str, partner: str) -> None:
    model = _trained(NormedSumWithGate()).eval()
    state = _state(model)
    x = border_input((2, 3, 9, 9))
    child, report = widen(model, at, 8, seed=0, probe=(x,))
    assert report.rel_dev_f64 <= F64_TOL and rel_dev(model, child, x) <= F64_TOL
    assert child.get_submodule(partner).out_channels == 8 and child.excite.out_channels == 8
    assert child.squeeze.in_channels == 8 and child.head.in_features == 8
    assert any(f"['{partner}']" in note for note in report.notes)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


HF_CNNS = {
    "resnet": (
        "ResNetForImageClassification",
        "ResNetConfig",
        dict(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], num_labels=3),
        [
            "resnet.embedder.embedder.convolution",
            "resnet.encoder.stages.1.layers.0.shortcut.convolution",
        ],
    ),
    "regnet": (
        "RegNetForImageClassification",
        "RegNetConfig",
        dict(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], groups_width=8, num_labels=3),
        [
            "regnet.encoder.stages.1.layers.0.shortcut.convolution",
            "regnet.encoder.stages.1.layers.0.layer.1.convolution",  # its SE gate follows
        ],
    ),
    "mobilevit": (  # its config types mlp_ratio float, which the child's config keeps
        "MobileViTForImageClassification",
        "MobileViTConfig",
        dict(hidden_sizes=[16, 32, 48], image_size=32, patch_size=4, num_labels=3),
        [
            "mobilevit.conv_stem.convolution",
            "mobilevit.encoder.layer.0.layer.0.expand_1x1.convolution",
        ],
    ),
}


@pytest.mark.parametrize(
    ("family", "index"), [(f, i) for f in HF_CNNS for i in range(2)], ids=lambda v: str(v)
)
def test_hugging_face_cnn_residual_sums_and_gates(family: str, index: int, tmp_path) -> None:
    from thirdparty import import_transformers

    try:
        transformers = import_transformers()
    except ImportError:  # pragma: no cover - the test extra installs it
        pytest.skip("transformers is not installed")
    from netmorph_core.torch import load_grown

    cls, config_cls, args, layers = HF_CNNS[family]
    torch.manual_seed(0)
    model = getattr(transformers, cls)(getattr(transformers, config_cls)(**args))
    model = _trained(model).eval()
    state = _state(model)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    at = layers[index]
    width = model.get_submodule(at).out_channels + 8
    child, report = widen(model, at, width, seed=0, probe=(x,))
    with torch.no_grad():
        ref = model(x).logits
        assert float((child(x).logits - ref).abs().max() / ref.abs().max()) <= F64_TOL
        child.save_pretrained(tmp_path)
        again = load_grown(tmp_path).double().eval()
        assert float((again(x).logits - ref).abs().max() / ref.abs().max()) <= F64_TOL
    assert child.get_submodule(at).out_channels == width
    assert report.params_after > report.params_before
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm with every statistic a buffer, computed as x·scale + shift in its forward
    (the way DETR's backbone computes it)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.register_buffer("weight", torch.ones(n))
        self.register_buffer("bias", torch.zeros(n))
        self.register_buffer("running_mean", torch.zeros(n))
        self.register_buffer("running_var", torch.ones(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight.reshape(1, -1, 1, 1) * (self.running_var + 1e-5).rsqrt().reshape(
            1, -1, 1, 1
        )
        shift = self.bias.reshape(1, -1, 1, 1) - self.running_mean.reshape(1, -1, 1, 1) * scale
        return x * scale + shift


class FrozenBranchy(nn.Module):
    """stem → frozen BatchNorm → ReLU → pad on odd sizes (torch.fx cannot trace it) → conv →
    pooled head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3)
        self.norm = FrozenBatchNorm2d(6)
        self.conv = nn.Conv2d(6, 4, 3)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.norm(self.stem(x)))
        if y.shape[-1] % 2:
            y = F.pad(y, (0, 1, 0, 1))
        return self.head(F.adaptive_avg_pool2d(self.conv(y), 1).flatten(1))


def test_a_frozen_batch_norm_in_the_exported_graph_gets_the_new_channels() -> None:
    torch.manual_seed(0)
    model = FrozenBranchy().double().eval()
    for name in ("weight", "bias", "running_mean"):
        getattr(model.norm, name).uniform_(-0.5, 0.5)
    model.norm.running_var.uniform_(0.5, 2.0)
    state = _state(model)
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    child, report = widen(model, "stem", 10, seed=0, probe=(x,))
    assert report.rel_dev_f64 <= F64_TOL and rel_dev(model, child, x) <= F64_TOL
    assert child.norm.running_var.shape == (10,) and child.conv.in_channels == 10
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


@torch.fx.wrap
def _clip_window(window: list[int], size: list[int]) -> list[int]:
    """Clips ``window`` to ``size`` in place, as torchvision's video Swin does: in torch.fx's
    graph the list is immutable and this fails where the model runs."""
    for i, n in enumerate(size):
        if n <= window[i]:
            window[i] = n
    return window


class WindowPooled(nn.Module):
    """conv → ReLU → stride-1 average pool over a window clipped to the input → conv → pooled
    head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.conv = nn.Conv2d(6, 4, 1)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, h, w = x.shape
        window = _clip_window([3, 12], [h, w])
        y = F.avg_pool2d(torch.relu(self.stem(x)), window, stride=1)
        return self.head(F.adaptive_avg_pool2d(self.conv(y), 1).flatten(1))


def test_a_traced_graph_that_fails_where_the_model_runs_falls_back_to_the_exported_one() -> None:
    torch.manual_seed(0)
    model = WindowPooled().double().eval()
    state = _state(model)
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    child, report = widen(model, "stem", 10, seed=0, probe=(x,))
    assert report.rel_dev_f64 <= F64_TOL and rel_dev(model, child, x) <= F64_TOL
    assert child.conv.in_channels == 10
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


class DroppedResidualOnStem(nn.Module):
    """stem(x) + drop(conv(stem(x))) after a size-dependent pad (no torch.fx): the sum's other
    producer reads the stem's channels, behind torchvision's or timm's stochastic depth."""

    def __init__(self, drop: nn.Module) -> None:
        super().__init__()
        self.stem, self.conv = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 6, 3, padding=1)
        self.drop, self.head = drop, nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % 2:
            x = F.pad(x, (0, 1, 0, 1))
        h = F.silu(self.stem(x))
        return self.head((h + self.drop(self.conv(h))).mean((2, 3)))


def _stochastic_depth() -> nn.Module:
    from thirdparty import import_torchvision

    return import_torchvision().ops.StochasticDepth(0.2, "row")


def _drop_path() -> nn.Module:
    from thirdparty import import_timm

    return import_timm().layers.DropPath(0.2)


# timm's DropPath in train mode exports as aten.new_empty → bernoulli_ of the widened
# tensor, which the exported walk does not follow; in eval mode it is the identity
@pytest.mark.parametrize(
    ("make_drop", "train"),
    [(_stochastic_depth, False), (_stochastic_depth, True), (_drop_path, False)],
)
def test_a_partner_reading_the_stem_behind_stochastic_depth(
    make_drop: Callable[[], nn.Module], train: bool
) -> None:
    model = _trained(DroppedResidualOnStem(make_drop())).train(train)
    state = _state(model)
    x = border_input((2, 3, 9, 9))
    child, report = widen(model, "stem", 8, seed=0, probe=(x,))
    assert report.rel_dev_f64 <= F64_TOL
    assert child.conv.weight.shape == (8, 8, 3, 3) and child.head.in_features == 8
    assert any("['conv']" in note for note in report.notes)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
