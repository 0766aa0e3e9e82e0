"""deepen / grow_kernel / morph_subnet / morph_stacked on real modules: exact forward passes."""

from __future__ import annotations

import io

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch_exactness import border_input, rel_dev  # noqa: E402

from netmorph_core.torch import (  # noqa: E402
    PActivation,
    StackedBranches,
    deepen,
    grow_kernel,
    morph_stacked,
    morph_subnet,
)
from netmorph_core.torch.models import cifar_net  # noqa: E402

F64_TOL = 1e-9
PADDING_MODES = ["zeros", "reflect", "replicate", "circular"]
# (padding, stride, dilation, kernel_size of the morph)
GEOMETRIES = [
    (1, 1, 1, None),
    (1, 2, 1, (3, 3)),
    (2, 2, 2, (3, 1)),
    (2, 1, 2, (5, 3)),
    ("same", 1, 2, (3, 3)),
    ("valid", 2, 1, (1, 3)),
    ((0, 2), 1, 1, (3, 3)),
]


def conv_net(ndim: int, **conv_kwargs: object) -> nn.Module:
    conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[ndim - 1]
    return nn.Sequential(conv(3, 4, 3, **conv_kwargs), nn.ReLU()).double()


@pytest.mark.parametrize("mode", PADDING_MODES)
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=str)
def test_deepen_is_exact_at_the_border(mode: str, geometry: tuple) -> None:
    padding, stride, dilation, kernel_size = geometry
    torch.manual_seed(1)
    parent = conv_net(2, padding=padding, stride=stride, dilation=dilation, padding_mode=mode)
    x = border_input((2, 3, 11, 10))
    child, report = deepen(parent, "0", width=12, kernel_size=kernel_size, probe=x, seed=0)
    assert rel_dev(parent, child, x) <= F64_TOL
    assert report.rel_dev_f64 <= F64_TOL and report.rel_dev <= F64_TOL
    assert report.train_mode_holds and report.train_rel_dev_f64 <= F64_TOL
    assert report.scope == "model" and report.exact and report.residual <= 1e-12
    first = child[0][0]
    if isinstance(first, nn.Sequential):  # reflect/circular growth: mode pad, then zeros
        assert mode in ("reflect", "circular") and first[1].padding_mode == "zeros"
        assert type(first[0]).__name__.startswith(("Reflection", "Circular"))
    else:
        assert isinstance(first, nn.Conv2d) and first.padding_mode == mode
    assert isinstance(child[0][1], PActivation)


def test_same_padding_in_both_layers_is_not_exact_at_the_border() -> None:
    """The check has teeth: padding inside the pair (the naive layout) breaks the border of a
    one-sided general solution (width 24: not nearly square, so no identity-augmented pair,
    whose 1×1 branch and impulse identity would survive the naive layout)."""
    torch.manual_seed(1)
    parent = conv_net(2, padding=1)
    x = border_input((2, 3, 8, 8))
    child, _ = deepen(parent, "0", width=24, kernel_size=(3, 3), probe=x, seed=0)
    assert rel_dev(parent, child, x) <= F64_TOL
    child[0][0].padding = (1, 1)
    child[0][2].padding = (1, 1)
    assert rel_dev(parent, child, x) > 1e-3


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("mode", PADDING_MODES)
def test_deepen_same_padding_even_kernel_is_exact(mode: str) -> None:
    torch.manual_seed(2)
    parent = nn.Sequential(nn.Conv2d(3, 4, 4, padding="same", padding_mode=mode)).double()
    x = border_input((2, 3, 9, 9))
    child, _ = deepen(parent, "0", width=24, kernel_size=(4, 3), probe=x, seed=0)
    assert rel_dev(parent, child, x) <= F64_TOL
    pad = child[0][0]
    assert isinstance(
        pad[0], (nn.ConstantPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d, nn.CircularPad2d)
    )
    if mode in ("reflect", "circular"):  # the parent's pad in its mode, the growth in zeros
        assert pad[0].padding == (1, 2, 1, 2) and pad[1].padding == (1, 1)
    else:  # "same" for K = 4 is (1, 2), grown by 1 per side
        assert pad[0].padding == (2, 3, 2, 3)


