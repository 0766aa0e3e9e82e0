"""What the PyTorch adapter accepts (NumPy integers, NumPy Generator seeds, any integer sequence
as ``input_shape``) and what it refuses by name before any work: probes without values,
inputs and hidden layers that cannot fit, non-floating PActivations, and layer types it does
not morph (quantised, QAT, LoRA-style wrappers, TorchScript) named by their qualified class."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import netmorph_core as nm  # noqa: E402
import netmorph_core.torch.depth as depth_module  # noqa: E402
import netmorph_core.torch.kernel as kernel_module  # noqa: E402
from netmorph_core import ResourceLimitError  # noqa: E402
from netmorph_core.torch import (  # noqa: E402
    MorphError,
    PActivation,
    add_block,
    add_heads,
    deepen,
    deepen_projection,
    grow_ffn,
    grow_kernel,
    grow_width,
    morph_module,
    morph_subnet,
    widen,
)
from netmorph_core.torch.models import LlamaStyle  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).double()


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 3, padding=1)
    ).double()


def _llama() -> LlamaStyle:
    torch.manual_seed(0)
    return LlamaStyle(vocab=16, dim=8, layers=2, num_heads=2, num_kv_heads=1, hidden=8).double()


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


TRANSFORMER_OPS = {
    "grow_ffn": lambda m, **kw: grow_ffn(m, 12, **kw),
    "add_heads": lambda m, **kw: add_heads(m, 4, **kw),
    "grow_width": lambda m, **kw: grow_width(m, 12, **kw),
    "add_block": lambda m, **kw: add_block(m, 1, **kw),
    "deepen_projection": lambda m, **kw: deepen_projection(m, "layers.0.mlp.down_proj", **kw),
}


@pytest.mark.parametrize("op", TRANSFORMER_OPS.values(), ids=TRANSFORMER_OPS.keys())
def test_transformer_ops_take_numpy_generators_deterministically(op) -> None:
    """The same Generator state gives the same child; the caller's generator advances by one
    draw; a NumPy integer seed is the int seed."""
    parent = _llama()
    before = _state(parent)
    first, second = np.random.default_rng(5), np.random.default_rng(5)
    a, report = op(parent, seed=first)
    b, _ = op(parent, seed=second)
    assert _same(a, b) and report.rel_dev_f64 <= 1e-12
    reference = np.random.default_rng(5)
    reference.integers(0, 2**63)
    assert first.bit_generator.state == reference.bit_generator.state
    assert _same(op(parent, seed=np.int64(3))[0], op(parent, seed=3)[0])
    assert all(torch.equal(parent.state_dict()[k], v) for k, v in before.items())


@pytest.mark.parametrize("seed", [-1, 2**64, 1.5, torch.Generator()], ids=str)
def test_transformer_ops_refuse_bad_seeds_before_any_work(seed) -> None:
    error = ValueError if isinstance(seed, int) else TypeError
    with pytest.raises(error, match="seed must be"):
        grow_ffn(_llama(), 12, seed=seed)


def test_numpy_block_indices_are_block_indices() -> None:
    parent = _llama()
    for layers in (np.int64(1), [np.int32(1)], np.array([1]), np.array(1)):
        assert _same(grow_ffn(parent, 12, layers=layers)[0], grow_ffn(parent, 12, layers=1)[0])
    assert _same(add_block(parent, np.int64(1))[0], add_block(parent, 1)[0])
    assert _same(grow_width(parent, np.int64(12), noise=np.float32(0.01))[0],
                 grow_width(parent, 12, noise=np.float32(0.01))[0])  # fmt: skip
    with pytest.raises(TypeError, match=r"layers must be a block index .* got the bool True"):
        grow_ffn(parent, 12, layers=True)
    with pytest.raises(TypeError, match="at must be a block index in \\[0, 2\\], got str '1'"):
        add_block(parent, "1")
    with pytest.raises(ValueError, match=r"layers must be block indices in \[0, 2\), got \[2\]"):
        grow_ffn(parent, 12, layers=np.int64(2))


def test_layer_morphs_take_numpy_integers() -> None:
    parent = _cnn()
    ref = deepen(parent, "0", width=6, kernel_size=(3, 1), seed=0, input_shape=(1, 3, 8, 8))[0]
    got = deepen(
        parent,
        "0",
        width=np.int64(6),
        kernel_size=np.array([3, 1]),
        seed=np.int64(0),
        input_shape=np.array([1, 3, 8, 8]),
    )[0]
    assert _same(ref, got)
    assert _same(grow_kernel(parent, "0", np.array(5))[0], grow_kernel(parent, "0", 5)[0])
    assert _same(
        widen(parent, "0", np.int64(6), seed=np.random.default_rng(0))[0],
        widen(parent, "0", 6, seed=np.random.default_rng(0))[0],
    )


# --- probes and input shapes ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("probe", "match"),
    [
        (torch.ones(2, 4, device="meta"), "probe is on the meta device"),
        (
            torch.nested.nested_tensor([torch.ones(2, 4), torch.ones(3, 4)], layout=torch.jagged),
            "probe is a nested tensor",
        ),
        ((torch.ones(2, 4).to_sparse(),), r"probe\[0\] has layout torch.sparse_coo"),
        (np.ones((2, 4)), r"got numpy.ndarray \(convert arrays with torch.from_numpy\)"),
        ((), "probe must be a tensor or a tuple of tensors"),
    ],
    ids=["meta", "nested", "sparse", "numpy", "empty"],
)
def test_probes_without_values_are_refused_by_name(probe, match) -> None:
    parent = _mlp()
    before = _state(parent)
    with pytest.raises(TypeError, match=match):
        deepen(parent, "0", probe=probe)
    assert all(torch.equal(parent.state_dict()[k], v) for k, v in before.items())


def test_inputs_that_cannot_fit_are_refused_before_allocating() -> None:
    with pytest.raises(ResourceLimitError, match=r"input_shape of shape \(1, 3, 100000, 100000\)"):
        deepen(_cnn(), "0", input_shape=(1, 3, 10**5, 10**5))
    huge = torch.zeros(1, dtype=torch.float64).expand(10**10, 4)  # a view: no memory
    with pytest.raises(ResourceLimitError, match=r"probe of shape \(10000000000, 4\)"):
        deepen(_mlp(), "0", probe=huge)
    with pytest.raises(TypeError, match=r"input_shape\[0\] must be a positive int, got float"):
        deepen(_mlp(), "0", input_shape=(2.0, 4))


def test_a_hidden_layer_that_cannot_fit_is_refused_before_the_solve(monkeypatch) -> None:
    """deepen's hidden layer on the probe's 2·8·8 positions, 5 float64 tensors of it at once:
    refused with the numbers before any solve; a width that fits is not refused."""
    monkeypatch.setenv("NETMORPH_MAX_BYTES", str(1 << 30))  # the new weights fit

    def no_solve(*args: object, **kwargs: object) -> None:
        raise AssertionError("solved before the memory check")

    monkeypatch.setattr(depth_module, "morph_depth", no_solve)
    with pytest.raises(ResourceLimitError, match=r"1000000 channels at 128 positions") as info:
        deepen(_cnn(), "2", width=10**6, input_shape=(2, 3, 8, 8))
    assert "more than the 1.0 GiB allowed" in str(info.value)
    with pytest.raises(ResourceLimitError, match=r"hidden layer of 300000 channels"):
        morph_subnet(_cnn(), "2", [(3 * 10**5, 1), (None, 3)], input_shape=(2, 3, 8, 8))
    wide = nm.Module(
        [nm.conv_edge("a", "s", "u", 1), nm.conv_edge("b", "u", "t", 3)], channels={"u": 10**6}
    )
    with pytest.raises(ResourceLimitError, match=r"hidden layer of 1000000 channels"):
        morph_module(_cnn(), "2", wide, input_shape=(2, 3, 8, 8))
    with pytest.raises(ResourceLimitError, match=r"widen at='0': .* at 2048 positions"):
        widen(_cnn(), "0", 10**5, input_shape=(2, 3, 32, 32))
    monkeypatch.undo()
    _, report = deepen(_cnn(), "2", width=64, input_shape=(2, 3, 8, 8))
    assert report.rel_dev_f64 <= 1e-10


def test_a_grown_kernel_whose_unfolding_cannot_fit_is_refused_before_growing(monkeypatch) -> None:
    """The float64 CPU convolution unfolds C_in·|K| rows × the 8·8 output positions of a
    sample: 3·1001² × 64 float64 (1.4 GiB) is refused at a 1 GiB limit, before the weights
    are grown; kernel 5 is not."""
    monkeypatch.setenv("NETMORPH_MAX_BYTES", str(1 << 30))  # the grown weights fit

    def no_growth(*args: object, **kwargs: object) -> None:
        raise AssertionError("grown before the memory check")

    monkeypatch.setattr(kernel_module, "morph_kernel", no_growth)
    with pytest.raises(ResourceLimitError, match=r"into 3006003 rows × 64 output positions"):
        grow_kernel(_cnn(), "0", 1001, input_shape=(2, 3, 8, 8))
    monkeypatch.undo()
    monkeypatch.setenv("NETMORPH_MAX_BYTES", str(1 << 30))
    _, report = grow_kernel(_cnn(), "0", 5, input_shape=(2, 3, 8, 8))
    assert report.rel_dev_f64 <= 1e-12


# --- PActivation and layer kinds -----------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, torch.complex64, "float64"], ids=str)
def test_pactivation_needs_a_floating_dtype(dtype) -> None:
    with pytest.raises(TypeError, match=r"dtype must be a floating torch\.dtype"):
        PActivation("relu", dtype=dtype)


def test_pactivation_takes_numpy_and_0d_slopes_and_names_a_bad_device() -> None:
    for a in (np.float32(0.25), np.array(0.25), torch.tensor(0.25)):
        act = PActivation("relu", a=a, dtype=torch.float64)
        assert act(torch.tensor([-4.0, 2.0], dtype=torch.float64)).tolist() == [-1.0, 2.0]
    with pytest.raises(ValueError, match=r"device must be a torch\.device or a device string"):
        PActivation("relu", device="nowhere")


class Linear(nn.Module):
    """A LoRA-style wrapper named like the layer it wraps."""

    def __init__(self, base: nn.Linear, rank: int = 2) -> None:
        super().__init__()
        self.base_layer = base
        self.lora_A = nn.Linear(base.in_features, rank, bias=False)
        self.lora_B = nn.Linear(rank, base.out_features, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_layer(x) + self.lora_B(self.lora_A(x))


Linear.__module__ = "adapters.lora"


def _quantised() -> nn.Module:
    import torch.ao.nn.quantized as nnq

    with warnings.catch_warnings():  # quantised tensor constructors are deprecated
        warnings.simplefilter("ignore", UserWarning)
        return nnq.Linear(4, 6)


def _dynamic() -> nn.Module:
    import torch.ao.nn.quantized.dynamic as nnqd

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return nnqd.Linear(4, 6)


def _qat() -> nn.Module:
    import torch.ao.nn.qat as nnqat
    from torch.ao.quantization import get_default_qat_qconfig

    return nnqat.Linear(4, 6, qconfig=get_default_qat_qconfig())


@pytest.mark.parametrize(
    ("make", "label", "advice"),
    [
        (_quantised, "torch.ao.nn.quantized.Linear", "then quantise the child"),
        (_dynamic, "torch.ao.nn.quantized.dynamic.Linear", "then quantise the child"),
        (_qat, "torch.ao.nn.qat.Linear", "then quantise the child"),
        (lambda: Linear(nn.Linear(4, 6)), "adapters.lora.Linear", "merge the adapter"),
        (lambda: torch.jit.script(nn.Linear(4, 6)), "torch.jit.", "then script the child"),
    ],
    ids=["quantised", "dynamic", "qat", "lora", "scripted"],
)
def test_layers_the_adapter_does_not_morph_are_named_with_what_to_do(make, label, advice) -> None:
    model = nn.Sequential(make(), nn.ReLU(), nn.Linear(6, 3))
    for call in (
        lambda: deepen(model, "0"),
        lambda: widen(model, "0", 8),
        lambda: deepen_projection(model, "0"),
    ):
        with pytest.raises(MorphError) as info:
            call()
        message = str(info.value)
        assert "'0' is" in message and label in message and advice in message
        assert "is Linear;" not in message
