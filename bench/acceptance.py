"""Acceptance run: the torch adapter on models outside the test lists.

    python bench/acceptance.py [--quick | --families] [--out FILE] [--models SUBSTR ...]
                                [--timeout S]

Every model of :mod:`acceptance_models` is built with random weights, made "trained-like"
(float64; constant parameters redrawn; BatchNorm statistics of a calibration batch) and, for
each layer kind it has (plain, grouped and depthwise convolutions, the conv before a grouped
consumer, a pointwise conv, a feed-forward Linear, an attention projection, the head), morphed
by each operation (deepen, widen, grow_kernel, morph_subnet; on transformers also grow_ffn,
add_heads, grow_width, add_block, deepen_projection). Each case runs in a forked process with a
time limit and is classified (:func:`classify`):

- ``exact``: a child whose float64 deviation from the parent, measured here on our own inputs,
  is ≤ 1e-9, with the parent bitwise unchanged (after ``grow_width``, an output whose last axis
  grew from d to D' = k·d + r — an encoder–decoder's encoder output — must be the parent's
  [y; …; y; 0]); or, on a model whose own float64 rounding
  already moves its output by more (:func:`rounding_noise`, e.g. random-weight EfficientNet-V2
  with activations ~1e5), ≤ 10× that noise, marked "within noise" and counted apart;
- ``refused``: MorphError/ValueError/TypeError whose message names the layer, the model or
  the argument (``guard`` in the detail when it is the adapter's own deviation check);
- ``FAILURE``: a wrong child, a modified parent, another exception, a refusal naming nothing,
  a crash or a run past the time limit.

The acceptance percentage is (exact + refused) / cases. Hugging Face RMSNorm/T5LayerNorm
compute in float32 whatever the input dtype; their forward is replaced by the same formula in
the input's dtype so that float64 exactness is measurable (:func:`exact_norms`; DeBERTa's
LayerNorm likewise).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from acceptance_models import SPECS, ModelSpec

from netmorph_core.torch import (
    MorphError,
    add_block,
    add_heads,
    deepen,
    deepen_projection,
    grow_ffn,
    grow_kernel,
    grow_width,
    morph_subnet,
    widen,
)
from netmorph_core.torch.calibrate import trained_like
from netmorph_core.torch.convnext import recognise as convnext_layout
from netmorph_core.torch.rounding_noise import computes_lower
from netmorph_core.torch.transformer_layout import as_matrix, describe

F64_TOL = 1e-9
#: A deviation up to this multiple of the parent's own float64 rounding noise is exact.
NOISE_FACTOR = 10.0
TIMEOUT_S = 120.0
CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
#: Substrings of the adapter's own deviation check (report.check_preserved).
GUARD = "deviates from the"


@dataclass
class Case:
    """One (model, operation, layer) case and its outcome."""

    model: str
    op: str
    kind: str
    target: str
    status: str = ""
    detail: str = ""
    dev: float | None = None
    seconds: float = 0.0


@dataclass
class Attempt:
    """What running a case gave: a deviation and whether the parent is unchanged, or an
    exception's type name and message, or ``crash``/``timeout``."""

    dev: float | None = None
    parent_unchanged: bool = True
    error_type: str | None = None
    error_typed: bool = False
    message: str = ""
    names: list[str] = field(default_factory=list)
    crash: str | None = None
    noise: float = 0.0


def classify(a: Attempt) -> tuple[str, str]:
    """(status, detail) of an attempt: "exact", "refused" or "FAILURE" (module docstring)."""
    if a.crash is not None:
        return "FAILURE", a.crash
    if a.error_type is not None:
        first = a.message.strip().splitlines()[0][:300] if a.message.strip() else ""
        if not a.error_typed:
            return "FAILURE", f"untyped {a.error_type}: {first}"
        if not any(n and n in a.message for n in a.names):
            return "FAILURE", f"refusal names no layer/model/argument ({a.error_type}: {first})"
        tag = "guard: " if GUARD in a.message else ""
        return "refused", f"{tag}{a.error_type}: {first}"
    if not a.parent_unchanged:
        return "FAILURE", "the parent was modified"
    if a.dev is not None and a.dev <= F64_TOL:
        return "exact", f"deviation {a.dev:.1e}"
    if a.dev is not None and a.dev <= NOISE_FACTOR * a.noise:
        return "exact", f"deviation {a.dev:.1e} within noise (parent's {a.noise:.1e})"
    return "FAILURE", f"wrong child: float64 deviation {a.dev:.3e} (parent's noise {a.noise:.1e})"


