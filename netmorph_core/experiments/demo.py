"""The ``netmorph demo`` tour: train a small CNN on the bundled digits, morph it several ways,
verify that each child computes the parent's function, continue training, report.

Everything is seeded (seed 0); writes ``demo.json``, ``demo.csv`` and ``demo.png`` to
``results/demo/`` (or ``out``). About a minute on two CPU cores.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ..torch import MorphReport, deepen, grow_kernel, morph_subnet, widen
from .data import load_digits
from .models import seeded, small_cnn
from .net2net import chain_layers, net2net_deepen
from .plots import Panel, Series, line_panels
from .results import table, write_csv, write_json
from .train import DeviceData, TrainConfig, check_preservation, exact_float32, train

SEED = 0
PARENT = TrainConfig(8, 0.05, 32)
CHILD = TrainConfig(4, 0.01, 32)

Morph = Callable[[nn.Module], tuple[nn.Module, float | None, float]]

#: name → (what it does, morph of the trained parent → (child, float64 relative deviation,
#: non-zero fraction of the new weights)).
MORPHS: dict[str, tuple[str, Morph]] = {
    "deeper": (
        "conv2 → conv(3×3, 64) → PReLU(a=1) → conv(1×1, 16), Algorithm 1",
        lambda m: _summary(deepen(m, "conv2", width=64, kernel_size=(3, 1), seed=SEED)),
    ),
    "deeper 3×3+3×3": (
        "conv2 → conv(3×3, 64) → PReLU(a=1) → conv(3×3, 16), G zero-padded to 5×5, Algorithm 2",
        lambda m: _summary(
            deepen(m, "conv2", width=64, kernel_size=(3, 3), method="practical", seed=SEED)
        ),
    ),
    "wider": (
        "conv1: 16 → 32 output channels (conv2 gets the new input columns)",
        lambda m: _summary(widen(m, "conv1", 32, seed=SEED)),
    ),
    "kernel": (
        "conv3: 3×3 → 5×5 (zero ring, padding + 1)",
        lambda m: _summary(grow_kernel(m, "conv3", 5)),
    ),
    "subnet": (
        "conv2 → (3×3, 32) → (3×3, 32) → (1×1, 16), Algorithm 2",
        lambda m: _summary(
            morph_subnet(m, "conv2", [(32, 3), (32, 3), (16, 1)], method="practical", seed=SEED)
        ),
    ),
    "net2net deeper": (
        "baseline: IdMorph + Net2WiderNet into the 'deeper' architecture",
        lambda m: _net2net(net2net_deepen(m, "conv2", [(64, 3), (16, 1)], seed=SEED)),
    ),
}


def _summary(result: tuple[nn.Module, MorphReport]) -> tuple[nn.Module, float | None, float]:
    child, report = result
    return child, report.rel_dev_f64, report.new_nonzero_ratio


def _net2net(child: nn.Module) -> tuple[nn.Module, None, float]:
    weights = [m.weight for m in chain_layers(child.get_submodule("conv2"))]
    nonzero = sum(int(torch.count_nonzero(w)) for w in weights)
    return child, None, nonzero / sum(w.numel() for w in weights)


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def run_demo(quiet: bool = False, out: Path | None = None) -> int:
    """Run the tour; returns 0 when every child preserved the parent's predictions, else 1."""
    out = Path("results/demo") if out is None else Path(out)
    out.mkdir(parents=True, exist_ok=True)

    def say(text: str) -> None:
        if not quiet:
            print(text, flush=True)

    start = time.perf_counter()
    with exact_float32(1):
        data = load_digits()
        tensors = DeviceData.from_dataset(data, torch.device("cpu"))
        say(f"digits: {len(data.train_y)} training / {len(data.test_y)} test images of 8×8")
        parent = seeded(SEED, small_cnn, 1, data.classes)
        parent_curve = train(parent, tensors, PARENT, seed=SEED, quiet=quiet, desc="parent")
        say(f"parent: {_params(parent)} parameters, test accuracy {parent_curve[-1]:.2%}\n")

        control = copy.deepcopy(parent)
        rows = [
            {
                "model": "parent (no morph)",
                "what": "no morph (control)",
                "params": _params(parent),
                "after_morph": parent_curve[-1],
                "identical_predictions": True,
                "max_abs_dev": 0.0,
                "rel_dev_f64": 0.0,
                "new_nonzero_ratio": None,
                "curve": train(
                    control,
                    tensors,
                    CHILD,
                    seed=SEED,
                    quiet=quiet,
                    first_epoch=PARENT.epochs,
                    desc="parent (continued)",
                ),
            }
        ]
        for name, (what, morph) in MORPHS.items():
            child, rel64, nonzero = morph(parent)
            kept = check_preservation(parent, child, tensors.test_x, tensors.test_y)
            say(
                f"{name:<19} {what}\n{'':<19} max |Δlogit| on the test set "
                f"{kept.max_abs_dev:.2e}, predictions identical: {kept.identical_predictions}"
            )
            curve = train(
                child, tensors, CHILD, seed=SEED, quiet=quiet, first_epoch=PARENT.epochs, desc=name
            )
            rows.append(
                {
                    "model": name,
                    "what": what,
                    "params": _params(child),
                    "after_morph": kept.child_accuracy,
                    "identical_predictions": kept.identical_predictions,
                    "max_abs_dev": kept.max_abs_dev,
                    "rel_dev_f64": rel64,
                    "new_nonzero_ratio": nonzero,
                    "curve": curve,
                }
            )

    ok = all(r["identical_predictions"] for r in rows)
    say(
        "\n"
        + table(
            [
                "model",
                "params",
                "new non-zero",
                "acc. after morph",
                "max |Δlogit|",
                "rel. dev. f64",
                "same predictions",
                f"after {CHILD.epochs} more epochs",
            ],
            [
                [
                    r["model"],
                    r["params"],
                    "" if r["new_nonzero_ratio"] is None else f"{r['new_nonzero_ratio']:.3f}",
                    f"{r['after_morph']:.2%}",
                    f"{r['max_abs_dev']:.1e}",
                    "n/a" if r["rel_dev_f64"] is None else f"{r['rel_dev_f64']:.1e}",
                    "yes" if r["identical_predictions"] else "NO",
                    f"{r['curve'][-1]:.2%}",
                ]
                for r in rows
            ],
        )
    )
    write_json(out / "demo.json", {"seed": SEED, "parent_curve": parent_curve, "rows": rows})
    write_csv(
        out / "demo.csv",
        [{k: v for k, v in r.items() if k != "curve"} | {"final": r["curve"][-1]} for r in rows],
    )
    p = PARENT.epochs
    series = [Series("parent", range(1, p + 1), parent_curve, style="k-")]
    series += [
        Series(r["model"], range(p, p + CHILD.epochs + 1), [r["after_morph"], *r["curve"]])
        for r in rows
    ]
    line_panels(
        out / "demo.png",
        [Panel("digits: parent, then each child", "epoch", "test accuracy", series, vlines=[p])],
    )
    say(f"\nwrote demo.json, demo.csv and demo.png in {time.perf_counter() - start:.0f} s")
    return 0 if ok else 1
