"""``nn.Linear`` computed through the kernel dispatcher (same parameters, same checkpoint keys)."""

from __future__ import annotations

import torch
from duplex.codec.kernels import linear
from torch import nn


class Linear(nn.Linear):
    """A drop-in ``nn.Linear`` whose few-row products (streaming) run on the fast CPU kernel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
