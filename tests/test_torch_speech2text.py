"""Speech2Text's encoder alone (``Speech2TextEncoder``) and ``widen`` through the GLU of its
convolution subsampler.

The encoder's stream enters as √d·glu(conv(features)) plus sinusoidal positions from a buffer
(``embed_positions.weights``): both are found as its writers (zero, the stream entering block 0
is zero). ``grow_ffn``, ``add_heads``, ``add_block`` and ``widen`` of a query projection are
exact in float64 and reload; ``grow_width`` is refused on the encoder and on the
encoder–decoder, naming the position table (a wider model rebuilds it with other frequencies).
``widen`` of the subsampler's first convolution grows both halves of its GLU.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
from thirdparty import import_transformers  # noqa: E402

from netmorph_core.torch import (  # noqa: E402
    MorphError,
    add_block,
    add_heads,
    grow_ffn,
    grow_width,
    load_grown,
    widen,
)

try:
    transformers = import_transformers()
except ImportError:
    pytest.skip("transformers is not installed", allow_module_level=True)

from transformers.models.speech_to_text.modeling_speech_to_text import (  # noqa: E402
    Speech2TextEncoder,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: bench/acceptance_speech.py's config: two stride-2 convolutions (16 channels, then 2·32).
CONFIG = dict(
    d_model=32,
    encoder_layers=2,
    decoder_layers=2,
    encoder_attention_heads=4,
    decoder_attention_heads=4,
    encoder_ffn_dim=64,
    decoder_ffn_dim=64,
    input_feat_per_channel=8,
    conv_channels=16,
    max_source_positions=64,
    max_target_positions=64,
    vocab_size=50,
)
TOL = 1e-9


def _redraw(model: torch.nn.Module) -> torch.nn.Module:
    """Norm gains in [0.5, 1.5], biases in [−0.2, 0.2]."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 and "norm" in name and name.endswith("weight"):
                p.uniform_(0.5, 1.5)
            elif p.dim() == 1:
                p.uniform_(-0.2, 0.2)
    return model


def _encoder() -> torch.nn.Module:
    torch.manual_seed(0)
    return _redraw(Speech2TextEncoder(transformers.Speech2TextConfig(**CONFIG)).eval().double())


def _full() -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.Speech2TextConfig(**CONFIG)
    model = transformers.Speech2TextForConditionalGeneration(config)
    return _redraw(model.eval().double())


FEATURES = torch.randn(2, 32, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
IDS = torch.randint(0, 50, (2, 5), generator=torch.Generator().manual_seed(2))


def _out(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        if isinstance(model, Speech2TextEncoder):
            return model(FEATURES).last_hidden_state
        return model(FEATURES, decoder_input_ids=IDS).logits


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).abs().max() / want.abs().max())


def _reloaded(child: torch.nn.Module, notes: tuple[str, ...], path: Path) -> torch.nn.Module:
    """``save_pretrained``, then the stock ``from_pretrained`` where the report says the config
    describes the child, else ``load_grown``."""
    child.save_pretrained(path)
    if any("reloads this child exactly" in n for n in notes):
        return type(child).from_pretrained(path, dtype=torch.float64).eval()
    assert any("cannot describe" in n for n in notes), notes
    return load_grown(path).eval()


ENCODER_OPS: dict[str, tuple[Callable, bool]] = {  # operation → (call, stock reload)
    "grow_ffn": (lambda m: grow_ffn(m, 80), True),
    "add_heads": (lambda m: add_heads(m, 6), False),
    "add_block": (lambda m: add_block(m, 1), True),
    "widen q_proj": (lambda m: widen(m, "layers.0.self_attn.q_proj", 40), False),
    "widen conv": (lambda m: widen(m, "conv.conv_layers.0", 20), False),
}


