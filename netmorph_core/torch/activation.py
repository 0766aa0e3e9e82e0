"""Parametric activations as a module: φ^a(x) = (1 − a)·φ(x) + a·x (NetMorph §3.3).

At a = 1 the module is the identity, so it can be inserted between the two layers of a depth
morph without changing the function; training then moves ``a`` and the layer grows
non-linear. Over ReLU, φ^a is PReLU with slope a.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .. import _validation as v
from ..activations import accepted_names, canonical_name

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


def _out_of_place(base: nn.Module) -> nn.Module:
    """``base``, or a copy of it with ``inplace=False`` when it computes in place."""
    if getattr(base, "inplace", False) is True:
        base = copy.deepcopy(base)
        base.inplace = False
    return base


class PActivation(nn.Module):
    """φ^a(x) = (1 − a)·φ(x) + a·x, elementwise, with one scalar ``a``.

    ``base``: a base name ("relu", "tanh", ...) or the paper's name of its P-activation
    ("PReLU", "PTanh", ...), in any case, or any callable on tensors. An ``nn.Module`` is
    registered as the submodule ``phi`` (its own parameters are trained and saved too); one
    built with ``inplace=True`` is copied with ``inplace=False``, and any other callable (but
    torch's own modules) is given a copy of x, so x is never overwritten and a = 1 stays
    exactly the identity. ``a`` (a finite real) is an ``nn.Parameter`` when ``learnable``,
    else a buffer; either way it is
    the state-dict entry ``"a"`` (a 0-dim tensor). ``a = 1`` gives exactly ``x``.
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
        self.copy_input = False
        if isinstance(base, str):
            try:
                self.base_name = canonical_name(base)
            except ValueError:
                raise ValueError(
                    f"base must be one of {accepted_names()}, or a callable; got {base!r}"
                ) from None
            self.phi = BASES[self.base_name]
        elif isinstance(base, nn.Module):
            self.base_name = type(base).__name__
            self.phi = _out_of_place(base)
            # torch's own modules write into x only through ``inplace``
            self.copy_input = not type(base).__module__.startswith("torch.nn.")
        elif callable(base):
            self.base_name = getattr(base, "__name__", type(base).__name__)
            self.phi = base
            self.copy_input = True
        else:
            raise TypeError(f"base must be an activation name or a callable, got {base!r}")
        a = v.real_number(a, "a")
        if not isinstance(learnable, bool):
            raise TypeError(f"learnable must be a bool, got {learnable!r}")
        if device is not None:
            try:
                device = torch.device(device)
            except (RuntimeError, TypeError):
                raise ValueError(
                    "device must be a torch.device or a device string such as 'cpu' or "
                    f"'cuda:0', got {device!r}"
                ) from None
        if dtype is not None and (
            not isinstance(dtype, torch.dtype) or not dtype.is_floating_point
        ):
            raise TypeError(
                f"dtype must be a floating torch.dtype (e.g. torch.float32), got {dtype!r}: "
                "a is a real slope, trained with the model"
            )
        value = torch.tensor(float(a), device=device, dtype=dtype or torch.get_default_dtype())
        if learnable:
            self.a = nn.Parameter(value)
        else:
            self.register_buffer("a", value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.a.to(x.dtype)
        phi = self.phi(x.clone() if self.copy_input else x)
        return (1 - a) * phi + a * x

    def extra_repr(self) -> str:
        kind = "learnable" if isinstance(self.a, nn.Parameter) else "fixed"
        return f"base={self.base_name}, a={float(self.a.detach()):.4g} ({kind})"


def make_activation(activation: object) -> PActivation:
    """The P-activation at a = 1 for ``activation``: a name :class:`PActivation` accepts
    ("prelu", "PTanh", "relu", ...) or a callable base."""
    if isinstance(activation, PActivation):
        raise TypeError(
            "activation must be a name or a callable base, not a PActivation instance "
            "(the morph creates its own at a = 1)"
        )
    if isinstance(activation, str) or callable(activation):
        return PActivation(activation)  # type: ignore[arg-type]
    raise TypeError(
        f"activation must be one of {accepted_names()}, or a callable; got {activation!r}"
    )