def test_stride_goes_to_f1_when_f2_is_pointwise_else_to_f2() -> None:
    torch.manual_seed(3)
    parent = conv_net(2, padding=1, stride=2)
    x = border_input((2, 3, 9, 9))
    child, _ = deepen(parent, "0", width=8, kernel_size=(3, 1), probe=x, seed=0)
    assert child[0][0].stride == (2, 2) and child[0][2].stride == (1, 1)
    assert child[0][0].padding == (1, 1) and child[0][2].padding == (0, 0)
    child, _ = deepen(parent, "0", width=12, kernel_size=(1, 3), probe=x, seed=0)
    assert child[0][0].stride == (1, 1) and child[0][2].stride == (2, 2)
    assert child[0][0].padding == (1, 1) and child[0][2].padding == (0, 0)


@pytest.mark.parametrize("ndim", [1, 3])
def test_deepen_conv1d_conv3d(ndim: int) -> None:
    torch.manual_seed(4)
    parent = conv_net(ndim, padding=1, stride=2, padding_mode="reflect")
    x = border_input((2, 3, *(7,) * ndim))
    width = 20 if ndim == 1 else 100
    child, report = deepen(parent, "0", width=width, kernel_size=(3, 3), probe=x, seed=0)
    assert rel_dev(parent, child, x) <= F64_TOL
    assert report.params_after == sum(p.numel() for p in child.parameters())


def test_deepen_linear_on_token_tensors() -> None:
    torch.manual_seed(5)
    parent = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    x = torch.randn(2, 4, 6, dtype=torch.float64)
    child, report = deepen(parent, "0", width=9, activation="tanh", probe=x, seed=0)
    assert rel_dev(parent, child, x) <= F64_TOL
    assert [type(m) for m in child[0]] == [nn.Linear, PActivation, nn.Linear]
    assert child[0][1].base_name == "tanh"
    assert report.params_before == 6 * 5 + 5 + 5 * 3 + 3
    assert report.params_after == report.params_before - (6 * 5 + 5) + (6 * 9 + 9 + 9 * 5 + 5 + 1)


@pytest.mark.parametrize(("c_in", "c_out"), [(4, 48), (48, 4)])
def test_deepen_linear_defaults_to_the_narrower_side(c_in: int, c_out: int) -> None:
    """A Linear layer's rank is at most min(in, out), the default width: an up-projection
    d → 12d deepens to d → d → 12d (not a 12d × 12d layer), exactly."""
    torch.manual_seed(2)
    parent = nn.Sequential(nn.Linear(c_in, c_out), nn.Tanh(), nn.Linear(c_out, 3)).double()
    x = torch.randn(5, c_in, dtype=torch.float64)
    child, report = deepen(parent, "0", probe=x, seed=0)
    first, last = child[0][0], child[0][2]
    assert (first.in_features, first.out_features, last.out_features) == (c_in, 4, c_out)
    assert rel_dev(parent, child, x) <= F64_TOL and report.rel_dev_f64 <= F64_TOL


def test_deepen_without_bias_has_no_bias() -> None:
    torch.manual_seed(6)
    parent = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False)).double()
    x = border_input((2, 3, 6, 6))
    child, _ = deepen(parent, "0", width=6, probe=x, seed=0)
    assert all(m.bias is None for m in child.modules() if isinstance(m, nn.Conv2d))
    assert rel_dev(parent, child, x) <= F64_TOL


def test_deepen_with_batch_norm_is_exact_in_eval_mode_only() -> None:
    torch.manual_seed(7)
    parent = conv_net(2, padding=1).eval()
    x = border_input((2, 3, 6, 6))
    child, report = deepen(parent, "0", width=6, batch_norm=True, probe=x, seed=0)
    bn = child[0][1]
    assert isinstance(bn, nn.BatchNorm2d)
    assert not any(m.training for m in child.modules())  # the parent's mode: eval
    assert torch.equal(bn.weight.detach(), torch.sqrt(bn.running_var + bn.eps))
    assert torch.equal(bn.bias.detach(), bn.running_mean)
    assert report.rel_dev_f64 <= F64_TOL
    assert report.train_mode_holds is False and report.train_rel_dev_f64 > 1e-3
    assert any("train mode" in note for note in report.notes)