# ---------------------------------------------------------------------------------------------
# Models: trained-like weights, exact float64 norms, outputs


def _rms(x: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def _scaled_rms_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return self.weight * _rms(x, self.variance_epsilon)


def _gemma_rms_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return (1.0 + self.weight) * _rms(x, self.eps)


def _centred_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    centred = x - x.mean(-1, keepdim=True)
    return self.weight * _rms(centred, self.variance_epsilon) + self.bias


def exact_norms(model: nn.Module) -> list[str]:
    """Replace the forward of the float32-computing Hugging Face norm classes in ``model`` by
    the same formula in the input's dtype; returns the class names patched."""
    import inspect

    patched = []
    for cls in {type(m) for m in model.modules()}:
        if not cls.__name__.endswith(("RMSNorm", "T5LayerNorm", "DebertaLayerNorm")):
            continue
        try:
            source = inspect.getsource(cls.forward)
        except (OSError, TypeError):
            continue
        if cls.__name__.endswith("DebertaLayerNorm"):  # LayerNorm with eps in the root
            cls.forward = _centred_forward
        elif "1.0 + self.weight" in source and hasattr(cls, "_norm"):
            cls.forward = _gemma_rms_forward
        elif "variance_epsilon" in source:
            cls.forward = _scaled_rms_forward
        else:
            continue
        patched.append(cls.__name__)
    return patched


def leaves(out: object) -> list[torch.Tensor]:
    """The floating-point tensors of a model output (tensor, tuple, dict, ModelOutput)."""
    if isinstance(out, torch.Tensor):
        return [out] if out.is_floating_point() else []
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return [t for item in out for t in leaves(item)]
    return []


def rounding_noise(model: nn.Module, x: torch.Tensor) -> float:
    """The parent's own float64 rounding noise on ``x``: its relative output change when every
    Conv/Linear output is multiplied by (1 + 2⁻⁵³·N(0, 1)), i.e. perturbed by one rounding, and
    every other leaf layer that computes in float32 inside the float64 model (a norm left
    unpatched by :func:`exact_norms`: Cohere's, OLMo's LayerNorm; found by
    :func:`~netmorph_core.torch.rounding_noise.computes_lower` at its first call) by
    (1 + 2⁻²⁴·N(0, 1)), one float32 rounding."""
    gen = torch.Generator().manual_seed(5)
    lower: dict[nn.Module, bool] = {}

    def perturb(module: nn.Module, inputs: tuple, out: object) -> torch.Tensor | None:
        if not isinstance(out, torch.Tensor) or not out.is_floating_point():
            return None  # a Linear subclass returning more (Llama 4's router: scores, logits)
        noise = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out.dtype)
        return out * (1 + 2.0**-53 * noise)

    def perturb_lower(module: nn.Module, args: tuple, kwargs: dict, out: object) -> object:
        if isinstance(out, tuple):  # float32 parts (a router's logits and weights)
            return tuple(
                t * (1 + 2.0**-24 * torch.randn(t.shape, generator=gen).to(t.dtype))
                if isinstance(t, torch.Tensor) and t.dtype == torch.float32
                else t
                for t in out
            )
        if not isinstance(out, torch.Tensor) or not out.is_floating_point():
            return None
        if module not in lower:
            lower[module] = False  # while it runs again below
            lower[module] = computes_lower(module, args, kwargs, out)
        if not lower[module]:
            return None
        noise = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out.dtype)
        return out * (1 + 2.0**-24 * noise)

    layers = [
        m
        for m in model.modules()
        if isinstance(m, (*CONV, nn.Linear)) or type(m).__name__ == "Conv1D"
    ]
    others = [m for m in model.modules() if next(m.children(), None) is None and m not in layers]
    hooks = [m.register_forward_hook(perturb) for m in layers] + [
        m.register_forward_hook(perturb_lower, with_kwargs=True) for m in others
    ]
    try:
        with torch.no_grad():
            noisy = leaves(model(x))
    finally:
        for h in hooks:
            h.remove()
    with torch.no_grad():
        clean = leaves(model(x))
    return max(float((n - c).abs().max() / c.abs().max()) for n, c in zip(noisy, clean))


def lifted(e: torch.Tensor, width: int) -> torch.Tensor:
    """A stream output y (…, d) as ``grow_width`` to D' = k·d + r makes it under RMSNorm or
    with whole copies: [y; …; y; 0] (an encoder–decoder's ``encoder_last_hidden_state``)."""
    copies, extra = divmod(width, e.shape[-1])
    return torch.cat([e] * copies + [e.new_zeros((*e.shape[:-1], extra))], dim=-1)


