"""The ``native`` conv1d and conv_transpose1d ops: float32 convolutions on the CPU's C kernels.

Streaming calls are short: a few output frames (one matmul on the few-row kernel over the
unfolded input), or long and narrow (the direct conv kernel of ``conv_native.c`` over a weight
packed in 16-channel panels). Transposed convolutions of a few frames are one matmul and an
overlap-add (torch's CPU kernel takes a slow im2col loop on these shapes). Everything else, and
every call that needs a gradient, runs torch's op. ``packed``: a dict the caller keeps for a
streaming session, holding the derived weights (panels, transposes) made on its first call.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import torch
from duplex.codec.kernels import linear_native, native_build
from duplex.codec.kernels.dispatch import KernelUnsupportedError, reference_kernel
from duplex.codec.kernels.torch_library import define_op
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


def direct_conv1d(
    x: Tensor, panels: Tensor, bias: Tensor | None, kernel_size: int, stride: int = 1, dilation: int = 1
) -> Tensor:
    """``conv1d(x, weight, bias, stride, dilation)`` (no padding, groups 1) with ``panels = pack(weight)``."""
    if x.dtype is not torch.float32 or x.device.type != "cpu" or x.dim() != 3:
        raise KernelUnsupportedError("the native conv takes float32 [B, C, T] inputs on the CPU")
    batch, in_channels, length = x.shape
    if panels.shape[1] != in_channels * kernel_size:
        raise ValueError(
            f"panels hold {panels.shape[1]} taps per channel tile, expected {in_channels * kernel_size}"
        )
    output_frames(length, kernel_size, stride, dilation)  # a clear error when there are none
    return conv1d_panels(x, panels, None if bias is None else bias.detach(), kernel_size, stride, dilation)


def _conv1d_panels(
    x: Tensor, panels: Tensor, bias: Tensor | None, kernel_size: int, stride: int, dilation: int
) -> Tensor:
    """The direct conv of float32 ``x [B, C, T]`` with packed ``panels``, in C."""
    batch, in_channels, length = x.shape
    out_channels = panels.shape[0] * CHANNELS
    frames = output_frames(length, kernel_size, stride, dilation)
    x = x.contiguous()
    bias = None if bias is None else bias.contiguous()
    y = torch.empty(batch, out_channels, frames, dtype=torch.float32)
    load()(
        x.data_ptr(), batch, in_channels, length, panels.data_ptr(),
        None if bias is None else bias.data_ptr(), y.data_ptr(), out_channels, kernel_size, stride, dilation,
        frames, torch.get_num_threads(),
    )  # fmt: skip
    return y


def _conv1d_panels_fake(
    x: Tensor, panels: Tensor, bias: Tensor | None, kernel_size: int, stride: int, dilation: int
) -> Tensor:
    frames = (x.shape[2] - dilation * (kernel_size - 1) - 1) // stride + 1
    return x.new_empty(x.shape[0], panels.shape[0] * CHANNELS, frames, dtype=torch.float32)


conv1d_panels = define_op(
    "conv1d_panels(Tensor x, Tensor panels, Tensor? bias, int kernel_size, int stride, int dilation)"
    " -> Tensor",
    _conv1d_panels,
    _conv1d_panels_fake,
)


# The few-row kernel wins where reading the weight is the cost: few rows, or a weight this large.
# A small weight read by many rows stays in cache, where torch's conv computes faster.
ANY_WEIGHT_ROWS = 4
LARGE_WEIGHT_BYTES = 4 << 20
# Up to this many input frames a transposed conv runs as a matmul and an overlap-add.
TRANSPOSED_MATMUL_FRAMES = 128


def _needs_grad(*tensors: Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _derived(packed: dict | None, name: str, make) -> Tensor:  # noqa: ANN001
    if packed is None:
        return make()
    if name not in packed:
        packed[name] = make()
    return packed[name]


def unfolded(x: Tensor, kernel_size: int, stride: int, dilation: int) -> Tensor:
    """The input windows of an unpadded conv as rows ``[B * T_out, C_in * K]``."""
    windows = x.unfold(-1, (kernel_size - 1) * dilation + 1, stride)[..., ::dilation]  # [B, C, T_out, K]
    return windows.permute(0, 2, 1, 3).reshape(-1, x.shape[1] * kernel_size)


def conv1d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int = 1,
    dilation: int = 1,
    groups: int = 1,
    packed: dict | None = None,
) -> Tensor:
    """``F.conv1d(x, weight, bias, stride, 0, dilation, groups)`` on the C kernels where they apply."""
    if groups != 1 or x.dtype is not torch.float32 or x.device.type != "cpu" or _needs_grad(x, weight, bias):
        return reference_kernel("conv1d")(x, weight, bias, stride, dilation, groups)
    out_channels, _, kernel_size = weight.shape
    rows = x.shape[0] * output_frames(x.shape[-1], kernel_size, stride, dilation)
    large = weight.numel() * weight.element_size() >= LARGE_WEIGHT_BYTES
    if rows <= ANY_WEIGHT_ROWS or (rows <= linear_native.MAX_ROWS and large and not supports(weight)):
        columns = unfolded(x, kernel_size, stride, dilation)
        out = linear_native.linear(columns, weight.detach().view(out_channels, -1), bias)
        return out.view(x.shape[0], -1, out_channels).transpose(1, 2)
    if supports(weight):
        panels = _derived(packed, "panels", lambda: pack(weight))
        return direct_conv1d(x, panels, bias, kernel_size, stride, dilation)
    if kernel_size == 1 and stride == 1:  # torch takes a slow generic path for 1x1 kernels
        out = torch.matmul(weight[:, :, 0], x)
        return out if bias is None else out.add_(bias[:, None])
    return reference_kernel("conv1d")(x, weight, bias, stride, dilation, groups)


def conv_transpose1d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int = 1,
    groups: int = 1,
    packed: dict | None = None,
) -> Tensor:
    """``F.conv_transpose1d(x, weight, bias, stride, groups=groups)``; few frames as a matmul
    and an overlap-add (same sums), on the few-row kernel."""
    in_channels, out_channels, kernel_size = weight.shape
    batch, _, length = x.shape
    if (
        groups != 1
        or kernel_size % stride
        or x.dtype is not torch.float32
        or x.device.type != "cpu"
        or batch * length > TRANSPOSED_MATMUL_FRAMES
        or _needs_grad(x, weight, bias)
    ):
        return reference_kernel("conv_transpose1d")(x, weight, bias, stride, groups)
    transposed = _derived(
        packed, "transposed", lambda: weight.detach().reshape(in_channels, -1).t().contiguous()
    )
    cols = linear_native.linear(x.transpose(1, 2), transposed)  # [B, T, C_out * K]
    blocks = kernel_size // stride
    cols = cols.view(batch, length, out_channels, blocks, stride)
    out = cols.new_zeros(batch, length + blocks - 1, out_channels, stride)
    for j in range(blocks):  # block j of input frame t lands on output frame t + j
        out[:, j : j + length] += cols[:, :, :, j]
    out = out.permute(0, 2, 1, 3).reshape(batch, out_channels, -1)
    return out if bias is None else out + bias[:, None]