def test_deepen_practical_method() -> None:
    torch.manual_seed(8)
    parent = conv_net(2, padding=1)
    x = border_input((2, 3, 7, 7))
    child, report = deepen(
        parent, "0", width=6, kernel_size=(3, 3), method="practical", probe=x, seed=0
    )
    assert rel_dev(parent, child, x) <= F64_TOL
    assert report.exact and 0 < report.new_nonzero_ratio <= 1


def test_float32_model_is_solved_in_float64_and_cast_back() -> None:
    torch.manual_seed(9)
    parent = conv_net(2, padding=1).float()
    x = border_input((2, 3, 6, 6)).float()
    child, report = deepen(parent, "0", width=8, probe=x, seed=0)
    assert all(p.dtype == torch.float32 for p in child.parameters())
    assert report.dtype == "float32"
    assert report.rel_dev <= 1e-5 and report.rel_dev_f64 <= 1e-6


def test_bfloat16_model_reports_its_rounding() -> None:
    torch.manual_seed(10)
    parent = conv_net(2, padding=1).to(torch.bfloat16)
    x = border_input((2, 3, 6, 6)).to(torch.bfloat16)
    child, report = deepen(parent, "0", width=8, probe=x, seed=0)
    assert all(p.dtype == torch.bfloat16 for p in child.parameters())
    assert report.dtype == "bfloat16"
    assert 0 < report.rel_dev_f64 <= 5e-2
    assert report.residual <= 1e-12  # the float64 solve is exact; the rounding is the deviation


def test_probe_inferred_from_the_model() -> None:
    torch.manual_seed(11)
    parent = cifar_net("cifar_111", image_size=16, width_divisor=8).double()
    _, report = deepen(parent, "features.3", seed=0)
    assert report.scope == "model" and report.probe_shapes == ((2, 3, 16, 16),)
    assert report.rel_dev_f64 <= F64_TOL
    _, report = deepen(parent, "features.3", input_shape=(1, 3, 16, 16), seed=0)
    assert report.probe_shapes == ((1, 3, 16, 16),)


def test_layer_scope_when_no_model_input_is_found() -> None:
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return self.conv(x) + y

    torch.manual_seed(12)
    parent = Odd().double()
    child, report = deepen(parent, "conv", width=6, seed=0)
    assert report.scope == "layer" and report.rel_dev_f64 <= F64_TOL
    assert any("layer alone" in note for note in report.notes)
    x, y = border_input((2, 3, 5, 5)), torch.randn(2, 4, 5, 5, dtype=torch.float64)
    with torch.no_grad():
        assert float((parent(x, y) - child(x, y)).abs().max()) <= 1e-12


def test_tol_raises_when_deviation_exceeds_it() -> None:
    torch.manual_seed(13)
    parent = conv_net(2, padding=1).float()
    x = border_input((2, 3, 6, 6)).float()
    with pytest.raises(ValueError, match="above tol"):
        deepen(parent, "0", width=8, probe=x, tol=1e-12, seed=0)
    _, report = deepen(parent, "0", width=8, probe=x, tol=1e-5, seed=0)
    assert report.rel_dev_f64 <= 1e-5


@pytest.mark.parametrize("mode", PADDING_MODES)
@pytest.mark.parametrize(
    "geometry", [(1, 1, 1), (1, 2, 2), ("same", 1, 2), ("valid", 2, 1)], ids=str
)
def test_grow_kernel_is_exact(mode: str, geometry: tuple) -> None:
    padding, stride, dilation = geometry
    torch.manual_seed(14)
    parent = conv_net(2, padding=padding, stride=stride, dilation=dilation, padding_mode=mode)
    x = border_input((2, 3, 12, 11))
    child, report = grow_kernel(parent, "0", (5, 7), probe=x)
    conv, name = child[0], "0"
    if mode in ("reflect", "circular"):  # the parent's pad in its mode, the growth in zeros
        if padding != "valid":
            assert type(conv[0]).__name__.startswith(("Reflection", "Circular"))
            conv, name = conv[1], "0.1"
        assert conv.padding_mode == "zeros"
        assert conv.padding == (dilation, 2 * dilation)
    else:
        assert conv.padding_mode == mode
    assert type(conv) is nn.Conv2d and conv.kernel_size == (5, 7)
    assert conv.stride == (stride, stride)
    assert rel_dev(parent, child, x) <= F64_TOL
    assert report.new_nonzero_ratio == pytest.approx(9 / 35)
    assert set(report.param_sources) == {f"{name}.weight", f"{name}.bias"}
    index = report.param_sources[f"{name}.weight"].index
    assert index[:2] == (None, None)
    np.testing.assert_array_equal(index[2], [-1, 0, 1, 2, -1])
    np.testing.assert_array_equal(index[3], [-1, -1, 0, 1, 2, -1, -1])


