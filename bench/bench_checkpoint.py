"""Checkpoint-to-checkpoint growth: time, peak resident memory, reload by stock from_pretrained.

A Llama checkpoint of random bf16 weights is written locally as sharded safetensors, tensor
by tensor (bounded memory), and cached between runs under ``$NETMORPH_BENCH_CKPT`` (default
``/tmp/netmorph-bench-ckpt``):

- ``small``: d 512, 4 layers, 8/4 heads, FFN 1376, vocab 32000 (~90 MB), grown by width
  512 → 640, heads 8/4 → 16/8 (head_dim kept), FFN ×1.5 and a new last block;
- ``7b`` (``full_only``): the Llama-2-7B shape (d 4096, 32 layers, 32 heads, FFN 11008,
  vocab 32000; ~13.5 GB), grown by FFN ×1.125 and a new last block (LLaMA-Pro style).

Each growth runs ``netmorph_core.checkpoint.grow_checkpoint`` in a subprocess, which reports
its wall time and peak resident set (``ru_maxrss``, mapped file pages it touched included);
then another subprocess (``nice``) loads DST with the stock
``AutoModelForCausalLM.from_pretrained(low_cpu_mem_usage=True)`` and compares its logits on
the probe with the parent's float64 logits streamed by the growth: the relative deviation
must be within tol="auto"'s bound on the parent's own bf16 rounding. The 7B reload holds
the whole child (~14.3 GB): ``NETMORPH_BENCH_RELOAD=0`` skips it.

    python -m pytest bench/bench_checkpoint.py -p no:cacheprovider -s [--quick]
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from netmorph_core.checkpoint.io import ShardWriter

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from thirdparty import import_transformers

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("NETMORPH_BENCH_CKPT", "/tmp/netmorph-bench-ckpt"))
#: Peak resident memory allowed to the growth of the 7B checkpoint: 4 GiB (ru_maxrss counts the
#: shard pages mapped while tensors are read, too).
PEAK_BYTES_7B = 4 * 2**30

SHAPES = {
    "small": dict(
        hidden_size=512,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=4,
        intermediate_size=1376,
        vocab_size=32000,
    ),
    "7b": dict(
        hidden_size=4096,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        intermediate_size=11008,
        vocab_size=32000,
    ),
}
GROWTH = {
    "small": dict(width=640, heads=16, kv_heads=8, ffn=1.5, add_blocks=[4]),
    "7b": dict(ffn=1.125, add_blocks=[32]),
}


def write_random_checkpoint(path: Path, sizes: dict, shard_bytes: int = 2 * 10**9) -> Path:
    """A LlamaForCausalLM checkpoint of random bf16 weights (std 0.02, norms near 1) written
    tensor by tensor into ``path`` (skipped when ``path`` already holds one)."""
    if (path / "config.json").is_file():
        return path
    transformers = import_transformers()
    config = transformers.LlamaConfig(**sizes, max_position_embeddings=4096)
    config.architectures = ["LlamaForCausalLM"]
    config.dtype = "bfloat16"
    with torch.device("meta"):
        shapes = {
            n: tuple(p.shape) for n, p in transformers.LlamaForCausalLM(config).named_parameters()
        }
    tmp = path.parent / f".{path.name}.partial"
    tmp.mkdir(parents=True, exist_ok=True)
    plan = [(n, s, torch.bfloat16) for n, s in shapes.items()]
    writer = ShardWriter(tmp, plan, shard_bytes)
    gen = torch.Generator().manual_seed(0)
    for name, shape, _ in plan:
        if "norm" in name:
            t = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        else:
            t = 0.02 * torch.randn(shape, generator=gen)
        writer.put(name, t.to(torch.bfloat16))
        del t
    writer.finish()
    writer.close()
    config.save_pretrained(tmp)
    tmp.rename(path)
    return path


GROW = textwrap.dedent(
    """
    import json, resource, sys, time
    sys.path.insert(0, {tests!r})
    from thirdparty import import_transformers
    import_transformers()
    import torch
    from netmorph_core.checkpoint import grow_checkpoint
    start = time.perf_counter()
    s = grow_checkpoint({src!r}, {dst!r}, progress=False, **{growth!r})
    torch.save({{"probe": s.probe, "logits": s.parent_logits}}, {probe!r})
    print(json.dumps({{
        "seconds": time.perf_counter() - start,
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "params_before": s.params_before, "params_after": s.params_after,
        "worst_block": max(b.rel_dev / b.bound for b in s.blocks),
        "block_rel_dev_f64": max(b.rel_dev_f64 for b in s.blocks),
        "logits_max_abs_dev": s.logits_max_abs_dev,
        "logits_rel_dev": s.logits_rel_dev, "logits_parent_noise": s.logits_parent_noise,
    }}))
    """
)

RELOAD = textwrap.dedent(
    """
    import json, resource, sys
    sys.path.insert(0, {tests!r})
    from thirdparty import import_transformers
    transformers = import_transformers()
    import torch
    ref = torch.load({probe!r})
    model = transformers.AutoModelForCausalLM.from_pretrained(
        {dst!r}, dtype=torch.bfloat16, low_cpu_mem_usage=True
    ).eval()
    with torch.no_grad():
        out = model(ref["probe"][None]).logits[0].double()
    p64 = ref["logits"]
    scale = float(p64.abs().max())
    print(json.dumps({{
        "reload_rel_dev": float((out - p64).abs().max()) / scale,
        "reload_max_abs_dev": float((out - p64).abs().max()),
        "reload_peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "params": sum(p.numel() for p in model.parameters()),
    }}))
    """
)


def _run(code: str, nice: int = 0) -> dict:
    """Run ``code`` in a subprocess (``nice``: added to this process's niceness); the JSON
    object on its last output line."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = ["nice", "-n", str(nice), sys.executable, "-c", code]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"subprocess failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def grow_and_reload(shape: str, work: Path, reload: bool = True) -> dict:
    """Write (or reuse) the ``shape`` checkpoint, grow it in a subprocess, reload DST (then
    deleted)."""
    src = write_random_checkpoint(CACHE / f"llama-{shape}", SHAPES[shape])
    dst = work / f"grown-{shape}"
    probe = work / f"probe-{shape}.pt"
    shutil.rmtree(dst, ignore_errors=True)
    tests = str(ROOT / "tests")
    code = GROW.format(
        tests=tests, src=str(src), dst=str(dst), growth=GROWTH[shape], probe=str(probe)
    )
    try:
        result = _run(code)
        if reload:
            result |= _run(RELOAD.format(tests=tests, dst=str(dst), probe=str(probe)), nice=5)
    finally:
        shutil.rmtree(dst, ignore_errors=True)
    return result


def _report(benchmark: object, result: dict) -> None:
    for key, value in result.items():
        benchmark.extra_info[key] = value
    print(json.dumps(result, indent=1))


def _check_reload(result: dict) -> None:
    from netmorph_core.torch.report import auto_bound

    if "reload_rel_dev" in result:
        bound = auto_bound(torch.bfloat16, result["logits_parent_noise"])
        assert result["reload_rel_dev"] <= bound, result


def test_grow_small_checkpoint(benchmark: object, tmp_path: Path) -> None:
    result = benchmark.pedantic(grow_and_reload, args=("small", tmp_path), rounds=1, iterations=1)
    _report(benchmark, result)
    assert result["worst_block"] <= 1.0
    _check_reload(result)


@pytest.mark.full_only
def test_grow_7b_checkpoint(benchmark: object, tmp_path: Path) -> None:
    work = tmp_path
    reload = os.environ.get("NETMORPH_BENCH_RELOAD", "1") != "0"
    result = benchmark.pedantic(grow_and_reload, args=("7b", work, reload), rounds=1, iterations=1)
    _report(benchmark, result)
    assert result["peak_rss"] <= PEAK_BYTES_7B, result
    assert result["worst_block"] <= 1.0
    _check_reload(result)
