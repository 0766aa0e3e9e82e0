"""Module morphing in the PyTorch adapter and the CIFAR ResNet morphs (float64, eval mode)."""

from __future__ import annotations

from collections import OrderedDict

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from netmorph_core.morph.graph import Module, conv_edge, identity_edge  # noqa: E402
from netmorph_core.torch.module import MorphedModule, morph_module  # noqa: E402
from netmorph_core.torch.resnet import (  # noqa: E402
    BasicBlock,
    identity_blocks,
    morph_resnet,
    parse_spec_name,
    resnet20,
)

TOL = 1e-9  # float64 relative output deviation of an exact morph
PROBE = (2, 3, 8, 8)


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _unchanged(model: nn.Module, before: dict[str, torch.Tensor]) -> bool:
    after = model.state_dict()
    return after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


@pytest.fixture(scope="module")
def parent() -> nn.Module:
    torch.manual_seed(0)
    model = resnet20(width=4).double()
    with torch.no_grad():  # non-trivial BN statistics so eval mode is not a plain scaling
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model.eval()


@pytest.mark.parametrize(
    ("spec_name", "method", "branches"),
    [
        ("morph_1c1", "general", 1),
        ("morph_3c3", "practical", 1),
        ("morph_1c1_2branch", "general", 2),
    ],
)
def test_resnet20_morphs_preserve_the_function(
    parent: nn.Module, spec_name: str, method: str, branches: int
) -> None:
    before = _snapshot(parent)
    child, report = morph_resnet(parent, spec_name, method=method, seed=0, input_shape=PROBE)
    assert report.scope == "model" and report.rel_dev_f64 <= TOL
    assert report.exact and report.residual <= 1e-10
    assert _unchanged(parent, before)
    k1, k2, _, _ = parse_spec_name(spec_name)
    morphed = identity_blocks(parent)
    assert len(morphed) == 7  # 9 blocks, the 2 downsampling ones keep their shortcut
    for name in morphed:
        module = child.get_submodule(f"{name}.shortcut")
        assert isinstance(module, MorphedModule)
        convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
        assert len(convs) == 2 * branches
        assert sorted(c.kernel_size[0] for c in convs) == sorted([k1, k2] * branches)
    c = 4  # layer1 channels: each branch adds two C×C convs, an identity BN and a PActivation
    extra = sum(
        branches * (conv_k * ch * ch)
        for name in morphed
        for ch in [child.get_submodule(name).conv2.out_channels]
        for conv_k in (k1 * k1, k2 * k2)
    )
    assert report.params_after - report.params_before >= extra > 0
    x = torch.randn(PROBE, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        y0, y1 = parent(x), child.eval()(x)
    assert float((y1 - y0).abs().max() / y0.abs().max()) <= TOL
    assert c == parent.layer1[0].conv2.out_channels


def test_half_morphs_odd_blocks_only(parent: nn.Module) -> None:
    assert identity_blocks(parent, half=True) == ["layer1.1", "layer2.2", "layer3.1"]
    child, report = morph_resnet(parent, "morph_1c1_half", seed=1, input_shape=PROBE)
    assert report.rel_dev_f64 <= TOL
    assert isinstance(child.layer1[0].shortcut, nn.Identity)
    assert isinstance(child.layer1[1].shortcut, MorphedModule)


def _conv_model(stride: int = 1, bias: bool = True, padding_mode: str = "zeros") -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(
        OrderedDict(
            [
                (
                    "conv",
                    nn.Conv2d(
                        4, 4, 3, stride=stride, padding=1, bias=bias, padding_mode=padding_mode
                    ),
                ),
                ("relu", nn.ReLU()),
                ("head", nn.Conv2d(4, 2, 1)),
            ]
        )
    ).double()


def _border_probe() -> torch.Tensor:
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    x[:, :, 0], x[:, :, -1], x[:, :, :, 0], x[:, :, :, -1] = 10.0, -10.0, 10.0, -10.0
    return x


@pytest.mark.parametrize(("stride", "padding_mode"), [(1, "zeros"), (2, "zeros"), (1, "reflect")])
def test_scaled_identity_branch_with_crops_and_stride(stride: int, padding_mode: str) -> None:
    """0.25·I + (3×3 → 3×3) + (1×1 → 3×3 → 1×1): effective size 5 for a 3×3 conv, so the
    source pads by 2, the identity path is cropped by 2 and the 3-wide path by 1 (at e)."""
    model = _conv_model(stride, padding_mode=padding_mode)
    spec = Module(
        [
            identity_edge("skip", "s", "t", 0.25),
            conv_edge("a", "s", "m", 3),
            conv_edge("b", "m", "t", 3),
            conv_edge("c", "s", "n", 1),
            conv_edge("d", "n", "p", 3),
            conv_edge("e", "p", "t", 1),
        ],
        channels={"m": 8, "n": 6, "p": 6},
    )
    before = _snapshot(model)
    child, report = morph_module(
        model, "conv", spec, method="practical", seed=0, probe=_border_probe()
    )
    assert report.rel_dev_f64 <= TOL and report.exact
    assert _unchanged(model, before)
    new = child.conv
    assert isinstance(new, MorphedModule)
    assert new.edges["skip"].scale == 0.25 and new.edges["skip"].crops == ((2, 2), (2, 2))
    assert new.edges["c"].crops == ((0, 0), (0, 0))
    assert new.edges["e"].crops == ((1, 1), (1, 1))
    assert new.bias is not None and torch.equal(new.bias.detach(), model.conv.bias.detach())
    assert report.param_sources["conv.bias"].parent == "conv.bias"


def test_irreducible_module_through_the_core_solver() -> None:
    """Module (D) of the notes (irreducible): solved by the core's Algorithm 2."""
    model = _conv_model(bias=False)
    spec = Module(
        [
            conv_edge("F1", "s", "u", 1),
            conv_edge("F2", "s", "w", 1),
            conv_edge("F3", "u", "x", 3),
            conv_edge("F4", "w", "x", 3),
            conv_edge("F5", "u", "t", 3),
            conv_edge("F6", "x", "t", 1),
            conv_edge("F7", "w", "t", 3),
        ],
        channels={"u": 8, "w": 8, "x": 8},
    )
    _, report = morph_module(model, "conv", spec, seed=0, probe=_border_probe())
    assert "irreducible" in report.notes[0]
    assert report.rel_dev_f64 <= 1e-8


def test_bad_inputs_raise_typed_errors_naming_the_culprit() -> None:
    model = _conv_model()
    before = _snapshot(model)
    good = Module([conv_edge("a", "s", "m", 3), conv_edge("b", "m", "t", 1)], channels={"m": 4})
    with pytest.raises(ValueError, match="'nope'"):
        morph_module(model, "nope", good)
    with pytest.raises(TypeError, match="is ReLU"):
        morph_module(model, "relu", good)
    with pytest.raises(TypeError, match="spec must be"):
        morph_module(model, "conv", [conv_edge("a", "s", "t", 3)])
    with pytest.raises(ValueError, match=r"single source.*\['s', 'r'\]"):
        Module([conv_edge("a", "s", "t", 3), conv_edge("b", "r", "t", 3)])
    with pytest.raises(ValueError, match="cycle through vertex"):
        Module(
            [
                conv_edge("a", "s", "m"),
                conv_edge("b", "m", "n"),
                conv_edge("c", "n", "m"),
                conv_edge("d", "n", "t"),
            ]
        )
    # the head conv maps 4 → 2 channels: an identity edge cannot join them
    ident = Module([identity_edge("i", "s", "t"), conv_edge("a", "s", "t", 1)])
    with pytest.raises(ValueError, match="vertex 't'"):
        morph_module(model, "head", ident)
    with pytest.raises(ValueError, match="vertex 'm' has no channel count"):
        morph_module(model, "conv", Module([conv_edge("a", "s", "m", 3), conv_edge("b", "m", "t")]))
    with pytest.raises(ValueError, match="effective kernel size"):
        morph_module(model, "conv", Module([conv_edge("a", "s", "t", 1)]))
    with pytest.raises(ValueError, match="edge name 'half'"):
        morph_module(model, "conv", Module([conv_edge("half", "s", "t", 3)]))
    with pytest.raises(ValueError, match="method"):
        morph_module(model, "conv", good, method="newton")
    with pytest.raises(ValueError, match="spec_name"):
        morph_resnet(resnet20(width=2), "morph_2c1")
    assert _unchanged(model, before)


def test_resnet20_layout() -> None:
    model = resnet20(width=2)
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    assert len(blocks) == 9
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == 19
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 10)
    b = resnet20(width=2, shortcut="B")
    assert sum(isinstance(m, nn.Conv2d) for m in b.modules()) == 21
