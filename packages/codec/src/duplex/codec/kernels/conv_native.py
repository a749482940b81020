"""Direct float32 1-D convolution in C (``conv_native.c``) for long, narrow streaming inputs."""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import torch
from duplex.codec.kernels import native_build
from duplex.codec.kernels.dispatch import KernelUnsupportedError
from torch import Tensor

SOURCE = Path(__file__).with_name("conv_native.c")
CHANNELS = 16  # output channels per weight panel (conv_native.c)

_c = ctypes
SIGNATURE = [
    _c.c_void_p, _c.c_int64, _c.c_int64, _c.c_int64, _c.c_void_p, _c.c_void_p, _c.c_void_p,
    _c.c_int64, _c.c_int64, _c.c_int64, _c.c_int64, _c.c_int64, _c.c_int,
]  # fmt: skip


@functools.cache
def load() -> ctypes._CFuncPtr:
    return native_build.function(SOURCE, "duplex_conv1d_f32", SIGNATURE)


def supports(weight: Tensor) -> bool:
    """Whether the kernel takes this ``[C_out, C_in, K]`` weight (float32, C_out a multiple of 16)."""
    return weight.dtype is torch.float32 and weight.dim() == 3 and weight.shape[0] % CHANNELS == 0


def pack(weight: Tensor) -> Tensor:
    """``[C_out, C_in, K]`` -> the kernel's panels ``[C_out / 16, C_in * K, 16]``."""
    if not supports(weight):
        raise KernelUnsupportedError(f"the native conv takes float32 weights with C_out % {CHANNELS} == 0")
    out_channels = weight.shape[0]
    flat = weight.detach().reshape(out_channels // CHANNELS, CHANNELS, -1)
    return flat.transpose(1, 2).contiguous()


def output_frames(length: int, kernel_size: int, stride: int, dilation: int) -> int:
    """Output frames of an unpadded conv over ``length`` input frames (a clear error when none)."""
    frames = (length - dilation * (kernel_size - 1) - 1) // stride + 1
    if frames <= 0:
        raise ValueError(f"input of {length} frames is shorter than the kernel's reach")
    return frames


def conv1d(
    x: Tensor, panels: Tensor, bias: Tensor | None, kernel_size: int, stride: int = 1, dilation: int = 1
) -> Tensor:
    """``conv1d(x, weight, bias, stride, dilation)`` (no padding, groups 1) with ``panels = pack(weight)``."""
    if x.dtype is not torch.float32 or x.device.type != "cpu" or x.dim() != 3:
        raise KernelUnsupportedError("the native conv takes float32 [B, C, T] inputs on the CPU")
    batch, in_channels, length = x.shape
    out_channels = panels.shape[0] * CHANNELS
    if panels.shape[1] != in_channels * kernel_size:
        raise ValueError(
            f"panels hold {panels.shape[1]} taps per channel tile, expected {in_channels * kernel_size}"
        )
    frames = output_frames(length, kernel_size, stride, dilation)
    x = x.contiguous()
    if bias is not None:
        bias = bias.detach().contiguous()
    y = torch.empty(batch, out_channels, frames, dtype=torch.float32)
    load()(
        x.data_ptr(), batch, in_channels, length, panels.data_ptr(),
        None if bias is None else bias.data_ptr(), y.data_ptr(), out_channels, kernel_size, stride, dilation,
        frames, torch.get_num_threads(),
    )  # fmt: skip
    return y