@pytest.mark.parametrize("op", ENCODER_OPS)
def test_encoder_alone_is_exact_and_reloads(op: str, tmp_path: Path) -> None:
    parent = _encoder()
    before = {k: v.clone() for k, v in parent.state_dict().items()}
    want = _out(parent)
    call, stock = ENCODER_OPS[op]
    child, report = call(parent)
    assert report.rel_dev_f64 <= TOL and _rel(_out(child), want) <= TOL
    assert all(torch.equal(before[k], v) for k, v in parent.state_dict().items())
    assert any("reloads this child exactly" in n for n in report.notes) is stock
    assert _rel(_out(_reloaded(child, report.notes, tmp_path)), want) <= TOL


def test_encoder_alone_grows_its_config() -> None:
    """The stock reload builds the grown sizes: encoder_ffn_dim and encoder_layers."""
    ffn, _ = grow_ffn(_encoder(), 80)
    deeper, _ = add_block(_encoder(), 1)
    assert ffn.config.encoder_ffn_dim == 80 and ffn.layers[1].fc1.out_features == 80
    assert deeper.config.encoder_layers == 3 and len(deeper.layers) == 3


def test_widen_through_the_glu_grows_both_halves() -> None:
    """conv_layers.0 (16 = 2·8 outputs, halved by GLU) to 20: 2 new channels in each half,
    so conv_layers.1 reads 10 channels."""
    parent = _encoder()
    for side in ("inner", "outer"):
        child, report = widen(parent, "conv.conv_layers.0", 20, zero_side=side, seed=3)
        assert report.rel_dev_f64 <= TOL and _rel(_out(child), _out(parent)) <= TOL
        assert child.conv.conv_layers[0].out_channels == 20
        assert child.conv.conv_layers[1].in_channels == 10


def test_widen_through_the_glu_of_the_full_model(tmp_path: Path) -> None:
    parent = _full()
    before = {k: v.clone() for k, v in parent.state_dict().items()}
    want = _out(parent)
    child, report = widen(parent, "model.encoder.conv.conv_layers.0", 24)
    assert report.rel_dev_f64 <= TOL and _rel(_out(child), want) <= TOL
    assert child.model.encoder.conv.conv_layers[1].in_channels == 12
    assert all(torch.equal(before[k], v) for k, v in parent.state_dict().items())
    assert _rel(_out(_reloaded(child, report.notes, tmp_path)), want) <= TOL


@pytest.mark.parametrize("full", [False, True])
def test_widen_through_the_glu_needs_an_even_width(full: bool) -> None:
    parent = _full() if full else _encoder()
    at = "model.encoder.conv.conv_layers.0" if full else "conv.conv_layers.0"
    with pytest.raises(ValueError, match=r"width=21: .*GLU.*must be even"):
        widen(parent, at, 21)


def test_widening_the_last_convolution_widens_the_stream() -> None:
    """conv_layers.1's GLU output is the stream: refused naming the sum with the positions."""
    with pytest.raises(MorphError, match=r"adds the widened channels .* grow_width"):
        widen(_encoder(), "conv.conv_layers.1", 72)


@pytest.mark.parametrize("width", [48, 64])
@pytest.mark.parametrize("full", [False, True])
def test_grow_width_is_refused_naming_the_position_table(full: bool, width: int) -> None:
    """A model of width d' rebuilds its sinusoidal table with d'/2 other frequencies, not the
    copies [p; …; p] the child's stream [x; …; x] needs: refused on the encoder alone and on
    the encoder–decoder (before its tied head is looked at)."""
    parent = _full() if full else _encoder()
    before = {k: v.clone() for k, v in parent.state_dict().items()}
    name = "model.encoder.embed_positions" if full else "embed_positions"
    with pytest.raises(
        MorphError,
        match=rf"d_model={width}: '{name}' \(Speech2TextSinusoidalPositionalEmbedding\) adds "
        r"to the stream a position table .*\[p; …; p\]",
    ):
        grow_width(parent, width)
    assert all(torch.equal(before[k], v) for k, v in parent.state_dict().items())
