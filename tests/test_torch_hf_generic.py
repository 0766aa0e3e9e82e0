"""The generic adapter (deepen, widen, morph_subnet) on Hugging Face models and exported graphs.

Hugging Face models are traced with torch.export; ``widen`` walks the ATen graph
(:mod:`netmorph_core.torch.exported_consumers`). Every morph of a model: the float64 deviation
of the child from the parent on a real forward pass, the parent bitwise unchanged. The walk
itself is also checked on small plain modules exported the same way.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_torch_transformer_hf import (  # noqa: F401 (exact_rmsnorm: a fixture)
    F64_TOL,
    GQA,
    SMALL,
    _inputs,
    _model,
    _rel_dev,
    exact_rmsnorm,
    transformers,
)
from torch import nn

from netmorph_core.torch import (
    MorphError,
    deepen,
    grow_ffn,
    grow_kernel,
    grow_width,
    morph_stacked,
    morph_subnet,
    widen,
)
from netmorph_core.torch.exported_consumers import plan_exported_widening
from netmorph_core.torch.tracing import default_inputs

pytestmark = pytest.mark.usefixtures("one_torch_thread", "exact_rmsnorm")

#: family → (the FFN input layer, the FFN output layer) of block 0, a wider hidden size.
FFN = {
    "llama": ("model.layers.0.mlp.up_proj", "model.layers.0.mlp.down_proj", 80),
    "gpt2": ("transformer.h.0.mlp.c_fc", "transformer.h.0.mlp.c_proj", 150),
    "bert": ("bert.encoder.layer.0.intermediate.dense", "bert.encoder.layer.0.output.dense", 80),
    "vit": ("vit.layers.0.mlp.fc1", "vit.layers.0.mlp.fc2", 80),
}
#: Llama and GPT-2 run by default; BERT and ViT with ``pytest -m thirdparty``.
FAMILIES = [
    "llama",
    "gpt2",
    pytest.param("bert", marks=pytest.mark.thirdparty),
    pytest.param("vit", marks=pytest.mark.thirdparty),
]


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _unchanged(model: nn.Module, before: dict[str, torch.Tensor]) -> bool:
    after = model.state_dict()
    return after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


def _matrix(layer: nn.Module) -> torch.Tensor:
    """(out, in) weight of a Linear or Conv1D layer."""
    return layer.weight.t() if type(layer).__name__ == "Conv1D" else layer.weight


def _new_grad(child: nn.Module, report: object, name: str) -> float:
    """Σ|gradient| over the entries of parameter ``name`` that the morph created."""
    p = child.get_parameter(name)
    new = torch.zeros(p.shape, dtype=torch.bool)
    for axis, index in enumerate(report.param_sources[name].index):
        if index is not None:
            shape = [1] * p.dim()
            shape[axis] = -1
            new |= torch.as_tensor(index < 0).view(shape)
    return float(p.grad[new].abs().sum())


@pytest.mark.parametrize("family", FAMILIES)
def test_deepen_ffn_layer_is_exact(family: str) -> None:
    parent = _model(family)
    before = _state(parent)
    at = FFN[family][0]
    child, report = deepen(parent, at, width=48, seed=0)
    assert _unchanged(parent, before)
    assert isinstance(child.get_submodule(at), nn.Sequential)
    assert report.scope == "model" and report.rel_dev_f64 <= F64_TOL
    assert _rel_dev(parent, child, _inputs(family, torch.float64)) <= F64_TOL


@pytest.mark.parametrize("family", FAMILIES)
def test_widen_ffn_hidden_is_exact(family: str) -> None:
    """The FFN input layer gets more outputs (Llama: gate_proj with it), the output layer as
    many inputs; GPT-2's Conv1D layers keep their type and (in, out) layout."""
    parent = _model(family)
    before = _state(parent)
    first, last, width = FFN[family]
    child, report = widen(parent, first, width, seed=0)
    assert _unchanged(parent, before)
    assert _matrix(child.get_submodule(first)).shape[0] == width
    assert _matrix(child.get_submodule(last)).shape[1] == width
    assert type(child.get_submodule(first)) is type(parent.get_submodule(first))
    if family == "llama":
        assert child.get_submodule("model.layers.0.mlp.gate_proj").weight.shape[0] == width
    assert report.scope == "model" and report.rel_dev_f64 <= F64_TOL
    assert any("config still gives the parent's layer sizes" in n for n in report.notes)
    x = _inputs(family, torch.float64)
    assert _rel_dev(parent, child, x) <= F64_TOL
    child(x).logits.square().mean().backward()  # the new units get gradient
    assert _new_grad(child, report, f"{first}.weight") + _new_grad(child, report, f"{last}.weight")


