"""ELU, SEANet's activation: torch's module, with a C kernel for streaming on the CPU."""

from __future__ import annotations

import torch
from duplex.codec.kernels import dispatch, elu_native
from duplex.codec.kernels.dispatch import NATIVE
from torch import nn


class ELU(nn.ELU):
    """``nn.ELU``; without gradients on the CPU in float32 (outside ``reference_matmuls``) it runs
    ``kernels/elu_native.c``, a few ulp from torch's and several times faster on SEANet's shapes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            not self.inplace
            and x.dtype == torch.float32
            and dispatch.native_wanted(x.device, torch.is_grad_enabled())
        ):
            try:
                return elu_native.elu(x, self.alpha)
            except ImportError as error:  # the kernel does not build here
                dispatch.mark_broken(NATIVE, error)
        return super().forward(x)
