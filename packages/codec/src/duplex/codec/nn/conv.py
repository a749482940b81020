"""Causal streaming 1-D convolutions (spec 1.3, 1.4).

Both modules give the same output whether the input comes in one call or in successive chunks:
the convolution keeps the last ``P = K_eff - S`` input frames between calls, the transposed
convolution keeps the ``K - S`` output frames that overlap the next chunk.

The torch layers sit one level down (``conv.conv`` / ``convtr.convtr``) so that the state-dict
keys are those of the official checkpoints.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from duplex.codec import kernels
from duplex.codec.kernels import conv_native, conv_reference_order, dispatch, linear_blas_order, linear_native
from duplex.codec.kernels.dispatch import NATIVE
from duplex.codec.streaming import StreamingModule, StreamingState, module_device
from torch import nn
from torch.nn import functional as F

PadMode = Literal["constant", "replicate"]


def _check_input(x: torch.Tensor, channels: int, stride: int, name: str) -> None:
    if x.dim() != 3:
        raise ValueError(f"{name} expects input [B, C, T], got shape {list(x.shape)}")
    if x.shape[1] != channels:
        raise ValueError(f"{name} expects {channels} input channels, got {x.shape[1]}")
    length = x.shape[-1]
    if length == 0 or length % stride != 0:
        raise ValueError(
            f"{name}: input length must be a positive multiple of the stride {stride}, got {length}"
        )


# On CPU, torch's ConvTranspose1d falls back to a slow im2col loop for the short, wide inputs of
# streaming (about 10x slower than a matmul for Mimi's 1024 -> 512 up-sampling at 2 frames). A
# matmul and an overlap-add do the same sums there. Long inputs keep torch's kernel, which needs no
# [T, C_out * K] intermediate.
MATMUL_MAX_FRAMES = 128


# The few-row kernel wins where reading the weight is the cost: a weight of this size, or few rows.
# A small weight read by many rows stays in cache, where torch's conv computes faster.
NATIVE_MIN_WEIGHT_BYTES = 4 << 20
NATIVE_ANY_WEIGHT_ROWS = 4


def _fast_products(x: torch.Tensor) -> bool:
    """Whether this call may use the fast CPU kernels (auto mode, outside ``reference_matmuls``)."""
    return x.dtype == torch.float32 and dispatch.native_wanted(x.device, torch.is_grad_enabled())


def _native_rows(x: torch.Tensor, rows: int, weight: torch.Tensor) -> bool:
    """Whether a product with ``rows`` rows should take the native few-row kernel (streaming on CPU)."""
    weight_bytes = weight.numel() * weight.element_size()
    return (
        rows <= linear_native.MAX_ROWS
        and (rows <= NATIVE_ANY_WEIGHT_ROWS or weight_bytes >= NATIVE_MIN_WEIGHT_BYTES)
        and _fast_products(x)
    )


def conv1d_by_matmul(x: torch.Tensor, conv: nn.Conv1d) -> torch.Tensor:
    """``conv(x)`` (groups 1, no padding) as an unfold and one few-row matmul."""
    out = kernels.linear(_unfolded(x, conv), conv.weight.view(conv.out_channels, -1), conv.bias)
    return out.view(x.shape[0], -1, conv.out_channels).transpose(1, 2)


def conv_transpose1d_by_matmul(
    x: torch.Tensor, convtr: nn.ConvTranspose1d, weight_t: torch.Tensor | None = None
) -> torch.Tensor:
    """``convtr(x)`` (groups 1, kernel a multiple of the stride) as a matmul and an overlap-add.

    ``weight_t`` (the weight as ``[C_out * K, C_in]``) routes the matmul through the few-row kernel.
    """
    (kernel,), (stride,) = convtr.kernel_size, convtr.stride
    batch, _, length = x.shape
    blocks = kernel // stride
    if weight_t is not None:
        cols = kernels.linear(x.transpose(1, 2), weight_t)  # [B, T, C_out * K]
    else:
        cols = torch.matmul(x.transpose(1, 2), convtr.weight.view(convtr.in_channels, -1))
    cols = cols.view(batch, length, convtr.out_channels, blocks, stride)
    out = cols.new_zeros(batch, length + blocks - 1, convtr.out_channels, stride)
    for j in range(blocks):  # block j of input frame t lands on output frame t + j
        out[:, j : j + length] += cols[:, :, :, j]
    out = out.permute(0, 2, 1, 3).reshape(batch, convtr.out_channels, -1)
    return out if convtr.bias is None else out + convtr.bias[:, None]


def _unfolded(x: torch.Tensor, conv: nn.Conv1d) -> torch.Tensor:
    """The input windows of ``conv`` (groups 1, no padding) as rows ``[B * T_out, C_in * K]``."""
    (kernel,), (stride,), (dilation,) = conv.kernel_size, conv.stride, conv.dilation
    windows = x.unfold(-1, (kernel - 1) * dilation + 1, stride)[..., ::dilation]  # [B, C_in, T_out, K]
    return windows.permute(0, 2, 1, 3).reshape(-1, conv.in_channels * kernel)


_ROUTE_PACKS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gemv": lambda weight: weight.reshape(weight.shape[0], -1).contiguous(),
    "sequential": lambda weight: linear_blas_order.sequential_panels(weight.reshape(weight.shape[0], -1)),
    "onednn": conv_reference_order.pack,
    "onednn-1x1": conv_reference_order.pack,
    "blas-blocks": conv_reference_order.pack_blas,
}
_ORDERS = {
    "onednn": conv_reference_order.ONEDNN_TAPS,
    "onednn-1x1": conv_reference_order.ONEDNN_1X1,
    "blas-blocks": conv_reference_order.BLAS_BLOCKS,
}


class _ConvHolder(nn.Module):
    """Keeps the torch conv under the attribute name ``conv`` (checkpoint key ``conv.conv.*``).

    On the CPU, outside :func:`~duplex.codec.kernels.reference_matmuls`, streaming calls take the
    C kernels: few rows (or a large weight) as one matmul on the few-row kernel, longer inputs on
    the direct conv kernel (``kernels/conv_native.c``). Inside ``reference_matmuls`` streaming calls
    keep torch's exact sums instead, on a C kernel that sums as torch's conv does for that shape:
    BLAS's gemv order (:func:`~duplex.codec.kernels.linear_blas_order.gemv_rows`) for one output
    frame, the sequential order (:func:`~duplex.codec.kernels.linear_blas_order.matmul_sequential`)
    for few rows, the orders of oneDNN's kernels and of torch's im2col + BLAS path
    (:mod:`~duplex.codec.kernels.conv_reference_order`). For each input shape the first call
    checks these kernels against torch's conv on random data, bit for bit; calls of that shape
    take the first that matched, or torch's conv.
    """

    def __init__(self, conv: nn.Conv1d) -> None:
        super().__init__()
        self.conv = conv
        # per input shape and thread count: the C kernel that gives torch's bits (None: torch's conv)
        self._exact_route: dict[tuple[int, ...], str | None] = {}
        self._packed: dict[str, tuple[tuple[int, int], torch.Tensor]] = {}

    def _frames(self, x: torch.Tensor) -> int:
        conv = self.conv
        return (x.shape[-1] - conv.dilation[0] * (conv.kernel_size[0] - 1) - 1) // conv.stride[0] + 1

    def _weight_as(self, layout: str, pack: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """The weight repacked for a kernel, kept until the weight changes."""
        weight = self.conv.weight
        key = (weight.data_ptr(), weight._version)
        cached = self._packed.get(layout)
        if cached is None or cached[0] != key:
            cached = self._packed[layout] = (key, pack(weight.detach()))
        return cached[1]

    def _sequential(self, x: torch.Tensor, panels: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        out_channels = self.conv.out_channels
        out = linear_blas_order.matmul_sequential(_unfolded(x, self.conv), panels, bias, out_channels)
        return out.view(x.shape[0], -1, out_channels).transpose(1, 2)

    def _gemv(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return linear_blas_order.gemv_rows(_unfolded(x, self.conv), weight, bias)[:, :, None]

    def _exact_routes(self, x: torch.Tensor, rows: int) -> list[str]:
        """The C kernels that may give torch's bits for a call of ``rows`` output rows."""
        routes = ["gemv"] if rows == x.shape[0] else []  # one output frame per item
        routes += ["sequential"] if rows <= linear_native.MAX_ROWS else []
        if conv_reference_order.supports(self.conv.weight):
            one_by_one = self.conv.kernel_size == (1,) and self.conv.stride == (1,)
            routes += ["onednn-1x1" if one_by_one else "onednn", "blas-blocks"]
        return routes

    def _run_route(
        self, name: str, x: torch.Tensor, panels: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        if name == "gemv":
            return self._gemv(x, panels, bias)
        if name == "sequential":
            return self._sequential(x, panels, bias)
        (kernel,), (stride,), (dilation,) = self.conv.kernel_size, self.conv.stride, self.conv.dilation
        return conv_reference_order.conv1d(x, panels, bias, kernel, stride, dilation, _ORDERS[name])

    def _route_matches(self, name: str, shape: tuple[int, ...]) -> bool:
        """Whether kernel ``name`` gives torch's conv bits for inputs of ``shape`` here, checked on
        random data: a live input (silence, say) could agree with any order."""
        conv = self.conv
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(shape, generator=generator)
        weight = torch.randn(conv.weight.shape, generator=generator) / conv.weight[0].numel() ** 0.5
        bias = None if conv.bias is None else torch.randn(conv.out_channels, generator=generator)
        expected = F.conv1d(x, weight, bias, conv.stride, 0, conv.dilation, conv.groups)
        try:
            return torch.equal(self._run_route(name, x, _ROUTE_PACKS[name](weight), bias), expected)
        except (ImportError, kernels.KernelUnsupportedError):
            return False

    def _reference_exact(self, x: torch.Tensor, rows: int) -> torch.Tensor:
        key = (*x.shape, torch.get_num_threads())  # torch picks its conv algorithm by shape and threads
        if key not in self._exact_route:
            matching = (name for name in self._exact_routes(x, rows) if self._route_matches(name, x.shape))
            self._exact_route[key] = next(matching, None)
        name = self._exact_route[key]
        if name is None:
            return self.conv(x)
        return self._run_route(name, x, self._weight_as(name, _ROUTE_PACKS[name]), self.conv.bias)

    def _fast(self, x: torch.Tensor, rows: int) -> torch.Tensor | None:
        """The call on the C kernels, or None where they do not apply."""
        conv = self.conv
        if rows <= NATIVE_ANY_WEIGHT_ROWS:
            return conv1d_by_matmul(x, conv)
        if conv_native.supports(conv.weight) and dispatch.native_usable():
            try:
                panels = self._weight_as("direct", conv_native.pack)
                (kernel,), (stride,), (dilation,) = conv.kernel_size, conv.stride, conv.dilation
                return conv_native.conv1d(x, panels, conv.bias, kernel, stride, dilation)
            except ImportError as error:  # the kernel does not build here
                dispatch.mark_broken(NATIVE, error)
                return None
        if _native_rows(x, rows, conv.weight):
            return conv1d_by_matmul(x, conv)
        if conv.kernel_size == (1,) and conv.stride == (1,):
            # torch's conv takes a slow generic path for 1x1 kernels; this is one matmul per item
            out = torch.matmul(conv.weight[:, :, 0], x)
            return out if conv.bias is None else out.add_(conv.bias[:, None])
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.conv
        if conv.groups == 1 and conv.padding == (0,) and x.device.type == "cpu":
            rows = x.shape[0] * self._frames(x)
            if _fast_products(x):
                y = self._fast(x, rows)
                if y is not None:
                    return y
            needs_grad = torch.is_grad_enabled() and (x.requires_grad or conv.weight.requires_grad)
            if x.dtype == torch.float32 and dispatch.blas_order_wanted(x.device, needs_grad):
                return self._reference_exact(x, rows)
        return conv(x)


class _ConvTransposeHolder(nn.Module):
    """Keeps the torch transposed conv under ``convtr`` (checkpoint key ``convtr.convtr.*``)."""

    def __init__(self, convtr: nn.ConvTranspose1d) -> None:
        super().__init__()
        self.convtr = convtr
        self._weight_t: tuple[tuple[int, int], torch.Tensor] | None = None

    def weight_t(self) -> torch.Tensor:
        """The weight as ``[C_out * K, C_in]`` (the few-row kernel's layout), kept until it changes."""
        weight = self.convtr.weight
        key = (weight.data_ptr(), weight._version)
        if self._weight_t is None or self._weight_t[0] != key:
            self._weight_t = (key, weight.detach().reshape(weight.shape[0], -1).t().contiguous())
        return self._weight_t[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        convtr = self.convtr
        if (
            x.device.type == "cpu"
            and convtr.groups == 1
            and convtr.kernel_size[0] % convtr.stride[0] == 0
            and x.shape[0] * x.shape[-1] <= MATMUL_MAX_FRAMES
        ):
            native = _native_rows(x, x.shape[0] * x.shape[-1], convtr.weight)
            return conv_transpose1d_by_matmul(x, convtr, self.weight_t() if native else None)
        return convtr(x)


@dataclass
class ConvState(StreamingState):
    previous: torch.Tensor  # [B, C_in, P]: the last P input frames seen
    first: torch.Tensor  # [B] bool: no chunk seen yet (replicate padding pending)

    def reset(self, slots: torch.Tensor) -> None:
        self.previous[slots] = 0
        self.first[slots] = True


class StreamingConv1d(StreamingModule[ConvState]):
    """Causal Conv1d: ``P`` frames of left padding, no right padding, output length ``T / S``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = True,
        pad_mode: PadMode = "constant",
    ) -> None:
        super().__init__()
        if pad_mode not in ("constant", "replicate"):
            raise ValueError(f"pad_mode must be 'constant' or 'replicate', got {pad_mode!r}")
        effective_kernel = (kernel_size - 1) * dilation + 1
        if effective_kernel < stride:
            raise ValueError(f"effective kernel size ({effective_kernel}) must be >= stride ({stride})")
        self.conv = _ConvHolder(
            nn.Conv1d(
                in_channels, out_channels, kernel_size, stride, dilation=dilation, groups=groups, bias=bias
            )
        )
        self.pad_mode: PadMode = pad_mode
        self.in_channels = in_channels
        self.stride = stride
        self.left_context = effective_kernel - stride

    def _init_streaming_state(self, batch_size: int) -> ConvState:
        weight = self.conv.conv.weight
        previous = torch.zeros(
            batch_size, self.in_channels, self.left_context, dtype=weight.dtype, device=weight.device
        )
        first = torch.ones(batch_size, dtype=torch.bool, device=weight.device)
        return ConvState(batch_size=batch_size, device=module_device(self), previous=previous, first=first)

    def _left_padding(self, x: torch.Tensor) -> torch.Tensor:
        """The ``P`` frames put before a non-streaming input."""
        if self.pad_mode == "replicate":
            return x[..., :1].expand(-1, -1, self.left_context)
        return x.new_zeros(x.shape[0], x.shape[1], self.left_context)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, self.in_channels, self.stride, type(self).__name__)
        state = self._streaming_state
        if self.left_context == 0:
            return self.conv(x)
        if state is None:
            return self.conv(torch.cat([self._left_padding(x), x], dim=-1))

        previous = state.previous
        replicate = self.pad_mode == "replicate"
        if replicate:
            previous = torch.where(state.first.view(-1, 1, 1), x[..., :1], previous)
        padded = torch.cat([previous, x], dim=-1)
        y = self.conv(padded)
        tail = padded[..., -self.left_context :]
        if state.all_active():
            state.previous.copy_(tail)
            if replicate:
                state.first.fill_(False)
        else:
            mask = state.exec_mask
            state.previous.copy_(torch.where(mask.view(-1, 1, 1), tail, state.previous))
            state.first &= ~mask
        return y


@dataclass
class ConvTransposeState(StreamingState):
    partial: torch.Tensor  # [B, C_out, K - S]: overlap-add tail, without bias

    def reset(self, slots: torch.Tensor) -> None:
        self.partial[slots] = 0


class StreamingConvTranspose1d(StreamingModule[ConvTransposeState]):
    """Causal ConvTranspose1d: the ``K - S`` trailing outputs are trimmed, output length ``T * S``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if kernel_size < stride:
            raise ValueError(f"kernel_size ({kernel_size}) must be >= stride ({stride})")
        self.convtr = _ConvTransposeHolder(
            nn.ConvTranspose1d(in_channels, out_channels, kernel_size, stride, groups=groups, bias=bias)
        )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride
        self.overlap = kernel_size - stride

    def _init_streaming_state(self, batch_size: int) -> ConvTransposeState:
        weight = self.convtr.convtr.weight
        partial = torch.zeros(
            batch_size, self.out_channels, self.overlap, dtype=weight.dtype, device=weight.device
        )
        return ConvTransposeState(batch_size=batch_size, device=module_device(self), partial=partial)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, self.in_channels, 1, type(self).__name__)
        y = self.convtr(x)
        overlap = self.overlap
        if overlap == 0:
            return y
        state = self._streaming_state
        if state is None:
            return y[..., :-overlap]

        y[..., :overlap] += state.partial
        tail = y[..., -overlap:]
        bias = self.convtr.convtr.bias
        if bias is not None:
            tail = tail - bias[:, None]
        if state.all_active():
            state.partial.copy_(tail)
        else:
            state.partial.copy_(torch.where(state.exec_mask.view(-1, 1, 1), tail, state.partial))
        return y[..., :-overlap]