@pytest.mark.parametrize("zero_side", ["inner", "auto"])
def test_widen_llama_gate_takes_up_with_it(zero_side: str) -> None:
    """Widening gate_proj widens up_proj with it, as grow_ffn grows both (same shapes); exact
    on either side. "auto" picks "outer": with zeroed new gate and up rows SiLU(0)·0 has zero
    gradient, which an explicit "inner" is told."""
    parent = _model("llama")
    x = _inputs("llama", torch.float64)
    child, report = widen(
        parent, "model.layers.1.mlp.gate_proj", 70, zero_side=zero_side, seed=1, probe=x
    )
    assert report.probe_shapes == (tuple(x.shape),)
    assert _rel_dev(parent, child, x) <= F64_TOL
    (note,) = [n for n in report.notes if n.startswith("zero_side=")]
    expected = "'inner': requested" if zero_side == "inner" else "'outer'"
    assert expected in note and "zero gradient" in note
    grown, _ = grow_ffn(parent, 70, layers=[1])
    for name in ("gate_proj", "up_proj", "down_proj"):
        rel = f"model.layers.1.mlp.{name}"
        assert child.get_submodule(rel).weight.shape == grown.get_submodule(rel).weight.shape


@pytest.mark.parametrize(
    ("family", "at", "match"),
    [
        ("llama", "model.layers.0.mlp.down_proj", r"aten\.add \(node .* grow_width"),
        pytest.param(
            "llama",
            "model.layers.0.self_attn.o_proj",
            r"residual stream grows with grow_width",
            marks=pytest.mark.thirdparty,
        ),
        ("llama", "model.layers.0.self_attn.q_proj", r"no exact child: .* rotates all"),
        pytest.param(
            "gpt2",
            "transformer.h.1.mlp.c_proj",
            r"adds the widened channels",
            marks=pytest.mark.thirdparty,
        ),
        pytest.param(
            "vit",
            "vit.embeddings.patch_embeddings.projection",
            r"aten\.cat .* concatenates widened and other tensors \(from 'vit\.embeddings' "
            r"\(ViTEmbeddings\)\) along another axis",
            marks=pytest.mark.thirdparty,
        ),
    ],
)
def test_widen_refusals_name_the_node(family: str, at: str, match: str) -> None:
    parent = _model(family)
    before = _state(parent)
    width = _matrix(parent.get_submodule(at)).shape[0] + 8
    with pytest.raises(MorphError, match=match):
        widen(parent, at, width, seed=0)
    assert _unchanged(parent, before)


def test_gpt2_fused_conv1d_attention_widens_by_whole_heads() -> None:
    """GPT-2's fused ``c_attn`` (a Conv1D of rows [Q; K; V]) grows every head's head_dim
    (12 row blocks of 8 → 10; its ``split_size`` follows); a width that is not 12 whole
    blocks is refused naming them."""
    parent = _model("gpt2")
    before = _state(parent)
    x = _inputs("gpt2", torch.float64)
    child, report = widen(parent, "transformer.h.0.attn.c_attn", 120, seed=0)
    assert _rel_dev(parent, child, x) <= F64_TOL
    assert child.transformer.h[0].attn.split_size == 40
    assert any("grows from head_dim 8 to 10" in n for n in report.notes), report.notes
    with pytest.raises(ValueError, match="holds 12 row blocks"):
        widen(parent, "transformer.h.0.attn.c_attn", 104, seed=0)
    assert _unchanged(parent, before)


