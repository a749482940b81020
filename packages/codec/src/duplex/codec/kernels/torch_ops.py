"""The torch implementations of the ops that are one torch call each (the reference set)."""

from __future__ import annotations

import torch.nn.functional as F
from duplex.codec.kernels.weight_formats import dequantize
from torch import Tensor


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None, scale: Tensor | None = None) -> Tensor:
    """``F.linear``; a low-precision weight (bf16, or int8 with ``scale``) is widened to ``x``'s dtype."""
    if weight.dtype is not x.dtype:
        weight = dequantize(weight, scale, x.dtype)
    return F.linear(x, weight, bias)


def conv1d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int = 1,
    dilation: int = 1,
    groups: int = 1,
    packed: dict | None = None,
) -> Tensor:
    """``F.conv1d`` without padding (``packed`` is for the fast implementations' derived weights)."""
    return F.conv1d(x, weight, bias, stride, 0, dilation, groups)


def conv_transpose1d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int = 1,
    groups: int = 1,
    packed: dict | None = None,
) -> Tensor:
    return F.conv_transpose1d(x, weight, bias, stride, groups=groups)


def elu(x: Tensor, alpha: float = 1.0) -> Tensor:
    return F.elu(x, alpha)
