"""Transformer operations at language-model sizes: time and extra peak memory of each
operation on Llama shapes built from ``LlamaConfig`` with random trained-like bfloat16 weights
(made on the meta device, then materialised), measured with tol="auto".

- 125M (d 768, 12 layers, 12/4 heads, FFN 2048, vocab 32000): every operation;
- 1.1B (TinyLlama's shape: d 2048, 22 layers, 32/4 heads, FFN 5632; ``full_only``): grow_ffn
  ×1.5, add_heads, grow_width 2048 → 2560, add_block, deepen_projection.

``extra_info`` gives ``extra_peak_x``: the peak resident memory above the parent's while the
operation runs (``/proc/self/status`` VmHWM after resetting it), in units of the parent's
parameter bytes, ``new_params_x``: the parameters the operation adds, in the same units, and
``cpu_seconds``: the process's CPU time (every thread), less sensitive than the wall time to
other work on the machine.
Run with ``MALLOC_MMAP_THRESHOLD_=65536`` so that freed tensors leave the resident set (glibc
otherwise keeps them in its heap and the peak counts them twice).
``python bench/bench_llm.py [125m|1.1b] [--inplace] [op …]`` prints the same figures.
"""

from __future__ import annotations

import gc
import sys
import time
from collections.abc import Callable

import pytest
import torch
from torch import nn

from netmorph_core.torch import add_block, add_heads, deepen_projection, grow_ffn, grow_width

SHAPES = {
    "125m": dict(
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        num_key_value_heads=4,
        intermediate_size=2048,
    ),
    "1.1b": dict(
        hidden_size=2048,
        num_hidden_layers=22,
        num_attention_heads=32,
        num_key_value_heads=4,
        intermediate_size=5632,
    ),
}
#: name → (operation on a model of the given shape; inplace)
OPERATIONS: dict[str, Callable[[nn.Module, dict, bool], tuple]] = {
    "grow_ffn": lambda m, s, i: grow_ffn(m, s["intermediate_size"] * 3 // 2, inplace=i),
    "add_heads": lambda m, s, i: add_heads(
        m, s["num_attention_heads"] + s["num_key_value_heads"], inplace=i
    ),
    "grow_width": lambda m, s, i: grow_width(m, s["hidden_size"] * 5 // 4, inplace=i),
    "add_block": lambda m, s, i: add_block(m, s["num_hidden_layers"] // 2, inplace=i),
    "deepen_projection": lambda m, s, i: deepen_projection(
        m, "model.layers.0.mlp.down_proj", inplace=i
    ),
}


def _transformers() -> object:
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parents[1] / "tests"))
    from thirdparty import import_transformers

    return import_transformers()


def llama(size: str, dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    """A Llama of shape ``size`` with random trained-like weights: projections and embeddings
    ~ N(0, 0.02²), norm gains ~ U(0.5, 1.5); built on meta, materialised in ``dtype``."""
    transformers = _transformers()
    config = transformers.LlamaConfig(
        vocab_size=32000, max_position_embeddings=2048, **SHAPES[size]
    )
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(config)
    model = model.to_empty(device="cpu").to(dtype)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    rotary = type(model.model.rotary_emb)(config=config)
    model.model.rotary_emb = rotary
    return model.eval()


def _status(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure(size: str, op: str, model: nn.Module | None = None, inplace: bool = False) -> dict:
    """Seconds, extra peak bytes (× parent parameter bytes) and the report of ``op``
    (``inplace``: the child is built in ``model``, which is consumed)."""
    model = llama(size) if model is None else model
    gc.collect()
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
        f.write("5")  # resets VmHWM to the current resident size
    base = _status("VmRSS")
    start, cpu = time.perf_counter(), time.process_time()
    child, report = OPERATIONS[op](model, SHAPES[size], inplace)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    peak = _status("VmHWM")
    del child
    gc.collect()
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "extra_peak_x": (peak - base) / param_bytes,
        "parent_gb": param_bytes / 1e9,
        "measured_by": report.measured_by,
        "rel_dev": report.rel_dev,
        "noise_ratio": report.noise_ratio,
        "modes": report.modes,
        "new_params_x": (report.params_after - report.params_before) / report.params_before,
    }


@pytest.mark.parametrize("op", sorted(OPERATIONS))
def test_llama_125m(benchmark: pytest.FixtureRequest, op: str) -> None:
    model = llama("125m")
    result = benchmark.pedantic(lambda: measure("125m", op, model), rounds=1, iterations=1)
    benchmark.extra_info.update(result)


@pytest.mark.full_only
@pytest.mark.parametrize("inplace", [False, True], ids=["copy", "inplace"])
@pytest.mark.parametrize("op", sorted(OPERATIONS))
def test_llama_1b(benchmark: pytest.FixtureRequest, op: str, inplace: bool) -> None:
    model = llama("1.1b")
    result = benchmark.pedantic(lambda: measure("1.1b", op, model, inplace), rounds=1, iterations=1)
    benchmark.extra_info.update(result)


if __name__ == "__main__":
    size = sys.argv[1] if len(sys.argv) > 1 else "125m"
    consume = "--inplace" in sys.argv
    ops = [a for a in sys.argv[2:] if a != "--inplace"] or sorted(OPERATIONS)
    parent = None if consume else llama(size)
    for name in ops:
        row = measure(size, name, parent, consume)
        print(
            f"{size} {name}: {row['seconds']:.1f} s (CPU {row['cpu_seconds']:.1f} s), extra "
            f"peak {row['extra_peak_x']:.2f}× of {row['parent_gb']:.2f} GB, "
            f"{row['measured_by']}, modes {row['modes']}, "
            f"rel_dev {row['rel_dev']:.2e}, noise ratio {row['noise_ratio']:.2f}, "
            f"new parameters {row['new_params_x']:.2f}×, inplace {consume}",
            flush=True,
        )
