"""Float32 rounding of grouped and depthwise ``deepen`` on RegNetY-800MF, EfficientNet-B3 and
TinyNet-A (random weights made trained-like, eval mode): the table of ``docs/concepts/grouped.md``.

    python bench/grouped_rounding.py [--size S] [--models NAME ...] [--variants V ...]

For every kind of grouped or depthwise conv (kernel, stride) the middle layer of that kind is
deepened in the float32 model (``deepen`` with its defaults, or ``separable=True`` on grouped
layers: on a depthwise one it builds the default's factor shapes) and its noise ratio — the
float32 child's deviation from the float64 parent over the float32 parent's own, both
max-relative on the same input — is measured twice:

- ``layer``: the layer alone on its real input (captured from a 1×3×S×S probe), where the
  new factors' rounding is all there is to see;
- ``model``: the whole model on the 1×3×S×S probe (``MorphReport.noise_ratio``).

Run it against another checkout (``PYTHONPATH=that/checkout``) for a before/after table.
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from thirdparty import import_timm, import_torchvision

from netmorph_core.torch import deepen
from netmorph_core.torch.calibrate import trained_like

VARIANTS = {"default": {}, "separable": {"separable": True}}


def builders() -> dict[str, Callable[[], nn.Module]]:
    tv, timm = import_torchvision(), import_timm()
    return {
        "RegNetY-800MF": tv.models.regnet_y_800mf,
        "EfficientNet-B3": tv.models.efficientnet_b3,
        "TinyNet-A": lambda: timm.create_model("tinynet_a", pretrained=False),
    }


def kind(conv: nn.Conv2d) -> str:
    name = "depthwise" if conv.groups == conv.in_channels else "grouped"
    return f"{name} {conv.kernel_size[0]}×{conv.kernel_size[1]} s{conv.stride[0]}"


def middle_of_each_kind(model: nn.Module) -> dict[str, str]:
    """kind → the middle grouped/depthwise conv of that kind (registration order)."""
    found: dict[str, list[str]] = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d) and m.groups > 1:
            found.setdefault(kind(m), []).append(name)
    return {k: names[len(names) // 2] for k, names in found.items()}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


def layer_ratio(conv: nn.Conv2d, x64: torch.Tensor, kwargs: dict) -> float:
    """Noise ratio of the deepened float32 layer alone on its float64 input ``x64``."""
    parent = nn.Sequential(copy.deepcopy(conv)).float()
    child, _ = deepen(parent, "0", probe=x64.float(), tol=None, seed=0, **kwargs)
    with torch.no_grad():
        ref = copy.deepcopy(parent).double()(x64)
        own = rel(parent(x64.float()), ref)
        return rel(child(x64.float()), ref) / own


def layer_inputs(model: nn.Module, names: list[str], x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The input of each layer ``names`` in a forward pass of ``model`` on ``x``."""
    inputs: dict[str, torch.Tensor] = {}

    def keep(name: str) -> Callable:
        return lambda _m, i, _o: inputs.__setitem__(name, i[0].detach().clone())

    hooks = [model.get_submodule(n).register_forward_hook(keep(n)) for n in names]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return inputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--models", nargs="*", default=None)
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()
    torch.manual_seed(0)
    x = torch.randn(1, 3, args.size, args.size, dtype=torch.float64)
    print("| model | layer kind | deepen | layer | model |")
    print("| --- | --- | --- | --- | --- |")
    for name, build in builders().items():
        if args.models and name not in args.models:
            continue
        calibration = torch.randn(2, 3, args.size, args.size, dtype=torch.float64)
        model64 = trained_like(build(), calibration)
        picks = middle_of_each_kind(model64)
        inputs = layer_inputs(model64, list(picks.values()), x)
        model32 = copy.deepcopy(model64).float()
        for k, at in sorted(picks.items()):
            for variant in args.variants:
                if variant == "separable" and k.startswith("depthwise"):
                    continue  # the default's factor shapes: depthwise F1, 1×1 F2 with C groups
                kwargs = VARIANTS[variant]
                conv = model64.get_submodule(at)
                try:
                    layer = f"{layer_ratio(conv, inputs[at], kwargs):.2f}"
                    _, report = deepen(model32, at, probe=x.float(), tol=None, seed=0, **kwargs)
                    whole = f"{report.noise_ratio:.2f}"
                except (ValueError, TypeError) as exc:
                    layer = whole = f"refused: {str(exc).splitlines()[0][:60]}"
                print(f"| {name} | {k} (`{at}`) | {variant} | {layer} | {whole} |", flush=True)


if __name__ == "__main__":
    main()
