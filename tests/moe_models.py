"""A tiny mixture-of-experts language model for the tests: ModuleList experts (gated MLPs of
Linear layers ``w1``/``w3``/``w2``, Mixtral's older layout), a Linear router with or without
bias, top-k routing with or without renormalisation, an optional shared expert and gate."""

from __future__ import annotations

import torch
from torch import nn


class Expert(nn.Module):
    """w2·(SiLU(w1·x) ⊙ w3·x)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(nn.functional.silu(self.w1(x)) * self.w3(x))


class SparseMoe(nn.Module):
    """Σ_{e∈top-k} w_e·expert_e(x) (+ σ(g·x)·shared(x)); w: softmax over all experts, divided
    by its top-k sum when ``norm_topk_prob``."""

    def __init__(
        self,
        dim: int,
        hidden: int,
        experts: int,
        top_k: int,
        *,
        router_bias: bool,
        norm_topk_prob: bool,
        shared: int = 0,
    ) -> None:
        super().__init__()
        self.top_k = top_k
        self.norm_topk_prob = norm_topk_prob
        self.router = nn.Linear(dim, experts, bias=router_bias)
        self.experts = nn.ModuleList(Expert(dim, hidden) for _ in range(experts))
        self.shared_expert = Expert(dim, shared) if shared else None
        self.shared_expert_gate = nn.Linear(dim, 1, bias=False) if shared else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        probs = self.router(flat).float().softmax(-1)
        top, index = probs.topk(self.top_k, dim=-1)
        if self.norm_topk_prob:
            top = top / top.sum(-1, keepdim=True)
        out = torch.zeros_like(flat)
        for slot in range(self.top_k):
            for e, expert in enumerate(self.experts):
                rows = index[:, slot] == e
                if rows.any():
                    weight = top[rows, slot, None].to(flat.dtype)
                    out[rows] += weight * expert(flat[rows])
        if self.shared_expert is not None:
            out = out + torch.sigmoid(self.shared_expert_gate(flat)) * self.shared_expert(flat)
        return out.reshape(x.shape)


class Block(nn.Module):
    def __init__(self, dim: int, moe: SparseMoe) -> None:
        super().__init__()
        self.norm = nn.RMSNorm(dim, eps=1e-6)
        self.mlp = moe

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(self.norm(x))


class TinyMoeLM(nn.Module):
    """Token ids (N, L) → logits (N, L, vocab): embedding, ``layers`` pre-norm MoE blocks,
    RMSNorm, head."""

    def __init__(
        self,
        vocab: int = 64,
        dim: int = 16,
        hidden: int = 24,
        experts: int = 4,
        top_k: int = 2,
        layers: int = 2,
        *,
        router_bias: bool = True,
        norm_topk_prob: bool = True,
        shared: int = 0,
    ) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab, dim)
        self.layers = nn.ModuleList(
            Block(
                dim,
                SparseMoe(
                    dim,
                    hidden,
                    experts,
                    top_k,
                    router_bias=router_bias,
                    norm_topk_prob=norm_topk_prob,
                    shared=shared,
                ),
            )
            for _ in range(layers)
        )
        self.norm = nn.RMSNorm(dim, eps=1e-6)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, nn.Linear):
                    module.weight.normal_(0.0, 0.3)
                    if module.bias is not None:
                        module.bias.uniform_(-0.5, 0.5)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed_tokens(ids)
        for layer in self.layers:
            x = layer(x)
        return self.lm_head(self.norm(x))
