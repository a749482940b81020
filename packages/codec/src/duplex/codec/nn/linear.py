"""``nn.Linear`` computed through the selected ``linear`` op (same parameters, same checkpoint keys)."""

from __future__ import annotations

import torch
from duplex.codec.kernels import UsesKernels
from torch import nn


class Linear(nn.Linear, UsesKernels):
    """A drop-in ``nn.Linear``; with the fast kernels, few-row products (streaming) run in C."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.kernels.linear(x, self.weight, self.bias)