def deviation(parent: nn.Module, child: nn.Module, x: torch.Tensor, widened: bool = False) -> float:
    """max |child − parent| / max |parent| over every floating output, in float64;
    ``widened`` (grow_width): an output whose last axis grew is compared with :func:`lifted`."""
    with torch.no_grad():
        expected, got = leaves(parent(x)), leaves(child(x))
    if len(expected) != len(got) or not expected:
        return float("inf")
    devs = []
    for e, g in zip(expected, got):
        grew = e.shape[:-1] == g.shape[:-1] and g.shape[-1] > e.shape[-1]
        if widened and e.dim() and grew:
            e = lifted(e, g.shape[-1])
        if e.shape != g.shape:
            return float("inf")
        devs.append(float((g - e).abs().max() / e.abs().max().clamp_min(1e-300)))
    return max(devs)


# ---------------------------------------------------------------------------------------------
# Layers and operations


def _linear_rows(module: nn.Module) -> int:
    return as_matrix(module).shape[0]


def is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def pick_layers(model: nn.Module) -> dict[str, str]:
    """kind → the layer a case morphs: the first plain conv (kernel > 1), the middle grouped
    and depthwise convs, the conv registered before the middle grouped one, the first 1×1
    conv, the first feed-forward Linear, the first attention projection, the last Linear."""
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, CONV)]
    linears = [(n, m) for n, m in model.named_modules() if is_linear(m)]
    picks: dict[str, str] = {}
    plain = [n for n, m in convs if m.groups == 1 and max(m.kernel_size) > 1]
    if plain:
        picks["plain conv"] = plain[0]
    depthwise = [i for i, (_, m) in enumerate(convs) if m.groups > 1 and m.groups == m.in_channels]
    grouped = [i for i, (_, m) in enumerate(convs) if 1 < m.groups < m.in_channels]
    if grouped:
        picks["grouped conv"] = convs[grouped[len(grouped) // 2]][0]
    if depthwise:
        picks["depthwise conv"] = convs[depthwise[len(depthwise) // 2]][0]
    middle = (grouped or depthwise)[len(grouped or depthwise) // 2] if grouped or depthwise else 0
    if middle > 0:
        picks["before grouped"] = convs[middle - 1][0]
    pointwise = [n for n, m in convs if m.groups == 1 and max(m.kernel_size) == 1]
    if pointwise:
        picks["pointwise conv"] = pointwise[len(pointwise) // 2]
    ffn_words = ("mlp", "ffn", "intermediate", "feed_forward", "fc1", "lin1", "densereludense")
    ffn = [n for n, _ in linears if any(w in n.lower() for w in ffn_words)]
    if ffn:
        picks["ffn linear"] = ffn[0]
    attn_words = ("q_proj", "query", "q_lin", "qkv", "c_attn", ".q", "in_proj")
    attn = [n for n, _ in linears if any(n.lower().endswith(w) for w in attn_words)]
    if attn:
        picks["attention proj"] = attn[0]
    if linears:
        picks["head linear"] = linears[-1][0]
    seen: set[str] = set()
    unique = {}
    for kind, name in picks.items():
        if name not in seen:
            seen.add(name)
            unique[kind] = name
    return unique


Op = Callable[[nn.Module], tuple]


def layer_ops(model: nn.Module, name: str, probe: dict) -> dict[str, Op]:
    """operation → a call morphing layer ``name``; ``probe``: probe= or input_shape=."""
    layer = model.get_submodule(name)
    ops: dict[str, Op] = {"deepen": lambda m: deepen(m, name, seed=0, **probe)}
    if isinstance(layer, CONV):
        groups, c_out = layer.groups, layer.out_channels
        k = layer.kernel_size
        ops["widen"] = lambda m: widen(m, name, c_out + 2 * groups, seed=0, **probe)
        ops["grow_kernel"] = lambda m: grow_kernel(m, name, [s + 2 for s in k], **probe)
        width = max(c_out, layer.in_channels)
        width += -width % groups
        nd = len(k)
        layers = [(width, (1,) * nd), (width, tuple(k)), (None, (1,) * nd)]
        ops["morph_subnet"] = lambda m: morph_subnet(m, name, layers, seed=0, **probe)
    else:
        rows = _linear_rows(layer)
        ops["widen"] = lambda m: widen(m, name, rows + 4, seed=0, **probe)
        ops["morph_subnet"] = lambda m: morph_subnet(
            m, name, [(rows + 4, None), (None, None)], seed=0, **probe
        )
    return ops


def transformer_ops(model: nn.Module, probe: torch.Tensor) -> dict[str, Op]:
    """The transformer growth operations, their sizes from the layout (or the config)."""
    try:
        layout = describe(model)
        d, block = layout.d_model, layout.blocks[0]
        heads, kv = block.heads, block.kv_heads
        hidden = as_matrix(model.get_submodule(block.name(layout.family.ffn_out))).shape[1]
    except Exception:  # the operations themselves report what describe() raises
        config = getattr(model, "config", None)

        def size(name: str, default: int) -> int:  # per-stage configs give lists
            value = getattr(config, name, None) or default
            return int(value[-1] if isinstance(value, (list, tuple)) else value)

        d = size("hidden_size", 32)
        heads = size("num_attention_heads", 0) or size("num_heads", 4)  # Mamba-2: num_heads
        kv = size("num_key_value_heads", heads)
        hidden = size("intermediate_size", 64)
        try:  # a ConvNeXt: the last stage's width and the largest MLP
            net = convnext_layout(model)
        except MorphError:
            net = None
        if net is not None:
            d = net.stages[-1].width
            hidden = max(b.hidden for st in net.stages for b in st.members)
    new_heads = heads + kv if kv != heads else 2 * heads
    return {
        "grow_ffn": lambda m: grow_ffn(m, hidden + 6, seed=0, probe=(probe,)),
        "add_heads": lambda m: add_heads(m, new_heads, seed=0, probe=(probe,)),
        "grow_width": lambda m: grow_width(m, d + 13, seed=0, probe=(probe,)),
        "grow_width x2": lambda m: grow_width(m, 2 * d, seed=0, probe=(probe,)),
        "add_block": lambda m: add_block(m, 1, seed=0, probe=(probe,)),
    }


def names_for(model: nn.Module, target: str) -> list[str]:
    """What a specific refusal may name: the layer (or any submodule), the model, an argument."""
    modules = [n for n, _ in model.named_modules() if "." in n]
    args = ["width=", "heads=", "kv_heads=", "d_model=", "at=", "kernel_size=", "layers"]
    return [n for n in (target, type(model).__name__, *modules, *args) if n]


# ---------------------------------------------------------------------------------------------
# Running the cases


def _attempt(
    model: nn.Module, op: Op, x: torch.Tensor, names: list[str], noise: float, widened: bool, conn
):
    """Child process: run ``op`` on ``model``, measure it on ``x``, send an :class:`Attempt`."""
    torch.set_num_threads(1)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    a = Attempt(names=names, noise=noise)
    try:
        child, _ = op(model)
        child = child.double()
        a.dev = deviation(model, child, x, widened)
    except (MorphError, ValueError, TypeError) as exc:
        a.error_type, a.error_typed, a.message = type(exc).__name__, True, str(exc)
    except Exception as exc:
        a.error_type, a.message = type(exc).__name__, f"{exc}\n{traceback.format_exc()[-800:]}"
    a.parent_unchanged = all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    conn.send(asdict(a))
    conn.close()


def run_case(
    model: nn.Module,
    op: Op,
    x: torch.Tensor,
    names: list[str],
    noise: float,
    timeout: float,
    widened: bool = False,
) -> tuple[Attempt, float]:
    """(Attempt, seconds): ``op`` run in a forked process, killed after ``timeout`` s;
    ``widened``: it grows the stream (:func:`deviation`)."""
    ctx = mp.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_attempt, args=(model, op, x, names, noise, widened, send))
    start = time.perf_counter()
    proc.start()
    send.close()
    attempt = None
    if recv.poll(timeout):
        try:
            attempt = Attempt(**recv.recv())
        except EOFError:
            attempt = None
    proc.join(5)
    seconds = time.perf_counter() - start
    if attempt is None:
        if proc.is_alive():
            proc.kill()
            proc.join()
            return Attempt(crash=f"timeout after {timeout:.0f} s"), seconds
        return Attempt(crash=f"crashed (exit code {proc.exitcode})"), seconds
    return attempt, seconds


def model_cases(spec: ModelSpec, timeout: float, log: Callable[[str], None]) -> list[Case]:
    """Every case of one model, run and classified."""
    try:
        torch.manual_seed(0)
        model = spec.build()
        calibration = spec.inputs(2)
        if calibration.is_floating_point():
            calibration = torch.cat([calibration] * 4)
        model = trained_like(model, calibration)
        patched = exact_norms(model)
        if patched:
            log(f"  float64 norms: {', '.join(patched)}")
    except Exception as exc:
        log(f"  cannot build: {type(exc).__name__}: {exc}")
        return [Case(spec.name, "build", "-", "-", "skipped", f"{type(exc).__name__}: {exc}")]
    x = spec.inputs(1)
    probe_x = spec.inputs(0)
    noise = rounding_noise(model, x)
    log(f"  float64 rounding noise of the parent: {noise:.1e}")
    is_hf = spec.source == "transformers"
    probe = (
        {"probe": (probe_x,)}
        if is_hf or not x.is_floating_point()
        else {"input_shape": tuple(x.shape)}
    )
    plan: list[tuple[str, str, str, Op]] = []
    for kind, name in pick_layers(model).items():
        for op_name, op in layer_ops(model, name, probe).items():
            plan.append((op_name, kind, name, op))
    if is_hf:
        for op_name, op in transformer_ops(model, probe_x).items():
            plan.append((op_name, "model", "", op))
        attn = pick_layers(model).get("attention proj")
        if attn:
            plan.append(
                (
                    "deepen_projection",
                    "attention proj",
                    attn,
                    lambda m, a=attn: deepen_projection(m, a, seed=0, probe=(probe_x,)),
                )
            )
    cases = []
    for op_name, kind, target, op in plan:
        widened = op_name.startswith("grow_width")
        names = names_for(model, target)
        attempt, seconds = run_case(model, op, x, names, noise, timeout, widened)
        status, detail = classify(attempt)
        case = Case(spec.name, op_name, kind, target, status, detail, attempt.dev, seconds)
        log(f"  {status:8s} {op_name:17s} {kind:15s} {target:40s} {seconds:6.1f}s  {detail[:160]}")
        cases.append(case)
    return cases


def summary(cases: list[Case]) -> tuple[list[tuple[str, int, int, int, int, int]], float]:
    """Per model (name, cases, exact, refused, failures, exact within noise) and the
    acceptance percentage."""
    rows: dict[str, list[int]] = {}
    for c in cases:
        if c.status == "skipped":
            continue
        row = rows.setdefault(c.model, [0, 0, 0, 0, 0])
        row[0] += 1
        row[1 + ("exact", "refused", "FAILURE").index(c.status)] += 1
        row[4] += "within noise" in c.detail
    total = sum(r[0] for r in rows.values())
    ok = sum(r[1] + r[2] for r in rows.values())
    return [(m, *r) for m, r in rows.items()], 100.0 * ok / total if total else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only the models marked quick")
    parser.add_argument(
        "--families", action="store_true", help="the second set (acceptance_families.py)"
    )
    parser.add_argument("--out", type=Path, help="write the cases and the summary as JSON")
    parser.add_argument("--models", nargs="*", default=(), help="substrings of model names")
    parser.add_argument("--timeout", type=float, default=TIMEOUT_S, help="seconds per case")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.families:
        from acceptance_families import FAMILY_SPECS as specs
    else:
        specs = [s for s in SPECS if not args.quick or s.quick]
    if args.models:
        specs = [s for s in specs if any(m in s.name for m in args.models)]

    def log(line: str) -> None:
        print(line, flush=True)

    cases: list[Case] = []
    for spec in specs:
        log(f"{spec.name}")
        cases.extend(model_cases(spec, args.timeout, log))
    rows, percent = summary(cases)
    head = f"{'model':30s} {'cases':>5s} {'exact':>5s} {'refused':>7s} {'FAIL':>4s} {'≈noise':>6s}"
    log("\n" + head)
    for name, *counts in rows:
        log(
            f"{name:30s} {counts[0]:5d} {counts[1]:5d} {counts[2]:7d} {counts[3]:4d} {counts[4]:6d}"
        )
    t = [sum(r[i] for r in rows) for i in range(1, 6)]
    log(f"{'total':30s} {t[0]:5d} {t[1]:5d} {t[2]:7d} {t[3]:4d} {t[4]:6d}")
    log(f"acceptance: {percent:.1f}% exact or refused ({len(rows)} models)")
    for c in cases:
        if c.status == "FAILURE":
            log(f"FAILURE {c.model} {c.op} {c.kind} {c.target}: {c.detail[:300]}")
    if args.out:
        args.out.write_text(
            json.dumps(
                {
                    "acceptance_percent": percent,
                    "summary": rows,
                    "cases": [asdict(c) for c in cases],
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
