"""Public linear op (``x @ weight.T + bias``): check the inputs, then run the chosen implementation.

On the CPU the ``native`` backend computes the few-row products of streaming inference in C,
reading each weight once at close to the memory bandwidth (BLAS reaches a fraction of it there);
other shapes, dtypes and anything that needs a gradient go to ``torch.nn.functional.linear``.
Inside :func:`~duplex.codec.kernels.reference_matmuls` (auto mode), 2-3 row products take
:mod:`~duplex.codec.kernels.linear_blas_order`, which sums exactly as torch's BLAS does there,
when it has checked that it does on this machine; the rest stays on BLAS.
"""

from __future__ import annotations

import torch
from duplex.codec.kernels import dispatch, linear_blas_order
from torch import Tensor


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    if weight.dim() != 2:
        raise ValueError(f"weight must be [out_features, in_features], got shape {tuple(weight.shape)}")
    if x.dim() == 0 or x.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"input's last dimension must be in_features={weight.shape[1]}, got shape {tuple(x.shape)}"
        )
    if bias is not None and bias.shape != weight.shape[:1]:
        raise ValueError(f"bias must be [{weight.shape[0]}], got shape {tuple(bias.shape)}")
    needs_grad = torch.is_grad_enabled() and (
        x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    )
    if dispatch.blas_order_wanted(x.device, needs_grad):
        try:
            return linear_blas_order.linear(x, weight, bias)
        except dispatch.KernelUnsupportedError:
            pass
        except ImportError:  # no compiler: BLAS itself
            pass
    return dispatch.run("linear", x.device, needs_grad, x, weight, bias)
