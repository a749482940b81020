"""Direct float32 1-D convolution in the summation order of torch's CPU backends, in C
(``conv_reference_order.c``).

For the reference-exact encode: it gives the bits of torch's own convolution from a weight
packed once, in the order of oneDNN's JIT kernels (:data:`ONEDNN_TAPS`, :data:`ONEDNN_1X1`; torch
reorders the weight for oneDNN on every call) or of its im2col + BLAS path (:data:`BLAS_BLOCKS`,
chains over blocks of the unfolded index, :func:`blas_blocks` long). Torch picks its backend by
shape and thread count, so the caller checks a kernel against torch's convolution for each
input shape before using it (:class:`duplex.codec.nn.conv.StreamingConv1d`).
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import torch
from duplex.codec.kernels import conv_native, native_build
from duplex.codec.kernels.conv_native import CHANNELS, supports
from duplex.codec.kernels.dispatch import KernelUnsupportedError
from torch import Tensor
from torch.nn import functional as F

SOURCE = Path(__file__).with_name("conv_reference_order.c")
BLOCK = 16  # input channels per oneDNN block
ONEDNN_TAPS, ONEDNN_1X1, BLAS_BLOCKS = 0, 1, 2  # the orders (conv_reference_order.c)
BLAS_MAX_BLOCK = 192  # MKL's longest chain over the unfolded index here

_c = ctypes
SIGNATURE = [
    _c.c_void_p, _c.c_int64, _c.c_int64, _c.c_int64, _c.c_void_p, _c.c_void_p, _c.c_void_p,
    _c.c_int64, _c.c_int64, _c.c_int64, _c.c_int64, _c.c_int64, _c.c_int, _c.c_int64, _c.c_int,
]  # fmt: skip


@functools.cache
def load() -> ctypes._CFuncPtr:
    return native_build.function(SOURCE, "duplex_conv1d_reference_order_f32", SIGNATURE)


def _checked(weight: Tensor) -> None:
    if not supports(weight):
        raise KernelUnsupportedError(
            f"the reference-order conv takes float32 weights with C_out % {CHANNELS} == 0"
        )


def pack(weight: Tensor) -> Tensor:
    """For the oneDNN orders: ``[C_out, C_in, K]`` -> ``[C_out / 16, ceil(C_in / 16), K, 16 in, 16 out]``
    (input channels zero-padded)."""
    _checked(weight)
    out_channels, in_channels, taps = weight.shape
    padded = F.pad(weight.detach(), (0, 0, 0, -in_channels % BLOCK))
    blocks = padded.view(out_channels // CHANNELS, CHANNELS, -1, BLOCK, taps)
    return blocks.permute(0, 2, 4, 3, 1).contiguous()


def pack_blas(weight: Tensor) -> Tensor:
    """For the BLAS order: ``[C_out, C_in, K]`` -> ``[C_out / 16, C_in * K, 16 out]``, the layout of
    :func:`duplex.codec.kernels.conv_native.pack`."""
    _checked(weight)
    return conv_native.pack(weight)


def blas_blocks(length: int) -> int:
    """The chain length of MKL's sgemm over an unfolded index of ``length`` (found by trial):
    one chain up to 192, two halves up to 384, then chains of 192."""
    if length <= BLAS_MAX_BLOCK:
        return length
    return length // 2 if length <= 2 * BLAS_MAX_BLOCK else BLAS_MAX_BLOCK


def conv1d(
    x: Tensor,
    panels: Tensor,
    bias: Tensor | None,
    kernel_size: int,
    stride: int = 1,
    dilation: int = 1,
    order: int = ONEDNN_TAPS,
) -> Tensor:
    """``conv1d(x, weight, bias, stride, dilation)`` (no padding, groups 1), summed in ``order``, with
    ``panels`` from :func:`pack` (oneDNN orders) or :func:`pack_blas`."""
    if x.dtype is not torch.float32 or x.device.type != "cpu" or x.dim() != 3:
        raise KernelUnsupportedError("the reference-order conv takes float32 [B, C, T] inputs on the CPU")
    batch, in_channels, length = x.shape
    expected = (
        (in_channels * kernel_size,) if order == BLAS_BLOCKS else (-(-in_channels // BLOCK), kernel_size)
    )
    if tuple(panels.shape[1 : 1 + len(expected)]) != expected:
        raise ValueError(
            f"panels {tuple(panels.shape)} do not fit {in_channels} channels and kernel {kernel_size}"
        )
    if order == ONEDNN_1X1 and kernel_size != 1:
        raise ValueError("the 1x1 order needs kernel_size 1")
    frames = conv_native.output_frames(length, kernel_size, stride, dilation)
    x = x.contiguous()
    out_channels = panels.shape[0] * CHANNELS
    if bias is not None:
        bias = bias.detach().contiguous()
    y = torch.empty(batch, out_channels, frames, dtype=torch.float32)
    load()(
        x.data_ptr(), batch, in_channels, length, panels.data_ptr(),
        None if bias is None else bias.data_ptr(), y.data_ptr(), out_channels, kernel_size, stride, dilation,
        frames, order, blas_blocks(in_channels * kernel_size), torch.get_num_threads(),
    )  # fmt: skip
    return y