def test_grow_kernel_conv1d_and_table1_ksize_step() -> None:
    torch.manual_seed(15)
    parent = conv_net(1, padding=1, padding_mode="circular")
    x = border_input((2, 3, 9))
    child, _ = grow_kernel(parent, "0", 7, probe=x)
    assert rel_dev(parent, child, x) <= F64_TOL


def test_morph_subnet_conv_and_linear() -> None:
    torch.manual_seed(16)
    parent = conv_net(2, padding=1, stride=2, padding_mode="replicate")
    x = border_input((2, 3, 9, 9))
    layers = [(6, 1), (12, 3), (None, 1)]
    child, report = morph_subnet(parent, "0", layers, probe=x, seed=0)
    convs = [m for m in child[0] if isinstance(m, nn.Conv2d)]
    assert [c.kernel_size for c in convs] == [(1, 1), (3, 3), (1, 1)]
    assert [c.stride for c in convs] == [(1, 1), (2, 2), (1, 1)]
    assert [c.padding for c in convs] == [(1, 1), (0, 0), (0, 0)]
    assert rel_dev(parent, child, x) <= F64_TOL and report.exact
    lin = nn.Sequential(nn.Linear(5, 4)).double()
    xl = torch.randn(3, 5, dtype=torch.float64)
    child, _ = morph_subnet(
        lin, "0", [(8, None), (8, None), (4, None)], activation="elu", probe=xl, seed=0
    )
    assert rel_dev(lin, child, xl) <= F64_TOL
    assert sum(isinstance(m, PActivation) for m in child.modules()) == 2


@pytest.mark.parametrize("split", ["random", "equal"])
def test_morph_stacked_sums_branches(split: str) -> None:
    torch.manual_seed(17)
    parent = conv_net(2, padding=1, padding_mode="reflect")
    x = border_input((2, 3, 8, 8))
    branches = [[(None, 3)], [(12, 3), (None, 1)], [(None, 5)]]
    child, report = morph_stacked(parent, "0", branches, split=split, probe=x, seed=0)
    stacked = child[0]
    assert isinstance(stacked, StackedBranches) and len(stacked.branches) == 3
    assert rel_dev(parent, child, x) <= F64_TOL
    assert report.exact and report.residual <= 1e-12
    convs = [[m for m in b.modules() if isinstance(m, nn.Conv2d)] for b in stacked.branches]
    biases = [c[-1].bias for c in convs]
    assert torch.equal(biases[0], parent[0].bias) and not biases[1].any()


def test_state_dict_save_and_load() -> None:
    torch.manual_seed(18)
    parent = conv_net(2, padding=1)
    x = border_input((2, 3, 6, 6))
    child, _ = deepen(parent, "0", width=8, kernel_size=(3, 1), probe=x, seed=0)
    state = io.BytesIO()
    torch.save(child.state_dict(), state)
    state.seek(0)
    # The architecture depends on the arguments, not on the seed: replay, then load.
    rebuilt, _ = deepen(parent, "0", width=8, kernel_size=(3, 1), probe=x, seed=1)
    rebuilt.load_state_dict(torch.load(state))
    with torch.no_grad():
        assert torch.equal(rebuilt(x), child(x))
    whole = io.BytesIO()
    torch.save(child, whole)
    whole.seek(0)
    loaded = torch.load(whole, weights_only=False)
    with torch.no_grad():
        assert torch.equal(loaded(x), child(x))


def test_deepen_stable_has_no_zero_weights():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1))
    model = model.double()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    child, report = deepen(model, "2", width=8, kernel_size=(3, 3), method="stable", seed=0)
    new = [m.weight for m in child.modules() if isinstance(m, nn.Conv2d)][1:]
    assert len(new) == 2 and all(bool((w != 0).all()) for w in new)
    assert rel_dev(model, child, x) <= F64_TOL
    assert report.new_nonzero_ratio == 1.0
