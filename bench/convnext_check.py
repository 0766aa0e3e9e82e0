"""The ConvNeXt operations on full-size timm and torchvision ConvNeXts (random weights made
trained-like: layer scales, norm affine and zero biases redrawn), in float64 and float32.

    python bench/convnext_check.py [--models NAME ...]

For each model: ``grow_ffn`` of the last stage to twice its MLP, ``add_block`` at global
index 1, ``grow_width`` of stage 0 and of the last stage to twice their width; printed: the
float64 child's relative deviation from the parent (``MorphReport.rel_dev_f64``, exact ≤ 1e-9)
and, on the float32 model, the noise ratio (the float32 child's deviation over the float32
parent's own rounding, both against the float64 parent: ``MorphReport.noise_ratio``) on the
default probe (two 3×64×64 images).
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Callable
from pathlib import Path

from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from thirdparty import import_timm, import_torchvision

from netmorph_core.torch import add_block, grow_ffn, grow_width
from netmorph_core.torch.calibrate import trained_like
from netmorph_core.torch.convnext import probe_images, recognise


def builders() -> dict[str, Callable[[], nn.Module]]:
    tv, timm = import_torchvision(), import_timm()
    return {
        "timm convnext_atto": lambda: timm.create_model("convnext_atto", pretrained=False),
        "timm convnextv2_atto": lambda: timm.create_model("convnextv2_atto", pretrained=False),
        "torchvision convnext_tiny": tv.models.convnext_tiny,
    }


def operations(model: nn.Module) -> dict[str, Callable[[nn.Module], tuple]]:
    net = recognise(model)
    assert net is not None
    last = net.stages[-1]
    return {
        "grow_ffn last stage ×2": lambda m: grow_ffn(
            m, 2 * last.members[0].hidden, stage=last.index, seed=0
        ),
        "add_block at 1": lambda m: add_block(m, 1, seed=0),
        "grow_width stage 0 ×2": lambda m: grow_width(m, 2 * net.stages[0].width, stage=0, seed=0),
        "grow_width last ×2": lambda m: grow_width(m, 2 * last.width, seed=0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=None)
    args = parser.parse_args()
    print(f"{'model':28} {'operation':24} {'rel dev f64':>12} {'noise ratio f32':>16}")
    for name, build in builders().items():
        if args.models and not any(s in name for s in args.models):
            continue
        parent = build().eval()
        parent = trained_like(parent, probe_images(parent)[0].double())
        low = copy.deepcopy(parent).float()
        for op_name, op in operations(parent).items():
            _, exact = op(parent)
            _, rounded = op(low)
            ratio = rounded.noise_ratio
            shown = "—" if ratio is None else f"{ratio:.2f}"
            print(f"{name:28} {op_name:24} {exact.rel_dev_f64:12.1e} {shown:>16}", flush=True)


if __name__ == "__main__":
    main()