def test_gpt2_conv1d_morphs_natively() -> None:
    """morph_subnet and morph_stacked replace a Conv1D by Linear layers computing x·W + b;
    widen keeps Conv1D; grow_kernel refuses it: it has no kernel."""
    parent = _model("gpt2")
    x = _inputs("gpt2", torch.float64)
    child, _ = morph_subnet(
        parent, "transformer.h.1.attn.c_proj", [(40, None), (48, None), (None, None)], seed=0
    )
    assert _rel_dev(parent, child, x) <= F64_TOL
    chain = child.get_submodule("transformer.h.1.attn.c_proj")
    assert [m.weight.shape[0] for m in chain if isinstance(m, nn.Linear)] == [40, 48, 32]
    stacked, _ = morph_stacked(
        parent, "transformer.h.0.mlp.c_fc", [[(None, None)], [(40, None), (None, None)]], seed=0
    )
    assert _rel_dev(parent, stacked, x) <= F64_TOL
    with pytest.raises(TypeError, match=r"is Conv1D, transformers' linear layer .* no kernel"):
        grow_kernel(parent, "transformer.h.0.mlp.c_fc", 3)
    widened, _ = widen(parent, "transformer.h.0.mlp.c_fc", 150, seed=0)
    assert widened.get_submodule("transformer.h.0.mlp.c_fc").weight.shape == (32, 150)
    assert widened.get_submodule("transformer.h.0.mlp.c_proj").weight.shape == (150, 32)
    assert widened.get_submodule("transformer.h.0.mlp.c_fc").nf == 150


def _more_families() -> dict[str, tuple[object, object, str]]:
    """family → (model class, config, FFN input layer), built from tiny configs."""
    tr = transformers
    small = dict(**SMALL, vocab_size=100, max_position_embeddings=32)
    seq2seq = dict(
        d_model=32,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        encoder_layers=1,
        decoder_layers=1,
        vocab_size=100,
        max_position_embeddings=32,
    )
    return {
        "qwen2": (tr.Qwen2ForCausalLM, tr.Qwen2Config(**GQA), "model.layers.0.mlp.gate_proj"),
        "gpt_neox": (
            tr.GPTNeoXForCausalLM,
            tr.GPTNeoXConfig(**small),
            "gpt_neox.layers.0.mlp.dense_h_to_4h",
        ),
        "phi": (tr.PhiForCausalLM, tr.PhiConfig(**small), "model.layers.0.mlp.fc1"),
        "roberta": (
            tr.RobertaForSequenceClassification,
            tr.RobertaConfig(**small),
            "roberta.encoder.layer.0.intermediate.dense",
        ),
        "bart": (
            tr.BartForConditionalGeneration,
            tr.BartConfig(**seq2seq),
            "model.decoder.layers.0.fc1",
        ),
        "swin": (
            tr.SwinForImageClassification,
            tr.SwinConfig(
                image_size=16,
                patch_size=4,
                embed_dim=16,
                depths=[1, 1],
                num_heads=[2, 2],
                window_size=2,
            ),
            "swin.encoder.layers.0.blocks.0.mlp.fc1",
        ),
    }


@pytest.mark.thirdparty
@pytest.mark.parametrize("family", ["qwen2", "gpt_neox", "phi", "roberta", "bart", "swin"])
def test_more_families_ffn_deepen_and_widen(family: str) -> None:
    """Default inputs from the config (an encoder-decoder gets decoder ids too); exact."""
    model_class, config, at = _more_families()[family]
    torch.manual_seed(0)
    parent = model_class(config).to(torch.float64).eval()
    before = _state(parent)
    width = parent.get_submodule(at).out_features + 6
    for child, report in (widen(parent, at, width, seed=0), deepen(parent, at, seed=0)):
        assert report.scope == "model" and report.rel_dev_f64 <= F64_TOL
        assert child.get_submodule(at) is not None
    assert _unchanged(parent, before)


