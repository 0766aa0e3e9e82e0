"""``widen`` of a transformer block's feed-forward input layer where the exported graph cannot
follow it (Falcon's ``FalconLinear`` is not a call in the graph; ALBERT's shared ``ffn`` is
called at every depth): the block's
feed-forward hidden size grows (``grow_ffn`` of that one block). Float64 models: the child
computes the parent's logits (1e-9), the parent is unchanged and the child reloads exactly
(stock ``from_pretrained`` where the config describes it, else ``load_grown``)."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
from thirdparty import import_transformers  # noqa: E402

from netmorph_core.torch import load_grown, widen  # noqa: E402
from netmorph_core.torch.ffn_widen import feed_forward_input  # noqa: E402

try:
    transformers = import_transformers()
except ImportError:  # pragma: no cover - the test extra installs it
    pytest.skip("transformers is not installed", allow_module_level=True)

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

TINY = dict(hidden_size=32, num_attention_heads=4, num_hidden_layers=2, vocab_size=100)
#: model → (class, config class, config, the layer widened, width, new hidden size, reload)
MODELS = {
    "Falcon": (
        "FalconForCausalLM",
        "FalconConfig",
        TINY,
        "transformer.h.1.mlp.dense_h_to_4h",
        160,
        160,
        "load_grown",
    ),
    "ALBERT (one layer at every depth)": (
        "AlbertForMaskedLM",
        "AlbertConfig",
        dict(TINY, intermediate_size=64, embedding_size=16),
        "albert.encoder.albert_layer_groups.0.albert_layers.0.ffn",
        96,
        96,
        "stock",
    ),
}


def _parent(name: str) -> torch.nn.Module:
    class_name, config_name, config = MODELS[name][:3]
    torch.manual_seed(0)
    model = getattr(transformers, class_name)(getattr(transformers, config_name)(**config))
    with torch.no_grad():
        for key, p in model.named_parameters():
            if "norm" not in key.lower():
                p.normal_(0.0, 0.2 if p.dim() > 1 else 0.1)
    return model.double().eval()


def _logits(model: torch.nn.Module) -> torch.Tensor:
    ids = torch.randint(1, 100, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("name", MODELS)
def test_widening_a_feed_forward_input_grows_its_block(name: str, tmp_path: Path) -> None:
    at, width, hidden, reload = MODELS[name][3:]
    parent = _parent(name)
    before = {k: v.clone() for k, v in parent.state_dict().items()}
    want = _logits(parent)
    child, report = widen(parent, at, width)
    torch.testing.assert_close(_logits(child), want, rtol=0, atol=1e-9)
    assert report.operation == "widen" and report.targets == (at,)
    assert f"hidden size grows to {hidden} (grow_ffn of block" in report.notes[0]
    assert child.get_submodule(at).out_features == width
    assert all(torch.equal(before[k], v) for k, v in parent.state_dict().items())
    child.save_pretrained(tmp_path)
    if reload == "stock":
        reloaded = type(parent).from_pretrained(tmp_path, dtype=torch.float64)
    else:
        with pytest.raises(ValueError, match="does not recognize this architecture"):
            transformers.AutoConfig.from_pretrained(tmp_path)  # the marked model_type
        reloaded = load_grown(tmp_path)
    torch.testing.assert_close(_logits(reloaded.eval()), want, rtol=0, atol=1e-9)


def test_a_shared_layer_grows_once_for_every_depth() -> None:
    name = "ALBERT (one layer at every depth)"
    child, report = widen(_parent(name), MODELS[name][3], 96)
    assert "run at all 2 depths, grows once" in report.notes[0]
    assert child.config.intermediate_size == 96
    assert len(child.albert.encoder.albert_layer_groups[0].albert_layers) == 1


def test_feed_forward_inputs_are_found_by_block() -> None:
    config = transformers.Phi3Config(
        **TINY, intermediate_size=64, num_key_value_heads=2, pad_token_id=0
    )
    phi3 = transformers.Phi3ForCausalLM(config)
    found = feed_forward_input(phi3, "model.layers.1.mlp.gate_up_proj")  # rows [gate; up]
    assert (found.block, found.rows, found.depths) == (1, 2, 1)
    assert feed_forward_input(phi3, "model.layers.1.mlp.down_proj") is None
    albert = _parent("ALBERT (one layer at every depth)")
    found = feed_forward_input(albert, MODELS["ALBERT (one layer at every depth)"][3])
    assert (found.block, found.rows, found.depths) == (0, 1, 2)
    t5 = transformers.T5ForConditionalGeneration(
        transformers.T5Config(vocab_size=100, d_model=32, d_kv=8, d_ff=64, num_layers=2)
    )
    assert feed_forward_input(t5, "decoder.block.1.layer.2.DenseReluDense.wi").block == 3
