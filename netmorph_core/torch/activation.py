"""Parametric activations as a module: φ^a(x) = (1 − a)·φ(x) + a·x (NetMorph §3.3).

At a = 1 the module is the identity, so it can be inserted between the two layers of a depth
morph without changing the function; training then moves ``a`` and the layer grows
non-linear. Over ReLU, φ^a is PReLU with slope a.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

#: The named bases: PyTorch's functional form of each (default parameters).
BASES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "gelu": F.gelu,
    "silu": F.silu,
    "elu": F.elu,
    "leaky_relu": F.leaky_relu,
}


class PActivation(nn.Module):
    """φ^a(x) = (1 − a)·φ(x) + a·x, elementwise, with one scalar ``a``.

    ``base``: a name of :data:`BASES` or any callable on tensors (an ``nn.Module`` is registered
    as the submodule ``phi``, so its own parameters are trained and saved too). ``a`` is an
    ``nn.Parameter`` when ``learnable``, else a buffer; either way it is the state-dict entry
    ``"a"`` (a 0-dim tensor). ``a = 1`` gives exactly ``x`` (``0·φ(x) + 1·x``).
    """

    def __init__(
        self,
        base: str | Callable[[torch.Tensor], torch.Tensor] = "relu",
        a: float = 1.0,
        learnable: bool = True,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if isinstance(base, str):
            if base not in BASES:
                raise ValueError(
                    f"base must be one of {', '.join(sorted(BASES))} or a callable, got {base!r}"
                )
            self.base_name = base
            self.phi = BASES[base]
        elif callable(base):
            self.base_name = getattr(base, "__name__", type(base).__name__)
            self.phi = base
        else:
            raise TypeError(f"base must be an activation name or a callable, got {base!r}")
        if isinstance(a, bool) or not isinstance(a, (int, float)):
            raise TypeError(f"a must be a real number, got {a!r}")
        if not isinstance(learnable, bool):
            raise TypeError(f"learnable must be a bool, got {learnable!r}")
        value = torch.tensor(float(a), device=device, dtype=dtype or torch.get_default_dtype())
        if learnable:
            self.a = nn.Parameter(value)
        else:
            self.register_buffer("a", value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.a.to(x.dtype)
        return (1 - a) * self.phi(x) + a * x

    def extra_repr(self) -> str:
        kind = "learnable" if isinstance(self.a, nn.Parameter) else "fixed"
        return f"base={self.base_name}, a={float(self.a.detach()):.4g} ({kind})"


def make_activation(activation: object) -> PActivation:
    """The P-activation at a = 1 for ``activation``: "prelu" (PReLU: φ = relu), a base name or a
    callable."""
    if isinstance(activation, PActivation):
        raise TypeError(
            "activation must be a name or a callable base, not a PActivation instance "
            "(the morph creates its own at a = 1)"
        )
    if activation == "prelu":
        return PActivation("relu")
    if isinstance(activation, str) or callable(activation):
        return PActivation(activation)  # type: ignore[arg-type]
    raise TypeError(f"activation must be 'prelu', a base name or a callable, got {activation!r}")
