"""``widen`` of a query, key or value projection of an encoder–decoder (T5, MT5, UMT5, BART,
Marian, MBart, Pegasus): the self-attention of either stack or the decoder's cross-attention
(whose keys and values read the encoder's output) grows its heads to a larger head_dim. On
tiny float64 models (norm gains, biases and relative attention biases redrawn) the child
computes the parent's logits and encoder output (1e-9), the parent is unchanged, the stock
``from_pretrained`` refuses the marked config loudly and ``load_grown`` rebuilds the child
exactly."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
from thirdparty import import_transformers  # noqa: E402

from netmorph_core.torch import load_grown, widen  # noqa: E402

try:
    transformers = import_transformers()
except ImportError:  # pragma: no cover - the test extra installs it
    pytest.skip("transformers is not installed", allow_module_level=True)

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

T5 = dict(vocab_size=100, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
BART = dict(
    d_model=32,
    encoder_layers=2,
    decoder_layers=2,
    encoder_attention_heads=4,
    decoder_attention_heads=4,
    encoder_ffn_dim=64,
    decoder_ffn_dim=64,
    vocab_size=100,
    max_position_embeddings=32,
)
T5_SELF = "encoder.block.0.layer.0.SelfAttention.q"
T5_CROSS = "decoder.block.1.layer.1.EncDecAttention.k"
T5_DECODER = "decoder.block.0.layer.0.SelfAttention.v"
BART_SELF = "model.encoder.layers.1.self_attn.k_proj"
BART_CROSS = "model.decoder.layers.0.encoder_attn.v_proj"
BART_DECODER = "model.decoder.layers.1.self_attn.q_proj"
#: model → (class, config class, config, the projections widened one at a time)
MODELS = {
    "T5": ("T5ForConditionalGeneration", "T5Config", T5, (T5_SELF, T5_CROSS, T5_DECODER)),
    "MT5 gated": (
        "MT5ForConditionalGeneration",
        "MT5Config",
        dict(T5, feed_forward_proj="gated-gelu"),
        (T5_CROSS,),
    ),
    "UMT5": ("UMT5ForConditionalGeneration", "UMT5Config", T5, (T5_SELF, T5_CROSS)),
    "BART": (
        "BartForConditionalGeneration",
        "BartConfig",
        BART,
        (BART_SELF, BART_CROSS, BART_DECODER),
    ),
    "Marian": ("MarianMTModel", "MarianConfig", dict(BART, pad_token_id=0), (BART_CROSS,)),
    "MBart": ("MBartForConditionalGeneration", "MBartConfig", BART, (BART_SELF,)),
    "Pegasus": ("PegasusForConditionalGeneration", "PegasusConfig", BART, (BART_DECODER,)),
}
CASES = [(name, at) for name, spec in MODELS.items() for at in spec[3]]


def _parent(name: str) -> torch.nn.Module:
    class_name, config_name, config, _ = MODELS[name]
    torch.manual_seed(0)
    model = getattr(transformers, class_name)(getattr(transformers, config_name)(**config))
    with torch.no_grad():
        for key, p in model.named_parameters():
            if "norm" in key and key.endswith("weight"):
                p.uniform_(0.5, 1.5)
            elif p.dim() == 1 or "relative_attention_bias" in key:
                p.uniform_(-0.5, 0.5)
    return model.double().eval()


def _outputs(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 100, (2, 7), generator=gen)
    decoder_ids = torch.randint(1, 100, (2, 5), generator=gen)
    with torch.no_grad():
        out = model(input_ids=ids, decoder_input_ids=decoder_ids)
    return out.logits, out.encoder_last_hidden_state


def _same(got: tuple[torch.Tensor, ...], want: tuple[torch.Tensor, ...]) -> None:
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-9)


@pytest.mark.parametrize(("name", "at"), CASES)
def test_widening_a_projection_of_either_stack_grows_its_heads(
    name: str, at: str, tmp_path: Path
) -> None:
    parent = _parent(name)
    before = {k: v.clone() for k, v in parent.state_dict().items()}
    want = _outputs(parent)
    child, report = widen(parent, at, 48)  # 4 heads of head_dim 8 → 4 heads of 12
    assert report.rel_dev_f64 is not None and report.rel_dev_f64 <= 1e-12
    _same(_outputs(child), want)
    assert child.get_submodule(at).out_features == 48
    attention = child.get_submodule(at.rpartition(".")[0])
    assert any("grows from head_dim 8 to 12" in n for n in report.notes), report.notes
    assert all(torch.equal(before[k], v) for k, v in parent.state_dict().items())
    child.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="does not recognize this architecture"):
        transformers.AutoModelForSeq2SeqLM.from_pretrained(tmp_path)
    reloaded = load_grown(tmp_path).eval()
    _same(_outputs(reloaded), want)
    assert reloaded.get_submodule(at).out_features == 48
    kept = reloaded.get_submodule(at.rpartition(".")[0])
    assert getattr(kept, "scaling", None) == getattr(attention, "scaling", None)


def test_other_blocks_keep_their_head_dim() -> None:
    child, _ = widen(_parent("T5"), T5_CROSS, 48)
    cross = child.decoder.block[1].layer[1].EncDecAttention
    assert (cross.key_value_proj_dim, cross.inner_dim, cross.o.in_features) == (12, 48, 48)
    assert child.decoder.block[1].layer[0].SelfAttention.key_value_proj_dim == 8
    assert child.decoder.block[0].layer[1].EncDecAttention.key_value_proj_dim == 8
    new_keys = cross.k.weight.view(4, 12, 32)[:, 8:]
    assert torch.count_nonzero(new_keys) == 0  # new key coordinates zero: scores unchanged
