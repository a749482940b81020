"""``nn.Linear`` computed through the selected ``linear`` op (same parameters, same checkpoint keys)."""

from __future__ import annotations

import torch
from duplex.codec.kernels import UsesKernels
from torch import nn


class Linear(nn.Linear, UsesKernels):
    """A drop-in ``nn.Linear``; with the fast kernels, few-row products (streaming) run in C.

    Its weight may be stored in low precision (:mod:`duplex.codec.nn.low_precision`): bfloat16,
    or int8 with ``weight_scale``."""

    low_precision_weights = ("weight",)
    activation_dtype: torch.dtype | None = None

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.register_buffer("weight_scale", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.kernels.linear(x, self.weight, self.bias, self.weight_scale)