def test_default_inputs_from_the_config() -> None:
    ids = default_inputs(_model("gpt2"))
    assert ids[0].dtype == torch.int64 and ids[0].shape == (2, 8) and int(ids[0].max()) < 100
    assert default_inputs(nn.Linear(2, 2)) is None


class _FixedViewConfig(transformers.PretrainedConfig):
    model_type = "netmorph-fixed-view"


class _FixedView(transformers.PreTrainedModel):
    """A Hugging Face model with no token embedding whose forward writes its hidden size."""

    config_class = _FixedViewConfig

    def __init__(self, config: _FixedViewConfig) -> None:
        super().__init__(config)
        self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)).view(x.shape[0], 6))


def test_hf_model_without_inputs_or_with_a_written_size() -> None:
    """No default inputs: widen asks for a probe. The graph cannot see that the forward
    writes the size 6: the child fails on the probe, a MorphError, the parent unchanged."""
    parent = _FixedView(_FixedViewConfig()).to(torch.float64).eval()
    before = _state(parent)
    assert default_inputs(parent) is None
    with pytest.raises(MorphError, match="needs example inputs; pass probe="):
        widen(parent, "a", 8)
    with pytest.raises(
        MorphError, match=r"the child fails on the probe the parent runs \(RuntimeError"
    ):
        widen(parent, "a", 8, probe=torch.randn(3, 4))
    assert _unchanged(parent, before)


# ---------------------------------------------------------------------------------------------
# The walk on small exported modules


