"""Low-precision weight formats (docs/nn-api.md), as the ``linear`` op reads them.

* ``"bf16"``: the weight in bfloat16 (no scale);
* ``"int8"``: weight-only symmetric quantization, ``w = values * scale``: int8 ``values [N, K]``
  and float32 ``scale [N, K / group_size]``, one scale per output channel (``group_size`` None)
  or per group of ``group_size`` consecutive input columns. A row's (or group's) scale is its
  largest ``|w|`` over 127, so every value rounds into [-127, 127].
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import Tensor

WeightFormat = Literal["bf16", "int8"]
WEIGHT_FORMATS: tuple[str, ...] = get_args(WeightFormat)
SCALE_SUFFIX = "_scale"
INT8_MAX = 127


class QuantizationError(ValueError):
    """A model or weight cannot be quantized as asked (already quantized, bad group size...)."""


def check_weight_format(mode: str) -> WeightFormat:
    if mode not in WEIGHT_FORMATS:
        raise QuantizationError(f"unknown weight format {mode!r}; use one of: {', '.join(WEIGHT_FORMATS)}")
    return mode  # type: ignore[return-value]


def check_group_size(in_features: int, group_size: int | None, name: str = "weight") -> int:
    """The columns per scale of an ``in_features``-wide int8 weight (all of them when None)."""
    if group_size is None:
        return in_features
    if group_size < 8 or group_size % 8 or in_features % group_size:
        raise QuantizationError(
            f"group_size {group_size} does not fit {name} ({in_features} input features): use a "
            "multiple of 8 that divides every weight's input width (e.g. 32, 64 or 128), or none"
        )
    return group_size


def quantize_int8(
    weight: Tensor, group_size: int | None = None, chunk: int = 1 << 20
) -> tuple[Tensor, Tensor]:
    """``weight [N, K]`` -> int8 ``values [N, K]`` and float32 ``scale [N, K / group]``, a block
    of about ``chunk`` elements at a time (the float32 work copies stay small: a large weight
    is quantized as it is loaded)."""
    rows, columns = weight.shape
    group = check_group_size(columns, group_size)
    values = torch.empty(rows, columns, dtype=torch.int8, device=weight.device)
    scale = torch.empty(rows, columns // group, dtype=torch.float32, device=weight.device)
    step = max(1, chunk // max(columns, 1))
    for start in range(0, rows, step):
        block = weight[start : start + step].detach().to(torch.float32, copy=True).unflatten(1, (-1, group))
        block_scale = block.abs().amax(dim=-1) / INT8_MAX
        safe = torch.where(block_scale > 0, block_scale, torch.ones_like(block_scale))
        quantized = block.div_(safe[..., None]).round_().clamp_(-INT8_MAX, INT8_MAX)
        values[start : start + step] = quantized.flatten(1)
        scale[start : start + step] = block_scale
    return values, scale


def dequantize(weight: Tensor, scale: Tensor | None, dtype: torch.dtype) -> Tensor:
    """The float weight in ``dtype`` that a stored (possibly int8) weight stands for."""
    if scale is None:
        return weight.to(dtype)
    rows, columns = weight.shape
    grouped = weight.to(dtype).view(rows, scale.shape[1], -1) * scale.to(dtype)[..., None]
    return grouped.view(rows, columns)


def is_quantized(weight: Tensor) -> bool:
    return weight.dtype is torch.int8
