"""Checkpoint-to-checkpoint growth: tiny checkpoints written here, grown block by block.

The grown directory loads with the stock ``from_pretrained`` and computes the parent's
logits; its sizes and parameter shapes are those of the same growth done in memory; an
interrupted run leaves nothing at DST; bad input is refused by type before any work.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from thirdparty import import_transformers

from netmorph_core.checkpoint import grow_checkpoint
from netmorph_core.cli import main
from netmorph_core.torch import MorphError, add_block, add_heads, grow_ffn, grow_width

try:
    transformers = import_transformers()
except ImportError:  # pragma: no cover - the test extra installs it
    pytest.skip("transformers is not installed", allow_module_level=True)

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

F32_ATOL = 2e-6
SIZES = dict(
    hidden_size=32,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=64,
    num_hidden_layers=3,
    vocab_size=100,
    max_position_embeddings=32,
)


def _parent(family: str = "llama", **extra: object) -> torch.nn.Module:
    torch.manual_seed(0)
    names = {"llama": "Llama", "qwen2": "Qwen2", "mistral": "Mistral", "gpt2": "GPT2"}
    config_class = getattr(transformers, f"{names[family]}Config")
    if family == "gpt2":
        config = config_class(n_embd=32, n_head=4, n_layer=2, vocab_size=100, n_positions=16)
        return transformers.GPT2LMHeadModel(config).eval()
    model_class = getattr(transformers, f"{names[family]}ForCausalLM")
    model = model_class(config_class(**SIZES, **extra)).eval()
    with torch.no_grad():  # non-trivial norms, so that a wrong rescaling shows
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
            elif name.endswith(".bias"):
                p.uniform_(-0.2, 0.2)
    return model


def _write(model: torch.nn.Module, path: Path, shard: str | None = "30KB") -> Path:
    model.save_pretrained(path, **({"max_shard_size": shard} if shard else {}))
    return path


def _logits(model: torch.nn.Module) -> torch.Tensor:
    ids = torch.randint(0, 100, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model(ids).logits


def test_sharded_llama_grows_like_in_memory_and_loads_stock(tmp_path: Path) -> None:
    parent = _parent()
    src = _write(parent, tmp_path / "src")
    assert (src / "model.safetensors.index.json").is_file()
    summary = grow_checkpoint(
        src, tmp_path / "dst", ffn=1.5, heads=8, width=48, add_blocks=[1, 3], progress=False
    )
    dst = tmp_path / "dst"
    assert (dst / "generation_config.json").is_file()
    child = transformers.AutoModelForCausalLM.from_pretrained(dst).eval()
    torch.testing.assert_close(_logits(child), _logits(parent), rtol=0, atol=F32_ATOL)
    assert [b.parent for b in summary.blocks] == [0, None, 1, 2, None]
    assert all(b.rel_dev <= b.bound for b in summary.blocks)
    assert summary.params_after == sum(p.numel() for p in child.parameters())
    assert summary.params_before == sum(p.numel() for p in parent.parameters())

    in_memory, _ = grow_width(parent, 48)
    in_memory, _ = add_heads(in_memory, 8)
    in_memory, _ = grow_ffn(in_memory, 96)
    in_memory, _ = add_block(in_memory, 3)
    in_memory, _ = add_block(in_memory, 1)
    shapes = {k: tuple(v.shape) for k, v in in_memory.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in child.state_dict().items()} == shapes
    for key in ("hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim"):
        assert getattr(child.config, key) == getattr(in_memory.config, key), key
    assert child.config.intermediate_size == 96
    assert child.config.num_hidden_layers == 5
    assert child.config.rms_norm_eps == pytest.approx(in_memory.config.rms_norm_eps, rel=1e-12)


def test_tied_qwen2_single_file_in_vocabulary_and_unit_slices(tmp_path: Path) -> None:
    """One model.safetensors, a tied head, q/k/v biases; pieces small enough that the
    feed-forward units and the vocabulary are cut into slices."""
    parent = _parent("qwen2", tie_word_embeddings=True)
    src = _write(parent, tmp_path / "src", shard=None)
    summary = grow_checkpoint(
        src,
        tmp_path / "dst",
        ffn=1.25,
        width=64,
        add_blocks=[0],
        piece_params=5000,
        progress=False,
    )
    child = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "dst").eval()
    assert child.config.tie_word_embeddings and child.config.hidden_size == 64
    torch.testing.assert_close(_logits(child), _logits(parent), rtol=0, atol=F32_ATOL)
    assert summary.logits_rel_dev <= 1e-5


def test_cli_grow(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parent = _parent("mistral")
    src = _write(parent, tmp_path / "src")
    dst = tmp_path / "dst"
    assert main(["grow", str(src), str(dst), "--ffn", "1.5", "--no-progress"]) == 0
    assert "verified" in capsys.readouterr().out
    child = transformers.AutoModelForCausalLM.from_pretrained(dst).eval()
    torch.testing.assert_close(_logits(child), _logits(parent), rtol=0, atol=F32_ATOL)
    assert main(["grow", str(src), str(dst), "--ffn", "1.5", "--no-progress"]) == 2
    assert "FileExistsError" in capsys.readouterr().err


def test_interrupted_run_leaves_nothing_at_dst(tmp_path: Path) -> None:
    src = _write(_parent(), tmp_path / "src")

    def interrupt(block: int) -> None:
        if block == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        grow_checkpoint(src, tmp_path / "dst", ffn=1.5, progress=False, on_block=interrupt)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


@pytest.mark.parametrize(
    ("make", "kwargs", "error", "match"),
    [
        (lambda t: t / "absent", {"ffn": 1.5}, FileNotFoundError, "not a directory"),
        (lambda t: t, {"ffn": 1.5}, FileNotFoundError, "no config"),
        (lambda t: _write(_parent("gpt2"), t / "g"), {"ffn": 1.5}, MorphError, "'gpt2'"),
        (lambda t: _write(_parent(), t / "s"), {"ffn": 0.5}, ValueError, "ffn"),
        (lambda t: _write(_parent(), t / "s"), {}, ValueError, "nothing to grow"),
        (lambda t: _write(_parent(), t / "s"), {"heads": 6}, MorphError, "refuses"),
        (lambda t: _write(_parent(), t / "s"), {"add_blocks": [9]}, ValueError, "add_blocks"),
    ],
)
def test_bad_input_is_refused_by_type(
    tmp_path: Path, make: object, kwargs: dict, error: type, match: str
) -> None:
    src = make(tmp_path)
    with pytest.raises(error, match=match):
        grow_checkpoint(src, tmp_path / "dst", progress=False, **kwargs)
    assert not (tmp_path / "dst").exists()


def test_index_names_every_tensor_of_the_stock_child(tmp_path: Path) -> None:
    src = _write(_parent(), tmp_path / "src")
    grow_checkpoint(src, tmp_path / "dst", heads=8, shard_bytes=20_000, progress=False)
    index = json.loads((tmp_path / "dst" / "model.safetensors.index.json").read_text())
    child = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "dst")
    assert set(index["weight_map"]) == set(child.state_dict())
    assert len(set(index["weight_map"].values())) > 1