class _SwiGLU(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gate, self.up, self.down = nn.Linear(4, 6), nn.Linear(4, 6), nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(torch.nn.functional.silu(self.gate(x)) * self.up(x))


class _Cat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.out = nn.Linear(4, 3), nn.Linear(4, 2), nn.Linear(5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.cat([self.b(x), torch.relu(self.a(x))], dim=-1)
        return self.out(h.unsqueeze(1).transpose(0, 1).squeeze(0) * 0.5 + 1.0)


class _Transposed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.out = nn.Linear(4, 3), nn.Linear(2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.a(x).transpose(-1, -2))


class _Scaled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.out = nn.Linear(4, 3), nn.Linear(3, 1)
        self.scale = nn.Parameter(torch.ones(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.a(x) * self.scale)


class _GateTwice(_SwiGLU):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + self.gate(x).sum(-1, keepdim=True)


class _ConsumerTwice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.out = nn.Linear(4, 3), nn.Linear(3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.a(x))) + self.out(x[..., :3])


class _ReadsWeight(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.out = nn.Linear(4, 3), nn.Linear(3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.a(x)) + self.a.weight.sum()


def _src(channels: int, width: int) -> np.ndarray:
    return np.concatenate([np.arange(channels), -np.ones(width - channels, int)])


def test_walk_widens_a_swiglu_gate_with_its_partner() -> None:
    plan = plan_exported_widening(_SwiGLU(), ["up"], _src(6, 8), torch.randn(2, 3, 4))
    assert [(u.name, u.kind) for u in plan.uses] == [("down", "linear")]
    assert list(plan.gates) == ["gate"] and plan.dead() is not None


def test_walk_shifts_a_concatenation_and_follows_axis_ops() -> None:
    plan = plan_exported_widening(_Cat(), ["a"], np.array([2, -1, 0, 1]), torch.randn(2, 4))
    (use,) = plan.uses
    assert use.name == "out"
    np.testing.assert_array_equal(use.flow.src, [0, 1, 4, -1, 2, 3])
    assert "aten.add" in plan.zero_broken()  # + 1.0 makes zero channels non-zero


@pytest.mark.parametrize(
    ("module", "at", "match"),
    [
        (_Transposed(), "a", r"aten\.transpose \(node .*\) moves the widened channels off the"),
        (_Scaled(), "a", r"from the parameter 'scale', which is not widened"),
        (
            nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3), nn.Linear(3, 1)),
            "0",
            r"aten\.layer_norm \(node .*, in '1' \(LayerNorm\)\) normalises over the widened "
            r"channels; '1' is a norm \(LayerNorm\): grow_width",
        ),
        (
            nn.Sequential(nn.Linear(4, 3), nn.RMSNorm(3), nn.Linear(3, 1)),
            "0",
            r"in '1' \(RMSNorm\).*is a norm \(RMSNorm\)",
        ),
        (nn.Sequential(nn.Linear(4, 3), nn.Tanh()), "0", r"the model's output"),
        (_GateTwice(), "up", r"the gate 'gate' is called 2 times"),
        (_ConsumerTwice(), "a", r"'out' is also called on tensors that are not widened"),
        (_ReadsWeight(), "a", r"reads 'a\.weight' outside the layer's own call"),
    ],
)
def test_walk_refusals(module: nn.Module, at: str, match: str) -> None:
    channels = module.get_submodule(at).out_features
    with pytest.raises(MorphError, match=match):
        plan_exported_widening(module, [at], _src(channels, channels + 2), torch.randn(2, 4))


def test_a_model_without_token_embeddings_morphs_and_is_refused_by_name() -> None:
    """SegFormer's get_input_embeddings raises NotImplementedError: its layers still deepen
    exactly (the config step reads no embedding), and the transformer operations either work
    per stage or refuse it with a MorphError, not the model's own exception."""
    config = transformers.SegformerConfig(
        num_encoder_blocks=2,
        depths=[1, 1],
        sr_ratios=[2, 1],
        hidden_sizes=[16, 32],
        patch_sizes=[7, 3],
        strides=[4, 2],
        num_attention_heads=[1, 2],
        mlp_ratios=[2, 2],
        num_labels=3,
    )
    torch.manual_seed(0)
    parent = transformers.SegformerForImageClassification(config).double().eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    child, _ = deepen(parent, "segformer.stages.0.blocks.0.mlp.fc1", probe=(x,))
    assert _rel_dev(parent, child, x) <= F64_TOL
    child, _ = grow_ffn(parent, 80, probe=(x,))
    assert _rel_dev(parent, child, x) <= F64_TOL
    with pytest.raises(MorphError, match="d_model=45 is not a multiple of stage 1's width 32"):
        grow_width(parent, 45, probe=(x,))


@pytest.mark.parametrize("operation", ["grow_kernel", "deepen"])
def test_a_layer_operation_on_a_vision_model_reloads_exactly(operation: str, tmp_path) -> None:
    """A ConvNeXt child with a grown depthwise kernel or a deepened pointwise layer: the stock
    load refuses the marked config, load_grown rebuilds the child exactly."""
    from netmorph_core.torch import load_grown

    config = transformers.ConvNextConfig(
        num_stages=2, hidden_sizes=[16, 32], depths=[1, 1], num_labels=3
    )
    torch.manual_seed(0)
    parent = transformers.ConvNextForImageClassification(config).double().eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    block = "convnext.encoder.stages.0.layers.0"
    if operation == "grow_kernel":
        child, _ = grow_kernel(parent, f"{block}.dwconv", 9, probe=(x,))
    else:
        child, _ = deepen(parent, f"{block}.pwconv1", probe=(x,))
    child.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="does not recognize this architecture"):
        transformers.AutoModelForImageClassification.from_pretrained(tmp_path)
    reloaded = load_grown(tmp_path).double()
    assert _rel_dev(parent, reloaded, x) <= F64_TOL


