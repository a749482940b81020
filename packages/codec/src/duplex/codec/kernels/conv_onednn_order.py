"""Direct float32 1-D convolution in oneDNN's summation order, in C (``conv_onednn_order.c``).

For the reference-exact encode: where torch's CPU convolution runs on oneDNN's JIT kernels, this
gives its bits from a weight packed once (torch reorders the weight for oneDNN on every call).
The caller checks the result against torch's own convolution for each input shape before using
it (:class:`duplex.codec.nn.conv.StreamingConv1d`): torch picks oneDNN, or not, by shape.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import torch
from duplex.codec.kernels import native_build
from duplex.codec.kernels.dispatch import KernelUnsupportedError
from torch import Tensor
from torch.nn import functional as F

SOURCE = Path(__file__).with_name("conv_onednn_order.c")
CHANNELS = 16  # output channels per weight panel
BLOCK = 16  # input channels per oneDNN block

_c = ctypes
SIGNATURE = [
    _c.c_void_p, _c.c_int64, _c.c_int64, _c.c_int64, _c.c_void_p, _c.c_void_p, _c.c_void_p,
    _c.c_int64, _c.c_int64, _c.c_int64, _c.c_int64, _c.c_int64, _c.c_int, _c.c_int,
]  # fmt: skip


@functools.cache
def load() -> ctypes._CFuncPtr:
    return native_build.function(SOURCE, "duplex_conv1d_onednn_order_f32", SIGNATURE)


def supports(weight: Tensor) -> bool:
    """Whether the kernel takes this ``[C_out, C_in, K]`` weight (float32, C_out a multiple of 16)."""
    return weight.dtype is torch.float32 and weight.dim() == 3 and weight.shape[0] % CHANNELS == 0


def pack(weight: Tensor) -> Tensor:
    """``[C_out, C_in, K]`` -> ``[C_out / 16, ceil(C_in / 16), K, 16 in, 16 out]`` (inputs zero-padded)."""
    if not supports(weight):
        raise KernelUnsupportedError(
            f"the oneDNN-order conv takes float32 weights with C_out % {CHANNELS} == 0"
        )
    out_channels, in_channels, taps = weight.shape
    padded = F.pad(weight.detach(), (0, 0, 0, -in_channels % BLOCK))
    blocks = padded.view(out_channels // CHANNELS, CHANNELS, -1, BLOCK, taps)
    return blocks.permute(0, 2, 4, 3, 1).contiguous()


def conv1d(
    x: Tensor,
    panels: Tensor,
    bias: Tensor | None,
    kernel_size: int,
    stride: int = 1,
    dilation: int = 1,
    one_by_one: bool = False,
) -> Tensor:
    """``conv1d(x, weight, bias, stride, dilation)`` (no padding, groups 1) with ``panels = pack(weight)``,
    summed as oneDNN's 1x1 kernel (``one_by_one``) or its kernel with taps."""
    if x.dtype is not torch.float32 or x.device.type != "cpu" or x.dim() != 3:
        raise KernelUnsupportedError("the oneDNN-order conv takes float32 [B, C, T] inputs on the CPU")
    batch, in_channels, length = x.shape
    if panels.shape[1] != -(-in_channels // BLOCK) or panels.shape[2] != kernel_size:
        raise ValueError(
            f"panels {tuple(panels.shape)} do not fit {in_channels} channels and kernel {kernel_size}"
        )
    if one_by_one and kernel_size != 1:
        raise ValueError("the 1x1 order needs kernel_size 1")
    frames = (length - dilation * (kernel_size - 1) - 1) // stride + 1
    if frames <= 0:
        raise ValueError(f"input of {length} frames is shorter than the kernel's reach")
    x = x.contiguous()
    out_channels = panels.shape[0] * CHANNELS
    if bias is not None:
        bias = bias.detach().contiguous()
    y = torch.empty(batch, out_channels, frames, dtype=torch.float32)
    load()(
        x.data_ptr(), batch, in_channels, length, panels.data_ptr(),
        None if bias is None else bias.data_ptr(), y.data_ptr(), out_channels, kernel_size, stride, dilation,
        frames, int(one_by_one), torch.get_num_threads(),
    )  # fmt: skip
    return y
