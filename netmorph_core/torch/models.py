"""Reference networks of the papers, randomly initialised: parents (and children) to morph.

- :func:`vgg16` — VGG16 (paper Table 2) with an adjustable width and head size.
- :func:`cifar_net` — the CIFAR-10 networks of the paper's Table 1 (cifar_111 … cifar_3333,
  cifar_base, cifar_ksize, cifar_width), built on Caffe's cifar10_quick layout.
- :func:`small_resnet` — a ResNet of BasicBlocks with BatchNorm and residual adds.
- :class:`TransformerMLP` — a pre-norm transformer feed-forward block
  x + fc2(GELU(fc1(LayerNorm(x)))).
- :class:`LlamaStyle` — a small Llama-style causal language model (RMSNorm, rotary grouped-query
  attention, SwiGLU feed-forward, optionally tied embeddings), computed in the input's dtype.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import MappingProxyType

import torch
from torch import nn

#: VGG16's conv widths per stage (3×3 convs, 2×2 max-pool after each stage).
VGG16_STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))

Stage = tuple[tuple[int, int], ...]
#: Table 1 as stages of (kernel, channels) convs, each conv followed by ReLU and each stage by
#: a 3×3 stride-2 pool (max for the first, average for the others, as in cifar10_quick).
#: "(5:32x4)(1:32)" is a 5×5 conv with 128 channels then a 1×1 conv with 32. The fourth subnet
#: of cifar_2222/3333 sits in the last stage, which is where morphing cifar_222 puts it.
CIFAR_TABLE1: MappingProxyType[str, tuple[Stage, ...]] = MappingProxyType(
    {
        "cifar_111": (((5, 32),), ((5, 32),), ((5, 64),)),
        "cifar_211": (((5, 128), (1, 32)), ((5, 32),), ((5, 64),)),
        "cifar_222": (((5, 128), (1, 32)), ((5, 128), (1, 32)), ((5, 256), (1, 64))),
        "cifar_2222": (
            ((5, 128), (1, 32)),
            ((5, 128), (1, 32)),
            ((5, 256), (1, 64), (5, 256), (1, 64)),
        ),
        "cifar_3333": (
            ((5, 128), (3, 128), (1, 32)),
            ((5, 128), (3, 128), (1, 32)),
            ((5, 256), (3, 256), (1, 64), (5, 256), (3, 256), (1, 64)),
        ),
        "cifar_base": (((5, 32), (1, 32)), ((5, 32), (1, 32)), ((5, 64), (1, 64))),
        "cifar_ksize": (((5, 32), (3, 32)), ((5, 32), (3, 32)), ((5, 64), (3, 64))),
        "cifar_width": (((5, 64), (3, 32)), ((5, 64), (3, 32)), ((5, 128), (3, 64))),
    }
)


class VGG(nn.Module):
    """VGG: ``features`` (3×3 convs + ReLU, max-pool per stage), adaptive average pool to
    ``pooled_size``², ``classifier`` (two hidden Linear + ReLU + Dropout, then the output)."""

    def __init__(
        self,
        stages: Sequence[Sequence[int]],
        num_classes: int = 1000,
        *,
        in_channels: int = 3,
        pooled_size: int = 7,
        hidden: int = 4096,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for stage in stages:
            for width in stage:
                layers += [nn.Conv2d(c, width, 3, padding=1), nn.ReLU(inplace=True)]
                c = width
            layers.append(nn.MaxPool2d(2, 2))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(pooled_size)
        self.classifier = nn.Sequential(
            nn.Linear(c * pooled_size * pooled_size, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )
        for m in self.modules():  # VGG's usual initialisation: activations keep their scale
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def vgg16(
    num_classes: int = 1000,
    *,
    width_divisor: int = 1,
    in_channels: int = 3,
    pooled_size: int = 7,
    hidden: int = 4096,
    dropout: float = 0.5,
) -> VGG:
    """VGG16 with every conv width divided by ``width_divisor`` (same structure, cheaper).

    Conv layers are ``features.{0,2,5,7,10,12,14,17,19,21,24,26,28}``; the last conv of
    stages 1-3 (where the paper's VGG16(NetMorph) adds a layer) are features.2, .7 and .14.
    """
    stages = [tuple(w // width_divisor for w in stage) for stage in VGG16_STAGES]
    return VGG(
        stages,
        num_classes,
        in_channels=in_channels,
        pooled_size=pooled_size,
        hidden=hidden,
        dropout=dropout,
    )


class CifarNet(nn.Module):
    """A cifar10_quick-style network: ``features`` (conv + ReLU per layer, a 3×3 stride-2 pool
    per stage), then ``classifier`` = Flatten → Linear(·, hidden) → Linear(hidden, classes)."""

    def __init__(
        self,
        stages: Sequence[Stage],
        *,
        image_size: int = 32,
        in_channels: int = 3,
        hidden: int = 64,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c, size = in_channels, image_size
        for i, stage in enumerate(stages):
            for kernel, width in stage:
                layers += [nn.Conv2d(c, width, kernel, padding=kernel // 2), nn.ReLU()]
                c = width
            pool = nn.MaxPool2d if i == 0 else nn.AvgPool2d
            layers.append(pool(3, 2, padding=1))
            size = (size - 1) // 2 + 1
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(c * size * size, hidden), nn.Linear(hidden, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def cifar_net(
    name: str, *, image_size: int = 32, in_channels: int = 3, width_divisor: int = 1
) -> CifarNet:
    """The Table 1 network ``name`` (a key of :data:`CIFAR_TABLE1`) for square images, every
    conv width divided by ``width_divisor`` (same structure, cheaper)."""
    if name not in CIFAR_TABLE1:
        raise ValueError(f"name must be one of {sorted(CIFAR_TABLE1)}, got {name!r}")
    stages = tuple(tuple((k, c // width_divisor) for k, c in stage) for stage in CIFAR_TABLE1[name])
    return CifarNet(stages, image_size=image_size, in_channels=in_channels)


class BasicBlock(nn.Module):
    """relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)); the shortcut is the identity, or
    ``downsample`` (1×1 conv + BN) when the stride or the width changes."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + shortcut)