#: vision model → (config, the patch embedding whose weight dtype its forward reads)
PATCH_EMBEDDINGS = {
    "ViT": ("ViTForImageClassification", "ViTConfig", "vit.embeddings.patch_embeddings.projection"),
    "DINOv2": (
        "Dinov2ForImageClassification",
        "Dinov2Config",
        "dinov2.embeddings.patch_embeddings.projection",
    ),
    "CLIP": ("CLIPVisionModel", "CLIPVisionConfig", "embeddings.patch_embedding"),
    "SigLIP": (
        "SiglipVisionModel",
        "SiglipVisionConfig",
        "embeddings.patch_embedding",
    ),
}


@pytest.mark.parametrize("family", PATCH_EMBEDDINGS)
@pytest.mark.parametrize("operation", ["deepen", "morph_subnet"])
def test_a_patch_embedding_read_for_its_dtype_deepens_and_reloads(
    family: str, operation: str, tmp_path
) -> None:
    """The model casts its pixels to ``patch_embedding.weight.dtype``: the layers that replace
    the patch embedding come as a Chain answering that read; the child is exact, and
    load_grown rebuilds the Chain of convolutions exactly."""
    from netmorph_core.torch import load_grown
    from netmorph_core.torch.layer_reads import Chain

    model_name, config_name, at = PATCH_EMBEDDINGS[family]
    config = getattr(transformers, config_name)(
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=4,
        num_hidden_layers=1,
        image_size=16,
        patch_size=8,
    )
    torch.manual_seed(0)
    parent = getattr(transformers, model_name)(config).double().eval()
    before = _state(parent)
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    if operation == "deepen":
        child, _ = deepen(parent, at, probe=(x,))
    else:
        child, _ = morph_subnet(parent, at, [(48, 8), (None, 1)], probe=(x,))
    assert type(child.get_submodule(at)) is Chain
    assert _unchanged(parent, before)

    def out(model: nn.Module) -> torch.Tensor:
        with torch.no_grad():
            result = model(pixel_values=x)
        logits = getattr(result, "logits", None)
        return result.last_hidden_state if logits is None else logits

    want = out(parent)
    torch.testing.assert_close(out(child), want, rtol=0, atol=1e-9)
    child.save_pretrained(tmp_path)
    reloaded = load_grown(tmp_path)
    assert type(reloaded.get_submodule(at)) is Chain
    torch.testing.assert_close(out(reloaded), want, rtol=0, atol=1e-9)


@pytest.mark.parametrize("operation", ["deepen", "morph_subnet", "widen"])
def test_t5_feed_forward_read_for_its_dtype_morphs_and_reloads(operation: str, tmp_path) -> None:
    """T5's feed-forward casts to ``self.wo.weight.dtype`` (after an ``isinstance`` test): a
    widened ``wi`` keeps ``wo`` a Linear, a replaced ``wo`` is a Chain answering the read; the
    children are exact and load_grown rebuilds them."""
    from netmorph_core.torch import load_grown

    config = transformers.T5Config(
        d_model=32, d_ff=64, num_heads=4, d_kv=8, num_layers=2, vocab_size=100
    )
    torch.manual_seed(0)
    parent = transformers.T5EncoderModel(config).double().eval()
    ids = torch.randint(0, 100, (2, 9), generator=torch.Generator().manual_seed(1))
    ffn = "encoder.block.1.layer.1.DenseReluDense"
    if operation == "deepen":
        child, _ = deepen(parent, f"{ffn}.wo", probe=(ids,))
    elif operation == "morph_subnet":
        child, _ = morph_subnet(parent, f"{ffn}.wo", [(40, None), (None, None)], probe=(ids,))
    else:
        child, _ = widen(parent, f"{ffn}.wi", 70, probe=(ids,), seed=0)

    def out(model: nn.Module) -> torch.Tensor:
        with torch.no_grad():
            return model(input_ids=ids).last_hidden_state

    want = out(parent)
    torch.testing.assert_close(out(child), want, rtol=0, atol=1e-9)
    child.save_pretrained(tmp_path)
    torch.testing.assert_close(out(load_grown(tmp_path)), want, rtol=0, atol=1e-9)
