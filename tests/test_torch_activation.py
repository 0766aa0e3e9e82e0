"""PActivation: φ^a = (1 − a)·φ + a·x as an nn.Module (NetMorph §3.3)."""

from __future__ import annotations

import functools
import io
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from netmorph_core.activations import p_activation  # noqa: E402
from netmorph_core.torch import PActivation  # noqa: E402
from netmorph_core.torch.activation import BASES, make_activation  # noqa: E402

NAMES = sorted(BASES)


def _x() -> torch.Tensor:
    return torch.linspace(-4, 4, 41, dtype=torch.float64).reshape(1, 41)


@pytest.mark.parametrize("base", NAMES)
def test_a_one_is_exactly_the_identity(base: str) -> None:
    x = _x()
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        act = PActivation(base).to(dtype)
        xd = x.to(dtype)
        assert torch.equal(act(xd), xd)


@pytest.mark.parametrize("base", NAMES)
def test_a_zero_is_the_base_and_matches_numpy(base: str) -> None:
    x = _x()
    assert torch.equal(PActivation(base, a=0.0).double()(x), BASES[base](x))
    y = PActivation(base, a=0.3, dtype=torch.float64)(x)
    ref = p_activation(base, 0.3)(x.numpy())
    np.testing.assert_allclose(y.detach().numpy(), ref, rtol=1e-12, atol=1e-12)


def test_relu_base_is_prelu_with_slope_a() -> None:
    x = _x()
    prelu = nn.PReLU(init=0.3).double()
    np.testing.assert_allclose(
        PActivation("relu", a=0.3).double()(x).detach(), prelu(x).detach(), rtol=0, atol=1e-15
    )


def test_learnable_a_is_a_parameter_with_gradient() -> None:
    act = PActivation("tanh").double()
    assert isinstance(act.a, nn.Parameter) and act.a.shape == ()
    act(_x()).sum().backward()
    # d/da [(1 − a)·tanh(x) + a·x] = Σ (x − tanh x)
    expected = float((_x() - torch.tanh(_x())).sum())
    assert act.a.grad is not None and abs(float(act.a.grad) - expected) < 1e-12


def test_fixed_a_is_a_buffer() -> None:
    act = PActivation("gelu", a=0.5, learnable=False)
    assert list(act.parameters()) == []
    assert "a" in dict(act.named_buffers())


@pytest.mark.parametrize("learnable", [True, False])
def test_state_dict_round_trips(learnable: bool) -> None:
    src = PActivation("silu", a=0.25, learnable=learnable)
    buf = io.BytesIO()
    torch.save(src.state_dict(), buf)
    buf.seek(0)
    dst = PActivation("silu", a=1.0, learnable=learnable)
    dst.load_state_dict(torch.load(buf))
    assert float(dst.a.detach()) == 0.25
    x = _x().float()
    assert torch.equal(dst(x), src(x))


def test_callable_bases() -> None:
    x = _x()
    fn = PActivation(torch.sin, a=0.0).double()
    assert torch.equal(fn(x), torch.sin(x))
    mod = PActivation(nn.Softplus(beta=2.0), a=0.5).double()
    assert isinstance(mod.phi, nn.Module)
    assert torch.allclose(mod(x), 0.5 * nn.functional.softplus(x, beta=2.0) + 0.5 * x)


def test_make_activation() -> None:
    act = make_activation("prelu")
    assert act.base_name == "relu" and float(act.a.detach()) == 1.0
    assert make_activation("tanh").base_name == "tanh"
    with pytest.raises(TypeError, match="activation"):
        make_activation(3)
    with pytest.raises(TypeError, match="PActivation instance"):
        make_activation(PActivation())


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="base must be one of"):
        PActivation("swish")
    with pytest.raises(TypeError, match="base"):
        PActivation(3)
    with pytest.raises(TypeError, match="a must be a real number"):
        PActivation("relu", a="1")
    with pytest.raises(TypeError, match="learnable"):
        PActivation("relu", learnable=1)


def test_core_import_does_not_import_torch() -> None:
    code = "import sys, netmorph_core; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    ("name", "base"),
    [
        ("PReLU", "relu"),
        ("prelu", "relu"),
        ("RELU", "relu"),
        ("PTanh", "tanh"),
        ("PSigmoid", "sigmoid"),
        ("PELU", "elu"),
        ("PGELU", "gelu"),
        ("PSiLU", "silu"),
        ("LeakyReLU", "leaky_relu"),
        ("PLeakyReLU", "leaky_relu"),
        ("leaky-relu", "leaky_relu"),
    ],
)
def test_paper_and_base_names_in_any_case(name: str, base: str) -> None:
    act = PActivation(name, a=0.0).double()
    assert act.base_name == base and torch.equal(act(_x()), BASES[base](_x()))
    assert make_activation(name).base_name == base


def test_unknown_name_lists_the_accepted_names() -> None:
    with pytest.raises(ValueError, match="base must be one of") as info:
        PActivation("swish")
    assert all(n in str(info.value) for n in ("relu", "tanh", "PReLU", "PTanh", "PSigmoid"))


@pytest.mark.parametrize("a", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_a_is_a_value_error(a: float) -> None:
    with pytest.raises(ValueError, match="a must be finite"):
        PActivation("relu", a=a)


@pytest.mark.parametrize(
    "base",
    [
        nn.ReLU(inplace=True),
        nn.LeakyReLU(0.1, inplace=True),
        functools.partial(torch.nn.functional.relu, inplace=True),
        lambda x: x.relu_(),
    ],
    ids=["ReLU", "LeakyReLU", "partial", "lambda"],
)
def test_in_place_bases_never_write_into_the_input(base: object) -> None:
    x = _x()
    before = x.clone()
    assert torch.equal(PActivation(base)(x), before)
    assert torch.equal(x, before)
    y = PActivation(base, a=0.25)(x)
    assert torch.equal(x, before)
    expected = 0.75 * torch.nn.functional.leaky_relu(
        before, 0.1 if isinstance(base, nn.LeakyReLU) else 0.0
    )
    torch.testing.assert_close(y, expected + 0.25 * before, rtol=0, atol=1e-15)


def test_in_place_module_is_copied_not_changed() -> None:
    relu = nn.ReLU(inplace=True)
    act = PActivation(relu)
    assert relu.inplace and act.phi is not relu and not act.phi.inplace
    softplus = nn.Softplus()
    assert PActivation(softplus).phi is softplus