class ResNet(nn.Module):
    """stem (3×3 conv, BN, ReLU) → stages ``layer1``, ``layer2``, … of BasicBlocks (stride 2
    from the second stage on) → global average pool → ``fc``."""

    def __init__(
        self,
        widths: Sequence[int] = (16, 32),
        blocks: Sequence[int] = (1, 1),
        *,
        in_channels: int = 3,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        c = widths[0]
        for i, (width, count) in enumerate(zip(widths, blocks)):
            stage = []
            for j in range(count):
                stage.append(BasicBlock(c, width, 2 if i > 0 and j == 0 else 1))
                c = width
            self.add_module(f"layer{i + 1}", nn.Sequential(*stage))
        self.stages = len(widths)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        for i in range(self.stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def small_resnet(
    widths: Sequence[int] = (16, 32), blocks: Sequence[int] = (1, 1), **kwargs: int
) -> ResNet:
    """A small ResNet; its BatchNorms get random affine parameters and running statistics
    (torch's global RNG, like the weights) so that eval mode is not a trivial normalisation."""
    model = ResNet(widths, blocks, **kwargs)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(1 + 0.2 * torch.randn(n))
                m.bias.copy_(0.1 * torch.randn(n))
                m.running_mean.copy_(0.1 * torch.randn(n))
                m.running_var.copy_(1 + 0.2 * torch.rand(n))
    return model


class TransformerMLP(nn.Module):
    """A pre-norm transformer feed-forward block on (N, L, dim) tokens:
    x + fc2(GELU(fc1(LayerNorm(x))))."""

    def __init__(self, dim: int = 16, hidden: int = 64) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(self.act(self.fc1(self.norm(x))))


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class GQAttention(nn.Module):
    """Causal grouped-query attention with rotary position embedding on (N, L, dim) tokens.

    ``num_heads`` query heads of ``head_dim`` share ``num_kv_heads`` key/value heads: query
    head h reads key/value head h // (num_heads / num_kv_heads). Scale 1/√head_dim.
    """

    def __init__(
        self, dim: int, num_heads: int, num_kv_heads: int, head_dim: int, rope_base: float = 1e4
    ) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.rope_base = rope_base
        self.q_proj = nn.Linear(dim, num_heads * head_dim, bias=False)
        self.k_proj = nn.Linear(dim, num_kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(dim, num_kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(num_heads * head_dim, dim, bias=False)

    def _rope(self, x: torch.Tensor) -> torch.Tensor:
        length, d = x.shape[-2], self.head_dim
        inv = self.rope_base ** -(torch.arange(0, d, 2, dtype=torch.float64, device=x.device) / d)
        angle = torch.arange(length, dtype=torch.float64, device=x.device)[:, None] * inv
        angle = torch.cat((angle, angle), dim=-1)
        return x * angle.cos().to(x.dtype) + _rotate_half(x) * angle.sin().to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, _ = x.shape
        split = (n, length, -1, self.head_dim)
        q = self._rope(self.q_proj(x).view(split).transpose(1, 2))
        k = self._rope(self.k_proj(x).view(split).transpose(1, 2))
        v = self.v_proj(x).view(split).transpose(1, 2)
        rep = self.num_heads // self.num_kv_heads
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        y = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(y.transpose(1, 2).reshape(n, length, -1))


class SwiGLU(nn.Module):
    """down(SiLU(gate(x)) · up(x))."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaBlock(nn.Module):
    """x + attn(norm1(x)), then + mlp(norm2(·)) (pre-norm, RMSNorm)."""

    def __init__(
        self, dim: int, num_heads: int, num_kv_heads: int, head_dim: int, hidden: int
    ) -> None:
        super().__init__()
        self.input_layernorm = nn.RMSNorm(dim, eps=1e-6)
        self.self_attn = GQAttention(dim, num_heads, num_kv_heads, head_dim)
        self.post_attention_layernorm = nn.RMSNorm(dim, eps=1e-6)
        self.mlp = SwiGLU(dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x))
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaStyle(nn.Module):
    """A Llama-style causal language model on token ids (N, L) → logits (N, L, vocab).

    Embedding → ``layers`` × :class:`LlamaBlock` → RMSNorm → ``lm_head`` (tied to the
    embedding when ``tie_embeddings``). Weights are random (normal, std 0.2 for the
    projections), so a morph's deviation is measured on a non-trivial function.
    """

    def __init__(
        self,
        vocab: int = 64,
        dim: int = 32,
        layers: int = 2,
        num_heads: int = 4,
        num_kv_heads: int = 2,
        head_dim: int | None = None,
        hidden: int = 64,
        *,
        tie_embeddings: bool = False,
    ) -> None:
        super().__init__()
        if dim % num_heads and head_dim is None:
            raise ValueError(f"num_heads={num_heads} does not divide dim={dim}; give head_dim")
        if num_heads % num_kv_heads:
            raise ValueError(f"num_kv_heads={num_kv_heads} does not divide num_heads={num_heads}")
        head_dim = dim // num_heads if head_dim is None else head_dim
        self.embed_tokens = nn.Embedding(vocab, dim)
        self.layers = nn.ModuleList(
            LlamaBlock(dim, num_heads, num_kv_heads, head_dim, hidden) for _ in range(layers)
        )
        self.norm = nn.RMSNorm(dim, eps=1e-6)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, nn.Linear):
                    module.weight.normal_(0.0, 0.2)
                if isinstance(module, nn.RMSNorm):
                    module.weight.uniform_(0.5, 1.5)
        if tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed_tokens(ids)
        for layer in self.layers:
            x = layer(x)
        return self.lm_head(self.norm(x))
