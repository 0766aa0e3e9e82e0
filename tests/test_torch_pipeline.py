"""The morph pipeline: every public operation goes through its steps; the per-module float64
measurement catches a wrong region; what the adapter does not understand is refused by name;
tracing, probing and measuring never change the parent."""

from __future__ import annotations

import copy
import inspect

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.nn.utils import parametrizations, prune  # noqa: E402

import netmorph_core.torch as nt  # noqa: E402
from netmorph_core.morph.graph import Module, conv_edge  # noqa: E402
from netmorph_core.torch import MorphError, pipeline, streamed  # noqa: E402
from netmorph_core.torch.models import GQAttention, LlamaStyle  # noqa: E402
from netmorph_core.torch.pipeline import Request, run  # noqa: E402
from netmorph_core.torch.report import Outcome  # noqa: E402
from netmorph_core.torch.streamed import Region, float64_calls  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Not morphs: optimizer state, class registration, graphs, and reloading a saved child.
NOT_OPERATIONS = {"remap_optimizer", "register_same_padding_conv", "trace_model", "load_grown"}


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).double()


def cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 3)).double()


def llama(dtype: torch.dtype = torch.float64, layers: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return LlamaStyle(vocab=32, dim=16, layers=layers, num_heads=4, num_kv_heads=2, hidden=24).to(
        dtype
    )


def gpt2() -> nn.Module:
    from thirdparty import import_transformers

    try:
        transformers = import_transformers()
    except ImportError:
        pytest.skip("transformers is not installed")
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_embd=16, n_head=2, n_layer=1, vocab_size=32, n_positions=8, attn_implementation="eager"
    )
    config.resid_pdrop = config.embd_pdrop = config.attn_pdrop = 0.0
    return transformers.GPT2LMHeadModel(config).double().eval()


def hf_llama() -> nn.Module:
    from thirdparty import import_transformers

    try:
        transformers = import_transformers()
    except ImportError:
        pytest.skip("transformers is not installed")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        hidden_size=16,
        intermediate_size=24,
        num_hidden_layers=1,
        num_attention_heads=2,
        vocab_size=32,
        max_position_embeddings=16,
    )
    return transformers.LlamaForCausalLM(config).double().eval()


def tiny_moe() -> nn.Module:
    from moe_models import TinyMoeLM

    torch.manual_seed(0)
    return TinyMoeLM(vocab=32).double()


X_MLP = (torch.randn(3, 4, generator=torch.Generator().manual_seed(1)).double(),)
X_CNN = (torch.randn(2, 2, 6, 6, generator=torch.Generator().manual_seed(1)).double(),)
SPEC = Module([conv_edge("a", "s", "m", 3), conv_edge("b", "m", "t", 1)], channels={"m": 4})

#: One call of every public operation on a small model of its kind.
CASES = {
    "deepen": lambda: nt.deepen(mlp(), "0", probe=X_MLP),
    "widen": lambda: nt.widen(mlp(), "0", 8, probe=X_MLP),
    "grow_kernel": lambda: nt.grow_kernel(cnn(), "0", 5, probe=X_CNN),
    "morph_subnet": lambda: nt.morph_subnet(mlp(), "0", [(8, None), (6, None)], probe=X_MLP),
    "morph_stacked": lambda: nt.morph_stacked(
        mlp(), "0", [[(None, None)], [(None, None)]], probe=X_MLP
    ),
    "morph_module": lambda: nt.morph_module(cnn(), "0", SPEC, probe=X_CNN),
    "grow_ffn": lambda: nt.grow_ffn(llama(), 30),
    "add_heads": lambda: nt.add_heads(llama(), 6),
    "grow_width": lambda: nt.grow_width(llama(), 24),
    "add_block": lambda: nt.add_block(llama(), 1),
    "deepen_projection": lambda: nt.deepen_projection(llama(), "layers.0.mlp.up_proj"),
    "conv1d_to_linear": lambda: nt.conv1d_to_linear(gpt2()),
    "add_experts": lambda: nt.add_experts(tiny_moe(), 2),
    "upcycle": lambda: nt.upcycle(hf_llama(), 4, 2),
}


def _operations() -> list[str]:
    names = []
    for name in nt.__all__:
        obj = getattr(nt, name)
        if inspect.isfunction(obj) and name not in NOT_OPERATIONS:
            names.append(name)
    return names


