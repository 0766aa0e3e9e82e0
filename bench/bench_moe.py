"""Mixture-of-experts operations at a small language-model size: time and extra peak memory of
``grow_ffn`` on a Mixtral and of ``upcycle`` of the dense Llama of the same shape, with random
trained-like bfloat16 weights (built on the meta device, then materialised), tol="auto".

Shape: d 512, 8 layers, 8/2 heads, FFN 1024, vocab 32000; Mixtral with 8 experts, top-2
(138M parameters: measured one module at a time in float64). ``grow_ffn`` grows every expert
1024 → 1536 (``grow_ffn_inplace``: in the parent itself); ``upcycle`` turns the
51M-parameter dense Llama into that Mixtral (router N(0, 0.02²)). ``extra_peak_x``: the peak
resident memory above the parent's while the operation runs, in units of the parent's
parameter bytes; ``new_params_x``: the parameters added, same units. Run with
``MALLOC_MMAP_THRESHOLD_=65536`` (see ``bench_llm.py``).
``python bench/bench_moe.py [op …]`` prints the same figures.
"""

from __future__ import annotations

import gc
import sys
import time
from collections.abc import Callable

import pytest
import torch
from bench_llm import _status, _transformers
from torch import nn

from netmorph_core.torch import grow_ffn, upcycle

SHAPE = dict(
    vocab_size=32000,
    hidden_size=512,
    num_hidden_layers=8,
    num_attention_heads=8,
    num_key_value_heads=2,
    intermediate_size=1024,
    max_position_embeddings=2048,
)
EXPERTS, TOP_K = 8, 2


def _materialise(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """``model`` (on meta) on the CPU in ``dtype``: weights ~ N(0, 0.02²), norm gains
    ~ U(0.5, 1.5), the rotary embedding rebuilt."""
    model = model.to_empty(device="cpu").to(dtype)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    model.model.rotary_emb = type(model.model.rotary_emb)(config=model.config)
    return model.eval()


def mixtral(dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    transformers = _transformers()
    config = transformers.MixtralConfig(
        **SHAPE, num_local_experts=EXPERTS, num_experts_per_tok=TOP_K
    )
    with torch.device("meta"):
        model = transformers.MixtralForCausalLM(config)
    return _materialise(model, dtype)


def llama(dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    transformers = _transformers()
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**SHAPE))
    return _materialise(model, dtype)


#: name → (parent builder, operation)
OPERATIONS: dict[str, tuple[Callable[[], nn.Module], Callable[[nn.Module], tuple]]] = {
    "grow_ffn": (mixtral, lambda m: grow_ffn(m, SHAPE["intermediate_size"] * 3 // 2)),
    "grow_ffn_inplace": (
        mixtral,
        lambda m: grow_ffn(m, SHAPE["intermediate_size"] * 3 // 2, inplace=True),
    ),
    "upcycle": (llama, lambda m: upcycle(m, EXPERTS, TOP_K, router_std=0.02)),
}


def measure(op: str) -> dict:
    """Seconds, extra peak bytes (× parent parameter bytes) and the report of ``op``."""
    make, run = OPERATIONS[op]
    model = make()
    gc.collect()
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
        f.write("5")  # resets VmHWM to the current resident size
    base = _status("VmRSS")
    start = time.perf_counter()
    child, report = run(model)
    seconds = time.perf_counter() - start
    peak = _status("VmHWM")
    del child
    gc.collect()
    return {
        "seconds": seconds,
        "extra_peak_x": (peak - base) / param_bytes,
        "parent_gb": param_bytes / 1e9,
        "measured_by": report.measured_by,
        "noise_ratio": report.noise_ratio,
        "modes": report.modes,
        "new_params_x": (report.params_after - report.params_before) / report.params_before,
    }


@pytest.mark.parametrize("op", sorted(OPERATIONS))
def test_moe(benchmark: pytest.FixtureRequest, op: str) -> None:
    result = benchmark.pedantic(lambda: measure(op), rounds=1, iterations=1)
    benchmark.extra_info.update(result)


if __name__ == "__main__":
    for name in sys.argv[1:] or sorted(OPERATIONS):
        row = measure(name)
        print(
            f"{name}: {row['seconds']:.1f} s, extra peak {row['extra_peak_x']:.2f}× of "
            f"{row['parent_gb']:.3f} GB, {row['measured_by']}, modes {row['modes']}, "
            f"noise ratio {row['noise_ratio']:.2f}, new parameters {row['new_params_x']:.2f}×",
            flush=True,
        )
