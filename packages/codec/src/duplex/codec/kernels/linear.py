"""Public linear op (``x @ weight.T + bias``): check the inputs, then run the selected implementation."""

from __future__ import annotations

import torch
from duplex.codec.kernels.dispatch import select_kernels
from torch import Tensor


def linear(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    scale: Tensor | None = None,
    *,
    numerics: str = "fast",
) -> Tensor:
    """``F.linear`` through the :func:`~duplex.codec.kernels.dispatch.select_kernels` set of
    ``numerics`` for ``x``'s device and dtype (fast: the few-row C kernel on the CPU).

    ``weight`` may be stored in low precision (:mod:`duplex.codec.nn.low_precision`): bfloat16, or
    int8 with its float32 ``scale [out_features, groups]``."""
    if weight.dim() != 2:
        raise ValueError(f"weight must be [out_features, in_features], got shape {tuple(weight.shape)}")
    if x.dim() == 0 or x.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"input's last dimension must be in_features={weight.shape[1]}, got shape {tuple(x.shape)}"
        )
    if bias is not None and bias.shape != weight.shape[:1]:
        raise ValueError(f"bias must be [{weight.shape[0]}], got shape {tuple(bias.shape)}")
    if (weight.dtype is torch.int8) != (scale is not None):
        raise ValueError("an int8 weight needs its scale, and only an int8 weight takes one")
    if scale is not None and (
        scale.dim() != 2 or scale.shape[0] != weight.shape[0] or weight.shape[1] % scale.shape[1]
    ):
        raise ValueError(
            f"scale must be [out_features, groups] with groups dividing in_features, got {tuple(scale.shape)}"
        )
    return select_kernels(numerics, x.device, x.dtype).linear(x, weight, bias, scale)
