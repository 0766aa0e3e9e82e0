"""Analytic training FLOPs of a decoder-only transformer step.

Per token, a forward pass costs 2·P (P: the weights of every ``nn.Linear``, the output head
included; the embedding is a lookup and the norms are element-wise, neither counted) plus
4·L·h·d_h per attention layer (QKᵀ and the weighted sum of V, h query heads of d_h, context
length L, counted in full although the mask is causal). A training step is forward plus
backward, 3× the forward: C = 3·tokens·(2·P + 4·L·Σ_layers h·d_h) = 6·P·tokens + attention.
"""

from __future__ import annotations

from torch import nn


def linear_weights(model: nn.Module) -> int:
    """P: the number of weights in the model's ``nn.Linear`` layers (shared ones once)."""
    seen = {id(m.weight): m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear)}
    return sum(seen.values())


def attention_width(model: nn.Module) -> int:
    """Σ over attention layers of h·d_h (modules with ``num_heads`` and ``head_dim``)."""
    return sum(
        int(m.num_heads) * int(m.head_dim)
        for m in model.modules()
        if isinstance(getattr(m, "num_heads", None), int)
        and isinstance(getattr(m, "head_dim", None), int)
    )


def forward_flops_per_token(model: nn.Module, seq_len: int) -> int:
    """2·P + 4·L·Σ h·d_h."""
    return 2 * linear_weights(model) + 4 * seq_len * attention_width(model)


def train_step_flops(model: nn.Module, batch: int, seq_len: int) -> int:
    """FLOPs of one training step on ``batch`` sequences of ``seq_len`` tokens (3× forward)."""
    for value, name in ((batch, "batch"), (seq_len, "seq_len")):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    return 3 * batch * seq_len * forward_flops_per_token(model, seq_len)
