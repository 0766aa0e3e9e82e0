"""Third-party vision models (torchvision, timm) built with random weights and morphed.

Every model is made "trained-like" first (random BatchNorm affine parameters, running
statistics from a calibration batch) so that a wrong channel map changes the output. For every
case the child's float64 deviation from the parent is measured here on our own inputs
(≤ 1e-9: the morph runs on a float64 copy), the parent must be bitwise unchanged, and the
float32 deviation (child and parent cast to float32) is printed. An operation either returns
an exact child or refuses with a MorphError/ValueError naming what it cannot follow.

The fast subset runs by default; the full matrix is marked ``thirdparty`` and runs with
``pytest -m thirdparty`` (the default options deselect it).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest

torch = pytest.importorskip("torch")
from thirdparty import import_timm, import_torchvision  # noqa: E402
from torch import nn  # noqa: E402

from netmorph_core.torch import MorphError, deepen, grow_kernel, widen  # noqa: E402
from netmorph_core.torch.calibrate import trained_like as calibrated  # noqa: E402

try:
    tv = import_torchvision()
    timm = import_timm()
except ImportError:  # the test extra is not installed
    pytest.skip("torchvision and timm are not installed", allow_module_level=True)


def trained_like(model: nn.Module, shape: tuple[int, ...]) -> nn.Module:
    """:func:`netmorph_core.torch.calibrate.trained_like` with a calibration batch of 8."""
    calibration = torch.randn(
        8, *shape[1:], dtype=torch.float64, generator=torch.Generator().manual_seed(0)
    )
    return calibrated(model, calibration)


def first_conv(model: nn.Module, where: Callable[[nn.Conv2d], bool]) -> str:
    return next(n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and where(m))


def morph_and_measure(parent: nn.Module, op: Callable[[nn.Module], tuple], shape) -> float:
    """Run ``op``; returns the float64 deviation measured here (asserted ≤ 1e-9)."""
    x = torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    state = {k: v.clone() for k, v in parent.state_dict().items()}
    child, _ = op(parent)
    with torch.no_grad():
        expected, got = parent(x), child(x)
        dev = float((got - expected).abs().max() / expected.abs().max())
        p32 = copy.deepcopy(parent).float()(x.float())
        c32 = child.float()(x.float())
        dev32 = float((c32 - p32).abs().max() / p32.abs().max())
    assert all(torch.equal(state[k], v) for k, v in parent.state_dict().items())
    assert dev <= 1e-9, dev
    print(f"float64 deviation {dev:.2e}, float32 deviation {dev32:.2e}")
    return dev


DW = lambda m: m.groups > 1 and m.groups == m.in_channels  # noqa: E731
GROUPED = lambda m: m.groups > 1  # noqa: E731
PLAIN = lambda m: m.groups == 1 and m.kernel_size[0] > 1  # noqa: E731

# (model name, constructor, input shape, operations): the default, fast subset.
FAST = [
    (
        "mobilenet_v2",
        lambda: tv.models.mobilenet_v2(width_mult=0.25),
        (2, 3, 16, 16),
        [("widen", "features.2.conv.0.0"), ("deepen", DW)],
    ),
    (
        "timm mobilenetv3_small_050",
        lambda: timm.create_model("mobilenetv3_small_050", pretrained=False),
        (2, 3, 16, 16),
        [("widen", "blocks.2.0.conv_pw")],
    ),
]


# More named cases, run with the full matrix.
MORE = [
    (
        "mobilenet_v2 grow_kernel",
        lambda: tv.models.mobilenet_v2(width_mult=0.25),
        (2, 3, 32, 32),
        [("grow_kernel", DW)],
    ),
    ("resnet18", lambda: tv.models.resnet18(), (2, 3, 32, 32), [("deepen", PLAIN)]),
    (
        "shufflenet_v2_x0_5",
        lambda: tv.models.shufflenet_v2_x0_5(),
        (2, 3, 32, 32),
        [("widen", "conv1.0"), ("deepen", DW)],
    ),
    (
        "inception_v3 nested concatenation",
        lambda: tv.models.inception_v3(aux_logits=False, init_weights=True),
        (2, 3, 80, 80),
        [("widen", "Mixed_7b.branch3x3_2a.conv")],
    ),
]


def run_op(model: nn.Module, op: str, target, shape) -> Callable[[nn.Module], tuple]:
    name = target if isinstance(target, str) else first_conv(model, target)
    if op == "deepen":
        return lambda m: deepen(m, name, seed=0, input_shape=shape)
    if op == "grow_kernel":
        k = model.get_submodule(name).kernel_size[0] + 2
        return lambda m: grow_kernel(m, name, k, input_shape=shape)
    width = model.get_submodule(name).out_channels
    groups = model.get_submodule(name).groups
    return lambda m: widen(m, name, width + 2 * groups, seed=0, input_shape=shape)


@pytest.mark.parametrize(("name", "build", "shape", "ops"), FAST, ids=[c[0] for c in FAST])
def test_fast_subset_is_exact(name, build, shape, ops) -> None:
    model = trained_like(build(), shape)
    for op, target in ops:
        morph_and_measure(model, run_op(model, op, target, shape), shape)


@pytest.mark.thirdparty
@pytest.mark.parametrize(("name", "build", "shape", "ops"), MORE, ids=[c[0] for c in MORE])
def test_more_cases_are_exact(name, build, shape, ops) -> None:
    test_fast_subset_is_exact(name, build, shape, ops)


# The full matrix: every operation either gives an exact child or a specific refusal.
FULL = {
    "resnet18": lambda: tv.models.resnet18(),
    "resnet50": lambda: tv.models.resnet50(),
    "resnext50_32x4d": lambda: tv.models.resnext50_32x4d(),
    "vgg11_bn": lambda: tv.models.vgg11_bn(),
    "mobilenet_v2": lambda: tv.models.mobilenet_v2(),
    "mobilenet_v3_small": lambda: tv.models.mobilenet_v3_small(),
    "mobilenet_v3_large": lambda: tv.models.mobilenet_v3_large(),
    "efficientnet_b0": lambda: tv.models.efficientnet_b0(),
    "convnext_tiny": lambda: tv.models.convnext_tiny(),
    "regnet_y_400mf": lambda: tv.models.regnet_y_400mf(),
    "densenet121": lambda: tv.models.densenet121(),
    "squeezenet1_0": lambda: tv.models.squeezenet1_0(),
    "shufflenet_v2_x1_0": lambda: tv.models.shufflenet_v2_x1_0(),
    "mnasnet0_5": lambda: tv.models.mnasnet0_5(),
    "googlenet": lambda: tv.models.googlenet(aux_logits=False, init_weights=True),
    "inception_v3": lambda: tv.models.inception_v3(aux_logits=False, init_weights=True),
    "timm efficientnet_b0": lambda: timm.create_model("efficientnet_b0", pretrained=False),
    "timm mobilenetv3_small_050": lambda: timm.create_model("mobilenetv3_small_050"),
    "timm resnet18": lambda: timm.create_model("resnet18", pretrained=False),
    "timm regnety_002": lambda: timm.create_model("regnety_002", pretrained=False),
    "timm convnext_atto": lambda: timm.create_model("convnext_atto", pretrained=False),
    "timm vit_tiny": lambda: timm.create_model("vit_tiny_patch16_224", img_size=64),
}


def pick(model: nn.Module, kind: str) -> str | None:
    """The layer a matrix case morphs: the first plain conv with a kernel > 1, the middle
    grouped conv, or the conv registered just before that one (usually its producer)."""
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if kind == "plain":
        return next((n for n, m in convs if PLAIN(m)), None)
    grouped = [i for i, (_, m) in enumerate(convs) if GROUPED(m)]
    if not grouped:
        return None
    i = grouped[len(grouped) // 2]
    return convs[i][0] if kind == "grouped" else convs[i - 1][0]


@pytest.mark.thirdparty
@pytest.mark.parametrize("name", list(FULL))
@pytest.mark.parametrize("op", ["deepen", "widen", "grow_kernel"])
@pytest.mark.parametrize("kind", ["plain", "grouped", "before_grouped"])
def test_full_matrix_exact_or_refused(name, op, kind) -> None:
    shape = (2, 3, 96, 96) if name in ("inception_v3", "googlenet") else (2, 3, 64, 64)
    model = trained_like(FULL[name](), shape)
    target = pick(model, kind)
    if target is None:
        pytest.skip(f"{name} has no {kind} convolution")
    try:
        morph_and_measure(model, run_op(model, op, target, shape), shape)
    except (MorphError, ValueError) as exc:
        assert str(exc), "a refusal must say why"
        print(f"refused: {exc}")


@pytest.mark.parametrize(
    ("build", "at", "partner"),
    [
        (lambda: timm.create_model("convnext_atto"), "stages.1.blocks.0.mlp.fc2", "layer_norm"),
        (lambda: tv.models.shufflenet_v2_x0_5(), "stage2.1.branch2.5", None),
    ],
    ids=["timm convnext_atto layer scale", "shufflenet_v2 channel shuffle"],
)
def test_layer_scale_followed_and_shuffle_refused(build, at, partner) -> None:
    """ConvNeXt: the layer scale ``gamma`` after fc2 is followed and the residual sum's other
    producer (the stage's downsample) joins; the refusal is the next block's LayerNorm over
    the channels. ShuffleNet: the shuffle's reshape is refused naming its node."""
    model = build().double().eval()
    width = model.get_submodule(at).out_channels + 2
    match = (
        rf"'stages.1.downsample.1'\]: call_function '{partner}'.*consumes widened channels"
        if partner
        else r"'size_1'.*channel shuffle"
    )
    with pytest.raises(MorphError, match=match):
        widen(model, at, width, seed=0, input_shape=(2, 3, 32, 32))
