"""Importing netmorph_core.torch first makes torchvision, timm and transformers importable,
whether or not torchvision's compiled operators load with the installed torch."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

pytest.importorskip("torch")

SCRIPT = """
import netmorph_core.torch
import torchvision
from transformers import LlamaConfig, LlamaForCausalLM
import torch
model = torchvision.models.resnet18(num_classes=3).eval()
print(tuple(model(torch.zeros(1, 3, 16, 16)).shape))
config = LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                     num_attention_heads=2)
print(tuple(LlamaForCausalLM(config)(torch.zeros(1, 3, dtype=torch.long)).logits.shape))
"""


@pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("torchvision", "transformers")),
    reason="torchvision and transformers are not installed",
)
def test_user_import_order_loads_the_model_libraries() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["(1,", "3)", "(1,", "3,", "16)"]


def test_declaring_again_is_a_no_op() -> None:
    from netmorph_core.torch.torchvision_ops import declare_missing_operators

    assert declare_missing_operators() == []  # already declared at import, or torchvision loads
