"""ELU in C (``elu_native.c``): SEANet's activation, a few ulp from torch's."""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import torch
from duplex.codec.kernels import native_build
from duplex.codec.kernels.dispatch import reference_kernel
from duplex.codec.kernels.torch_library import define_op
from torch import Tensor

SOURCE = Path(__file__).with_name("elu_native.c")


@functools.cache
def load() -> ctypes._CFuncPtr:
    signature = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_int]
    return native_build.function(SOURCE, "duplex_elu_f32", signature)


def elu(x: Tensor, alpha: float = 1.0) -> Tensor:
    """``F.elu(x, alpha)``: in C for float32 CPU tensors without gradient (a new tensor)."""
    if (
        x.dtype is not torch.float32
        or x.device.type != "cpu"
        or (torch.is_grad_enabled() and x.requires_grad)
    ):
        return reference_kernel("elu")(x, alpha)
    return elu_f32(x, alpha)


def _elu_f32(x: Tensor, alpha: float) -> Tensor:
    """ELU of a float32 CPU tensor in C (a new contiguous tensor)."""
    x = x.contiguous()
    y = torch.empty_like(x)
    load()(x.data_ptr(), y.data_ptr(), x.numel(), alpha, torch.get_num_threads())
    return y


elu_f32 = define_op(
    "elu_f32(Tensor x, float alpha) -> Tensor",
    _elu_f32,
    lambda x, alpha: torch.empty_like(x, memory_format=torch.contiguous_format),
)
