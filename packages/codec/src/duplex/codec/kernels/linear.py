"""Public linear op (``x @ weight.T + bias``): check the inputs, then run the selected implementation."""

from __future__ import annotations

from duplex.codec.kernels.dispatch import select_kernels
from torch import Tensor


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None, *, numerics: str = "fast") -> Tensor:
    """``F.linear`` through the :func:`~duplex.codec.kernels.dispatch.select_kernels` set of
    ``numerics`` for ``x``'s device and dtype (fast: the few-row C kernel on the CPU)."""
    if weight.dim() != 2:
        raise ValueError(f"weight must be [out_features, in_features], got shape {tuple(weight.shape)}")
    if x.dim() == 0 or x.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"input's last dimension must be in_features={weight.shape[1]}, got shape {tuple(x.shape)}"
        )
    if bias is not None and bias.shape != weight.shape[:1]:
        raise ValueError(f"bias must be [{weight.shape[0]}], got shape {tuple(bias.shape)}")
    return select_kernels(numerics, x.device, x.dtype).linear(x, weight, bias)
