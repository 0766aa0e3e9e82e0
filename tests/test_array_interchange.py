"""The public API accepts torch tensors (and CuPy arrays on a GPU) and returns the same type."""

from __future__ import annotations

import numpy as np
import pytest

import netmorph_core as nm
from conftest import rel_err

torch = pytest.importorskip("torch")
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_cpu_tensors_round_trip(rng):
    f2 = rng.standard_normal((4, 3, 3, 3))
    f1 = rng.standard_normal((3, 2, 1, 3))
    g = nm.compose(torch.from_numpy(f2), torch.from_numpy(f1))
    assert isinstance(g, torch.Tensor) and g.dtype == torch.float64
    assert rel_err(g.numpy(), nm.compose(f2, f1)) <= 1e-15
    x = nm.deconv(g, outer=torch.from_numpy(f2), kernel_size=(1, 3))
    assert isinstance(x, torch.Tensor)
    assert nm.residual(g, torch.from_numpy(f2), x) <= 1e-12


def test_tensors_requiring_grad_are_left_alone(rng):
    f2 = torch.randn(3, 2, 3, dtype=torch.float64, requires_grad=True)
    f1 = torch.randn(2, 2, 3, dtype=torch.float64, requires_grad=True)
    before = f2.detach().clone()
    g = nm.compose(f2, f1)
    assert not g.requires_grad
    assert torch.equal(f2.detach(), before)


def test_unsupported_tensor_dtype_names_argument():
    with pytest.raises(TypeError, match="F1 must have dtype float32 or float64"):
        nm.compose(torch.ones(2, 2), torch.ones(2, 2, dtype=torch.bfloat16))


def test_unsupported_device_is_refused():
    with pytest.raises(ValueError, match="same device"):
        nm.compose(torch.ones(2, 2), torch.ones(2, 2, device="meta"))


@cuda
def test_cuda_tensors_run_on_gpu_and_come_back(rng):
    f2 = torch.from_numpy(rng.standard_normal((5, 4, 3, 3))).cuda()
    f1 = torch.from_numpy(rng.standard_normal((4, 3, 3, 3))).cuda()
    g = nm.compose(f2, f1)
    assert isinstance(g, torch.Tensor) and g.is_cuda
    assert rel_err(g.cpu().numpy(), nm.compose(f2.cpu().numpy(), f1.cpu().numpy())) <= 1e-12
    x = nm.deconv(g, outer=f2, kernel_size=3)
    assert x.is_cuda
    assert nm.residual(g, f2, x) <= 1e-10


@cuda
def test_arrays_on_different_devices_are_refused(rng):
    f2 = torch.ones(2, 2, dtype=torch.float64).cuda()
    with pytest.raises(ValueError, match="same device"):
        nm.compose(f2, np.ones((2, 2)))
