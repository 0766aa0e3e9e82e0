"""The papers' morphing sequences on whole networks, every step function-preserving."""

from __future__ import annotations

import os

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from netmorph_core.torch import (  # noqa: E402
    PActivation,
    deepen,
    grow_kernel,
    morph_subnet,
    widen,
)
from netmorph_core.torch.models import (  # noqa: E402
    TransformerMLP,
    cifar_net,
    small_resnet,
    vgg16,
)

F64_TOL = 1e-9
RUN_SLOW = os.environ.get("NETMORPH_RUN_SLOW") == "1"


def conv_shapes(model: nn.Module) -> list[tuple[int, ...]]:
    return [tuple(m.weight.shape) for m in model.modules() if isinstance(m, nn.Conv2d)]


def check_step(parent: nn.Module, child: nn.Module, report: object, x: torch.Tensor) -> None:
    parent.eval()
    child.eval()
    with torch.no_grad():
        y, z = parent(x), child(x)
    assert float((y - z).abs().max() / y.abs().max()) <= F64_TOL
    assert report.rel_dev_f64 <= F64_TOL


def vgg16_netmorph(divisor: int, *, hidden: int, seed: int) -> None:
    """VGG16 → VGG16(NetMorph) (paper Table 2): the last conv of stages 1-3 becomes
    (3:C×4)(1:C)."""
    torch.manual_seed(seed)
    model = vgg16(10, width_divisor=divisor, pooled_size=1, hidden=hidden).double()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    for at, c in (("features.2", 64), ("features.7", 128), ("features.14", 256)):
        c //= divisor
        child, report = deepen(model, at, width=4 * c, kernel_size=(3, 1), probe=x, seed=0)
        check_step(model, child, report, x)
        assert report.train_mode_holds  # same dropout masks, no BatchNorm
        model = child
    table2 = [[64, 256, 64], [128, 512, 128], [256, 256, 1024, 256], [512] * 3, [512] * 3]
    kernels = [[3, 3, 1], [3, 3, 1], [3, 3, 3, 1], [3] * 3, [3] * 3]
    expected_out = [w // divisor for stage in table2 for w in stage]
    expected_k = [k for stage in kernels for k in stage]
    shapes = conv_shapes(model)
    assert [s[0] for s in shapes] == expected_out
    assert [s[2] for s in shapes] == expected_k
    assert sum(isinstance(m, PActivation) for m in model.modules()) == 3


def test_vgg16_to_vgg16_netmorph_reduced_width() -> None:
    vgg16_netmorph(8, hidden=64, seed=0)


@pytest.mark.slow
@pytest.mark.skipif(not RUN_SLOW, reason="full-width VGG16; set NETMORPH_RUN_SLOW=1")
def test_vgg16_to_vgg16_netmorph_true_widths() -> None:
    vgg16_netmorph(1, hidden=512, seed=1)


def test_table1_depth_and_subnet_sequence() -> None:
    """cifar_111 → 211 → 222 → 2222 → 3333 (widths / 4, 8×8 images)."""
    torch.manual_seed(2)
    model = cifar_net("cifar_111", image_size=8, width_divisor=4).double()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    steps = {
        "cifar_211": [(deepen, "features.0", {"width": 32, "kernel_size": (5, 1)})],
        "cifar_222": [
            (deepen, "features.3", {"width": 32, "kernel_size": (5, 1)}),
            (deepen, "features.6", {"width": 64, "kernel_size": (5, 1)}),
        ],
        # the (1:64) closing subnet 3 becomes (1:64)(5:64×4)(1:64): a fourth subnet
        "cifar_2222": [(morph_subnet, "features.6.2", {"layers": [(16, 1), (64, 5), (16, 1)]})],
        "cifar_3333": [
            (deepen, at, {"width": 4 * c, "kernel_size": (3, 1)})
            for at, c in (
                ("features.0.2", 8),
                ("features.3.2", 8),
                ("features.6.2.0", 16),
                ("features.6.2.4", 16),
            )
        ],
    }
    for name, ops in steps.items():
        for op, at, kwargs in ops:
            child, report = op(model, at, probe=x, seed=0, **kwargs)
            check_step(model, child, report, x)
            model = child
        assert conv_shapes(model) == conv_shapes(cifar_net(name, image_size=8, width_divisor=4))


def test_table1_kernel_and_width_sequence() -> None:
    """cifar_base → cifar_ksize → cifar_width (widths / 4, 8×8 images)."""
    torch.manual_seed(3)
    model = cifar_net("cifar_base", image_size=8, width_divisor=4).double()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    for at in ("features.2", "features.7", "features.12"):  # the (1:C) layers → 3×3
        child, report = grow_kernel(model, at, 3, probe=x)
        check_step(model, child, report, x)
        model = child
    assert conv_shapes(model) == conv_shapes(
        cifar_net("cifar_ksize", image_size=8, width_divisor=4)
    )
    for at in ("features.0", "features.5", "features.10"):  # the (5:C) layers → 2C channels
        width = 2 * model.get_submodule(at).out_channels
        child, report = widen(model, at, width, probe=x, seed=0)
        check_step(model, child, report, x)
        model = child
    assert conv_shapes(model) == conv_shapes(
        cifar_net("cifar_width", image_size=8, width_divisor=4)
    )


def test_resnet_deepen_and_widen_inside_a_block() -> None:
    torch.manual_seed(4)
    model = small_resnet().double().eval()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    child, report = deepen(
        model, "layer1.0.conv1", width=32, kernel_size=(3, 1), batch_norm=True, probe=x, seed=0
    )
    check_step(model, child, report, x)
    assert report.train_mode_holds is False  # the inserted BN uses batch statistics
    child2, report = deepen(model, "layer2.0.conv1", kernel_size=(1, 3), probe=x, seed=0)
    check_step(model, child2, report, x)
    assert report.train_mode_holds  # no new BN: the block's own BNs see the same inputs
    widened, report = widen(child, ["conv1", "layer1.0.conv2"], 24, probe=x, seed=0)
    check_step(child, widened, report, x)
    widened2, report = widen(child, "layer1.0.conv1.3", 24, probe=x, seed=0)  # deepened F2
    check_step(child, widened2, report, x)


def test_transformer_mlp_widen_then_deepen_with_gelu() -> None:
    torch.manual_seed(5)
    model = TransformerMLP(16, 32).double()
    x = torch.randn(2, 6, 16, dtype=torch.float64)
    wide, report = widen(model, "fc1", 64, probe=x, seed=0)
    check_step(model, wide, report, x)
    deep, report = deepen(wide, "fc1", activation="gelu", probe=x, seed=0)
    check_step(wide, deep, report, x)
    act = deep.fc1[1]
    assert isinstance(act, PActivation) and act.base_name == "gelu"
    wider, report = widen(deep, "fc1.0", 80, probe=x, seed=0)  # through PActivation(gelu)
    check_step(deep, wider, report, x)
    assert wider.fc1[2].in_features == 80