def test_every_public_operation_has_a_case() -> None:
    """A new public operation fails here until it is added to CASES (and so to the check
    below that it runs through the pipeline)."""
    assert sorted(_operations()) == sorted(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_operation_runs_every_pipeline_step(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    called: list[str] = []
    for step in pipeline.STEPS:
        original = getattr(pipeline, step)

        def spy(*args: object, _step: str = step, _f: object = original, **kw: object) -> object:
            called.append(_step)
            return _f(*args, **kw)

        monkeypatch.setattr(pipeline, step, spy)
    _, report = CASES[name]()
    assert called == list(pipeline.STEPS)
    assert report.modes[0] == "eval" and report.measured_by == pipeline.COPIES
    assert report.rel_dev_f64 is not None and report.rel_dev_f64 <= 1e-8


# ---------------------------------------------------------------------------------------------
# Measurement one module at a time


def _outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return copy.deepcopy(model).double().eval()(x)


IDS = (torch.randint(0, 32, (2, 6), generator=torch.Generator().manual_seed(2)),)
TRANSFORMER_OPS = {
    "grow_ffn": lambda m: nt.grow_ffn(m, 30, probe=IDS),
    "add_heads": lambda m: nt.add_heads(m, 6, probe=IDS),
    "grow_width": lambda m: nt.grow_width(m, 24, probe=IDS),
    "grow_width_3d+1": lambda m: nt.grow_width(m, 49, probe=IDS),
    "add_block_inside": lambda m: nt.add_block(m, 1, probe=IDS),
    "add_block_end": lambda m: nt.add_block(m, 3, probe=IDS),
    "deepen_projection": lambda m: nt.deepen_projection(m, "layers.1.self_attn.o_proj", probe=IDS),
    "deepen": lambda m: nt.deepen(m, "layers.2.mlp.down_proj", probe=IDS),
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("op", sorted(TRANSFORMER_OPS))
def test_per_module_measurement_accepts_exact_children(
    op: str, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pipeline, "WHOLE_COPY_LIMIT", 0)
    monkeypatch.setattr(streamed, "LINEAR_CHUNK", 200)  # the head and wide layers in chunks
    parent = llama(dtype)
    before = {k: v.clone() for k, v in parent.state_dict().items()}
    child, report = TRANSFORMER_OPS[op](parent)
    assert report.measured_by == pipeline.STREAMED
    assert report.regions and all(
        dev <= 1e-8 or dtype != torch.float64 for _, dev in report.regions
    )
    assert report.modes == ("eval", "train")
    assert all(torch.equal(before[k], v) for k, v in parent.state_dict().items())
    assert all(p.dtype == dtype for p in child.parameters())
    if dtype == torch.float64:
        assert report.rel_dev_f64 <= 1e-8
        deviation = (_outputs(child, IDS[0]) - _outputs(parent, IDS[0])).abs().max()
        assert float(deviation) <= 1e-8 * float(_outputs(parent, IDS[0]).abs().max())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_per_module_and_whole_copy_measurements_agree(
    dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, whole = nt.grow_ffn(llama(dtype), 30, probe=IDS)
    monkeypatch.setattr(pipeline, "WHOLE_COPY_LIMIT", 0)
    _, streamed = nt.grow_ffn(llama(dtype), 30, probe=IDS)
    assert whole.measured_by == pipeline.COPIES and streamed.measured_by == pipeline.STREAMED
    if dtype == torch.float64:
        assert whole.rel_dev_f64 <= 1e-12 and streamed.rel_dev_f64 <= 1e-12
    else:
        assert streamed.parent_noise == pytest.approx(whole.parent_noise, rel=0.5)
        assert streamed.rel_dev == pytest.approx(whole.rel_dev, rel=1e-6, abs=1e-9)


INPLACE_OPS = {
    "grow_ffn": lambda m: nt.grow_ffn(m, 30, probe=IDS, inplace=True),
    "add_heads": lambda m: nt.add_heads(m, 6, probe=IDS, inplace=True),
    "grow_width": lambda m: nt.grow_width(m, 24, probe=IDS, inplace=True),
    "add_block": lambda m: nt.add_block(m, 3, probe=IDS, inplace=True),
    "deepen_projection": lambda m: nt.deepen_projection(
        m, "layers.1.mlp.up_proj", probe=IDS, inplace=True
    ),
}


@pytest.mark.parametrize("op", sorted(INPLACE_OPS))
def test_inplace_builds_the_child_in_the_parent(op: str) -> None:
    parent = llama()
    reference = copy.deepcopy(parent)
    child, report = INPLACE_OPS[op](parent)
    assert child is parent and report.measured_by == pipeline.STREAMED
    assert report.params_before == sum(p.numel() for p in reference.parameters())
    expected = _outputs(reference, IDS[0])
    deviation = (_outputs(child, IDS[0]) - expected).abs().max()
    assert float(deviation) <= 1e-8 * float(expected.abs().max())
    with pytest.raises(TypeError, match="inplace must be a bool"):
        nt.grow_ffn(llama(), 30, inplace=1)


def _storages(model: nn.Module) -> set[int]:
    return {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}


@pytest.mark.parametrize("op", sorted(TRANSFORMER_OPS))
def test_a_child_built_on_shared_tensors_shares_no_memory_with_its_parent(
    op: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The copy the child is built on holds the parent's tensors where the operation replaces
    them; the child returned holds none of them (an optimizer step on it leaves the parent)."""
    monkeypatch.setattr(pipeline, "WHOLE_COPY_LIMIT", 0)
    parent = llama(torch.bfloat16)
    before = {k: v.clone() for k, v in parent.state_dict().items()}
    child, _ = TRANSFORMER_OPS[op](parent)
    assert not _storages(child) & _storages(parent)
    with torch.no_grad():
        for p in child.parameters():
            p.add_(1.0)
    assert all(torch.equal(before[k], v) for k, v in parent.state_dict().items())


def test_unshare_clones_shared_tensors_and_keeps_ties() -> None:
    parent = nn.Sequential(nn.Embedding(5, 3), nn.Linear(3, 5, bias=False))
    parent[1].weight = nn.Parameter(torch.randn(5, 3))
    child = pipeline.child_copy(parent, ("0",))
    assert child[0].weight is parent[0].weight and child[1].weight is not parent[1].weight
    child[1].weight = child[0].weight  # tied in the child
    pipeline.unshare(parent, child)
    assert child[0].weight is child[1].weight and child[0].weight is not parent[0].weight
    assert torch.equal(child[0].weight, parent[0].weight)
    assert not _storages(child) & _storages(parent)


class ZeroAux(nn.Module):
    """Train mode adds 0 · aux(h): the parent's train mode changes no output bit, a child whose
    hidden layer aux cannot read fails in train mode only."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.aux = nn.Linear(4, 6), nn.Linear(6, 3), nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc1(x))
        out = self.fc2(h)
        return out + 0.0 * self.aux(h) if self.training else out


@pytest.mark.parametrize("limit", [pipeline.WHOLE_COPY_LIMIT, 0], ids=["copies", "per_module"])
def test_train_mode_is_verified_on_both_measurements(
    limit: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Per module, a train mode that changes no output bit of parent and child is verified
    without float64 train passes; any other goes through the float64 train-mode check."""
    monkeypatch.setattr(pipeline, "WHOLE_COPY_LIMIT", limit)
    torch.manual_seed(0)
    with pytest.raises(MorphError, match="in train mode the child fails"):
        nt.widen(ZeroAux().double().eval(), "fc1", 8, probe=X_MLP)
    with pytest.raises(MorphError, match="in train mode the child fails"):
        nt.widen(AuxHead().double().eval(), "fc1", 8, probe=X_MLP)
    with pytest.raises(MorphError, match="in train mode the child deviates"):
        nt.widen(TrainScale().double().eval(), "fc1", 8, probe=X_MLP, zero_side="outer")
    dropout = nn.Sequential(nn.Linear(4, 6), nn.Dropout(0.5), nn.Linear(6, 3)).double()
    _, report = nt.widen(dropout, "0", 8, probe=X_MLP)
    assert report.modes == ("eval",) and any("train mode differs" in n for n in report.notes)
    _, report = nt.deepen(mlp(), "0", probe=X_MLP)
    assert report.modes == ("eval", "train")


def _scaled(name: str, factor: float) -> object:
    def build(child: nn.Module) -> Outcome:
        with torch.no_grad():
            child.get_submodule(name).weight.mul_(factor)
        return Outcome(0, 0)

    return build


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=str)
def test_per_module_measurement_names_a_wrong_block(
    dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pipeline, "WHOLE_COPY_LIMIT", 0)
    factor = 1 + 1e-6 if dtype == torch.float64 else 1.5
    request = Request(
        "wrong",
        llama(dtype),
        ("layers.1",),
        _scaled("layers.1.mlp.down_proj", factor),
        regions=(Region("layers.1", "layers.1"),),
        probe=IDS,
        layer_scope=False,
    )
    with pytest.raises(MorphError, match=r"wrong: 'layers.1'.*deviates from the .*parent"):
        run(request)


def test_a_build_writing_into_a_tensor_it_declared_replaced_is_a_defect(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The copy holds the parent's own tensors where the build declares it replaces them: a
    build that writes into one instead (here ×1, so the parent keeps its values) is stopped
    as a defect, not returned as a child."""
    monkeypatch.setattr(pipeline, "WHOLE_COPY_LIMIT", 0)
    parent = llama()
    before = parent.layers[1].mlp.down_proj.weight.clone()
    request = Request(
        "wrong",
        parent,
        ("layers.1",),
        _scaled("layers.1.mlp.down_proj", 1.0),
        replaced=("layers.1.mlp.down_proj",),
        probe=IDS,
        layer_scope=False,
    )
    with pytest.raises(RuntimeError, match="wrote into 1 of the parent's tensors"):
        run(request)
    assert torch.equal(parent.layers[1].mlp.down_proj.weight, before)


def test_per_module_measurement_catches_a_wrong_child_outside_its_regions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pipeline, "WHOLE_COPY_LIMIT", 0)
    request = Request(
        "wrong",
        llama(),
        ("lm_head",),
        _scaled("lm_head", 1 + 1e-6),
        regions=(Region("layers.1", "layers.1"),),
        probe=IDS,
        layer_scope=False,
    )
    with pytest.raises(MorphError, match=r"wrong at \['lm_head'\].*above tol='auto'"):
        run(request)


@pytest.mark.parametrize("chunk", [1 << 22, 100], ids=["whole", "chunked"])
def test_float64_calls_computes_in_float64_and_restores_the_tensors(
    chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(streamed, "LINEAR_CHUNK", chunk)
    model = llama(torch.bfloat16)
    before = [(p, p.data_ptr(), p.dtype) for p in model.parameters()]
    reference = copy.deepcopy(model).double()
    with torch.no_grad(), float64_calls(model):
        out = model(IDS[0])
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, reference(IDS[0]), rtol=1e-12, atol=1e-12)
    assert all(p.data_ptr() == ptr and p.dtype == dt for p, ptr, dt in before)
    assert all("forward" not in vars(m) for m in model.modules())


# ---------------------------------------------------------------------------------------------
# What the adapter does not understand, refused by name


class LoraLinear(nn.Module):
    """A LoRA-style wrapper: base(x) + B·A·x."""

    def __init__(self, base: nn.Linear, rank: int = 2) -> None:
        super().__init__()
        self.base_layer = base
        self.lora_A = nn.Linear(base.in_features, rank, bias=False)
        self.lora_B = nn.Linear(rank, base.out_features, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_layer(x) + self.lora_B(self.lora_A(x))


class ScaledLinear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * super().forward(x)


def _lora_mlp() -> nn.Module:
    model = mlp()
    model[0] = LoraLinear(model[0]).double()
    return model


def _pruned_mlp() -> nn.Module:
    model = mlp()
    prune.l1_unstructured(model[2], "weight", amount=0.3)
    return model


def _quantised() -> nn.Module:
    import warnings

    import torch.ao.nn.quantized as nnq

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch deprecates its quantised tensors
        return nn.Sequential(nnq.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))


def _llama_with(where: str, module: nn.Module) -> nn.Module:
    model = llama()
    owner, _, attr = where.rpartition(".")
    setattr(model.get_submodule(owner), attr, module.double())
    return model


class MixtureOfExperts(nn.Module):
    def __init__(self, dim: int = 16, hidden: int = 24, experts: int = 2) -> None:
        super().__init__()
        self.router = nn.Linear(dim, experts, bias=False)
        self.experts = nn.ModuleList(nn.Linear(dim, dim) for _ in range(experts))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.router(x).softmax(-1)
        return sum(gate[..., i : i + 1] * e(x) for i, e in enumerate(self.experts))


class CustomAttention(GQAttention):
    """Another attention class in one block of the stack (what it computes is not known)."""


def _custom_attention_llama() -> nn.Module:
    model = llama()
    custom = CustomAttention(16, 4, 2, 4)
    custom.load_state_dict(model.layers[2].self_attn.state_dict())
    model.layers[2].self_attn = custom.double()
    return model


def _spectral_llama() -> nn.Module:
    model = llama()
    parametrizations.spectral_norm(model.layers[0].mlp.down_proj)
    return model


def _hooked(where: str, kind: str) -> nn.Module:
    model = llama()
    module = model.get_submodule(where)
    if kind == "pre":
        module.register_forward_pre_hook(lambda m, args: (args[0] * 1.01,))
    else:
        module.register_forward_hook(lambda m, args, out: out + 0.01)
    return model


REFUSALS = {
    "lora": (lambda: nt.deepen(_lora_mlp(), "0", probe=X_MLP), MorphError, "LoRA.*merge"),
    "lora_widen": (lambda: nt.widen(_lora_mlp(), "0", 8, probe=X_MLP), MorphError, "LoRA"),
    "pruned": (lambda: nt.deepen(_pruned_mlp(), "2", probe=X_MLP), MorphError, r"prune\.remove"),
    "pruned_elsewhere": (
        lambda: nt.deepen(_pruned_mlp(), "0", probe=X_MLP),
        MorphError,
        r"'2' \(L1Unstructured\).*prune\.remove",
    ),
    "quantised": (lambda: nt.deepen(_quantised(), "0"), MorphError, "quantised layer"),
    "scripted": (
        lambda: nt.deepen(torch.jit.script(mlp()), "0", probe=X_MLP),
        MorphError,
        "TorchScript",
    ),
    "parametrized_transformer": (
        lambda: nt.grow_ffn(_spectral_llama(), 30),
        MorphError,
        "parametrizations",
    ),
    "subclass_forward": (
        lambda: nt.deepen_projection(
            _llama_with("layers.0.mlp.up_proj", ScaledLinear(16, 24)), "layers.0.mlp.up_proj"
        ),
        MorphError,
        "ScaledLinear .*overrides forward",
    ),
    "forward_pre_hook": (
        lambda: nt.deepen_projection(
            _hooked("layers.0.mlp.up_proj", "pre"), "layers.0.mlp.up_proj"
        ),
        MorphError,
        "forward pre-hook",
    ),
    "forward_hook_ffn": (
        lambda: nt.grow_ffn(_hooked("layers.1.mlp.down_proj", "post"), 30),
        MorphError,
        "forward hook",
    ),
    "block_hook_copied": (
        lambda: nt.add_block(_hooked("layers.1", "post"), 1),
        MorphError,
        r"'layers.1' .*forward hook",
    ),
    "hook_under_grow_width": (
        lambda: nt.grow_width(_hooked("layers.0.input_layernorm", "post"), 24),
        MorphError,
        "forward hook",
    ),
    "moe_block": (
        lambda: nt.grow_ffn(_llama_with("layers.1.mlp", MixtureOfExperts()), 30),
        MorphError,
        r"layers\.1.*MixtureOfExperts",
    ),
    "custom_attention": (
        lambda: nt.add_heads(_custom_attention_llama(), 6),
        MorphError,
        r"'layers\.2\.self_attn' is .*CustomAttention, block 0's is .*GQAttention",
    ),
    "lora_in_transformer": (
        lambda: nt.add_heads(
            _llama_with("layers.0.self_attn.q_proj", LoraLinear(nn.Linear(16, 16, bias=False))), 6
        ),
        MorphError,
        "LoRA",
    ),
    "meta_probe": (
        lambda: nt.deepen(mlp(), "0", probe=torch.empty(3, 4, device="meta")),
        TypeError,
        "probe.*meta",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_what_is_not_understood_is_refused_by_name(case: str) -> None:
    call, error, match = REFUSALS[case]
    with pytest.raises(error, match=match):
        call()


# ---------------------------------------------------------------------------------------------
# Non-finite values


def test_non_finite_parameters_are_refused_by_name() -> None:
    model = mlp()
    with torch.no_grad():
        model[2].weight[0, 0] = float("nan")
        model[0].bias[1] = float("inf")
    with pytest.raises(MorphError, match=r"0\.bias \(0 NaN, 1 Inf\), 2\.weight \(1 NaN, 0 Inf\)"):
        nt.widen(model, "0", 8, probe=X_MLP)
    with pytest.raises(MorphError, match="not finite"):
        nt.grow_ffn(_nan_llama(), 30)


def _nan_llama() -> nn.Module:
    model = llama()
    with torch.no_grad():
        model.layers[0].mlp.gate_proj.weight[0, 0] = float("nan")
    return model


@pytest.mark.parametrize("tol", ["auto", None])
def test_non_finite_outputs_are_refused_whatever_tol(tol: object) -> None:
    probe = X_MLP[0].clone()
    probe[0, 0] = float("inf")
    with pytest.raises(
        MorphError, match=r"the parent Sequential.*outputs on the probe are not finite \(output 0"
    ):
        nt.deepen(mlp(), "0", probe=probe, tol=tol)


# ---------------------------------------------------------------------------------------------
# The parent is never run, modes


class Counting(nn.Module):
    """Counts its calls and caches its features: tracing or probing it would change it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 6), nn.Linear(6, 3)
        self.calls = 0
        self.cached: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        h = torch.relu(self.fc1(x))
        self.cached = h
        return self.fc2(h)


@pytest.mark.parametrize(
    "call",
    [
        lambda m: nt.widen(m, "fc1", 8, probe=X_MLP),
        lambda m: nt.deepen(m, "fc1", probe=X_MLP),
        lambda m: nt.trace_model(m),
    ],
    ids=["widen", "deepen", "trace_model"],
)
def test_tracing_and_probing_never_run_the_parent(call: object) -> None:
    torch.manual_seed(0)
    parent = Counting().double()
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    call(parent)
    assert parent.calls == 0 and parent.cached is None
    assert torch.equal(torch.rand(3), expected)


class AuxHead(nn.Module):
    """An auxiliary head read only in train mode."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 6), nn.Linear(6, 3)
        self.aux = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc1(x))
        out = self.fc2(h)
        if self.training:
            out = out + self.aux(h)
        return out


class TrainScale(nn.Module):
    """Train mode reads the features through a mean the trace never sees."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 6), nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc1(x))
        out = self.fc2(h)
        return out * h.mean() if self.training else out


def test_a_train_only_branch_the_trace_misses_is_refused() -> None:
    torch.manual_seed(0)
    with pytest.raises(MorphError, match="in train mode the child fails"):
        nt.widen(AuxHead().double().eval(), "fc1", 8, probe=X_MLP)
    with pytest.raises(MorphError, match="in train mode the child deviates"):
        nt.widen(TrainScale().double().eval(), "fc1", 8, probe=X_MLP, zero_side="outer")


def test_the_report_names_the_verified_modes() -> None:
    _, report = nt.deepen(mlp(), "0", probe=X_MLP)
    assert report.modes == ("eval", "train")
    model = nn.Sequential(nn.Linear(4, 6), nn.Dropout(0.5), nn.Linear(6, 3)).double()
    _, report = nt.widen(model, "0", 8, probe=X_MLP)
    assert report.modes == ("eval",) or report.train_mode_holds


def test_a_model_whose_copies_do_not_fit_is_measured_per_module(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The memory check never refuses what fits: float64 copies of parent and child need
    4× the float64 model's bytes, the per-module measurement about 1× plus one module."""
    parent = llama()
    state = sum(p.numel() * p.element_size() for p in parent.parameters())
    monkeypatch.setenv("NETMORPH_MAX_BYTES", str(3 * state))
    _, report = nt.grow_ffn(parent, 30, probe=IDS)
    assert report.measured_by == pipeline.STREAMED and report.rel_dev_f64 <= 1e-8
    monkeypatch.setenv("NETMORPH_MAX_BYTES", str(state // 2))
    with pytest.raises(ValueError, match=r"grow_ffn at \['.+'\]: the child and its per-module"):
        nt.grow_ffn(parent, 30, probe=IDS)
