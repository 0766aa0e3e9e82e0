"""The parent and from-scratch models of the experiments (``nn.Sequential``, named layers).

- softmax regression: Flatten → Linear(features, classes) (paper §4.1's parent);
- MLP: Flatten → Linear(features, h) → P-activation → Linear(h, classes);
- small CNN (a scaled cifar_111, paper §4.2): three conv blocks and a linear classifier,
  ``conv1 → relu1 → pool1 → conv2 → relu2 → pool2 → conv3 → relu3 → gap → flatten → fc``.
  The pools halve the image twice (8×8 → 2×2 for digits, 32×32 → 8×8 for CIFAR-10); ``gap``
  averages what is left, so one architecture fits every input size.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..torch import PActivation


def softmax_regression(features: int, classes: int) -> nn.Sequential:
    """Flatten → fc: logits = W·x + b."""
    return nn.Sequential(
        OrderedDict([("flatten", nn.Flatten()), ("fc", nn.Linear(features, classes))])
    )


def mlp(features: int, hidden: int, classes: int, base: str, a: float) -> nn.Sequential:
    """Flatten → fc1 → φ^a (learnable a) → fc2."""
    return nn.Sequential(
        OrderedDict(
            [
                ("flatten", nn.Flatten()),
                ("fc1", nn.Linear(features, hidden)),
                ("act", PActivation(base, a=a)),
                ("fc2", nn.Linear(hidden, classes)),
            ]
        )
    )


def small_cnn(
    in_channels: int, classes: int, widths: Sequence[int] = (16, 16, 32), kernel: int = 3
) -> nn.Sequential:
    """Three ``kernel``×``kernel`` "same" conv blocks of ``widths`` channels, then a linear
    layer."""
    c1, c2, c3 = widths
    pad = kernel // 2
    return nn.Sequential(
        OrderedDict(
            [
                ("conv1", nn.Conv2d(in_channels, c1, kernel, padding=pad)),
                ("relu1", nn.ReLU()),
                ("pool1", nn.MaxPool2d(2)),
                ("conv2", nn.Conv2d(c1, c2, kernel, padding=pad)),
                ("relu2", nn.ReLU()),
                ("pool2", nn.MaxPool2d(2)),
                ("conv3", nn.Conv2d(c2, c3, kernel, padding=pad)),
                ("relu3", nn.ReLU()),
                ("gap", nn.AdaptiveAvgPool2d(1)),
                ("flatten", nn.Flatten()),
                ("fc", nn.Linear(c3, classes)),
            ]
        )
    )


def seeded(
    seed: int, build: Callable[..., nn.Module], *args: object, **kwargs: object
) -> nn.Module:
    """``build(*args, **kwargs)`` with torch's global RNG seeded by ``seed`` first."""
    torch.manual_seed(seed)
    return build(*args, **kwargs)
