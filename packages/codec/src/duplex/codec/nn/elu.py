"""ELU, SEANet's activation, through the selected ``elu`` op (fast on the CPU: C, a few ulp from torch's)."""

from __future__ import annotations

import torch
from duplex.codec.kernels import UsesKernels
from torch import nn


class ELU(nn.ELU, UsesKernels):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inplace:
            return super().forward(x)
        return self.kernels.elu(x, self.alpha)
