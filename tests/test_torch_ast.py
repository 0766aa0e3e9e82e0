"""The Audio Spectrogram Transformer (``ASTForAudioClassification``): a ViT over the patches of
(frames, mel bins) filter banks, found by structure once its default probe is known (its config's
``max_length`` frames of ``num_mel_bins``).

``grow_ffn``, ``add_heads``, ``add_block`` and ``grow_width`` to whole copies of the stream
are exact in float64 and reload with the stock ``from_pretrained``; ``deepen_projection`` and
``widen`` of a query projection are exact and reload with ``load_grown``. The classifier
normalises the two pooled tokens again (a LayerNorm outside the stack, after the final one):
``grow_width`` grows it as a norm of the stream, so a width that is not a multiple of the
stream's is refused naming it.
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
    deepen_projection,
    grow_ffn,
    grow_width,
    load_grown,
    widen,
)

try:
    transformers = import_transformers()
except ImportError:
    pytest.skip("transformers is not installed", allow_module_level=True)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CONFIG = dict(
    hidden_size=32,
    num_attention_heads=4,
    num_hidden_layers=2,
    intermediate_size=64,
    patch_size=8,
    frequency_stride=8,
    time_stride=8,
    max_length=32,
    num_mel_bins=32,
    num_labels=3,
)
STACK = "audio_spectrogram_transformer.layers"
TOL = 1e-9

Op = Callable[[torch.nn.Module], tuple[torch.nn.Module, object]]
#: operation → (call, whether the stock from_pretrained reloads the child).
OPS: dict[str, tuple[Op, bool]] = {
    "grow_ffn": (lambda m: grow_ffn(m, 96), True),
    "add_heads": (lambda m: add_heads(m, 8), True),
    "add_block": (lambda m: add_block(m, 1), True),
    "grow_width x2": (lambda m: grow_width(m, 64), True),
    "grow_width x3": (lambda m: grow_width(m, 96), True),
    "deepen_projection": (lambda m: deepen_projection(m, f"{STACK}.0.attention.o_proj"), False),
    "widen q_proj": (lambda m: widen(m, f"{STACK}.0.attention.q_proj", 48), False),
}


def _parent() -> torch.nn.Module:
    torch.manual_seed(0)
    model = transformers.ASTForAudioClassification(transformers.ASTConfig(**CONFIG))
    model = model.double().eval()
    with torch.no_grad():  # gains and biases that matter
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.uniform_(0.5, 1.5) if name.endswith("weight") else p.uniform_(-0.2, 0.2)
    return model


FEATURES = torch.randn(2, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(FEATURES).logits


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("op", list(OPS))
def test_operation_is_exact_and_reloads(op: str, tmp_path: Path) -> None:
    parent = _parent()
    before = {k: v.clone() for k, v in parent.state_dict().items()}
    call, stock = OPS[op]
    child, report = call(parent)
    assert _rel(_logits(child), _logits(parent)) < TOL
    assert report.params_after > report.params_before
    assert all(torch.equal(v, parent.state_dict()[k]) for k, v in before.items())
    child.save_pretrained(tmp_path)
    if stock:
        reloaded = transformers.ASTForAudioClassification.from_pretrained(tmp_path)
    else:
        assert child.config.model_type.startswith("netmorph-")
        reloaded = load_grown(tmp_path)
    assert _rel(_logits(reloaded.double().eval()), _logits(parent)) < TOL


def test_grow_width_to_a_non_multiple_is_refused_naming_the_classifier_norm() -> None:
    parent = _parent()
    before = {k: v.clone() for k, v in parent.state_dict().items()}
    with pytest.raises(MorphError, match=r"d_model=45 .*'classifier\.layernorm' normalises"):
        grow_width(parent, 45)
    assert all(torch.equal(v, parent.state_dict()[k]) for k, v in before.items())
