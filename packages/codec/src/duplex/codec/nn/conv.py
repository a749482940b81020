"""Causal streaming 1-D convolutions (docs/architecture.md §1.2, §1.3).

Both modules give the same output whether the input comes in one call or in successive chunks:
the convolution keeps the last ``P = K_eff - S`` input frames between calls, the transposed
convolution keeps the ``K - S`` output frames that overlap the next chunk.

The torch layers sit one level down (``conv.conv`` / ``convtr.convtr``) so that the state-dict
keys are those of the official checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from duplex.codec.kernels import UsesKernels
from duplex.codec.streaming import StreamingModule, StreamingState, module_device
from torch import nn

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


class _ConvHolder(nn.Module, UsesKernels):
    """Keeps the torch conv under the attribute name ``conv`` (checkpoint key ``conv.conv.*``) and
    runs it through the selected ``conv1d`` op (``packed``: the streaming session's derived weights)."""

    def __init__(self, conv: nn.Conv1d) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor, packed: dict | None = None) -> torch.Tensor:
        conv = self.conv
        if conv.padding != (0,):
            return conv(x)
        (stride,), (dilation,) = conv.stride, conv.dilation
        return self.kernels.conv1d(x, conv.weight, conv.bias, stride, dilation, conv.groups, packed)


class _ConvTransposeHolder(nn.Module, UsesKernels):
    """Keeps the torch transposed conv under ``convtr`` (checkpoint key ``convtr.convtr.*``)."""

    def __init__(self, convtr: nn.ConvTranspose1d) -> None:
        super().__init__()
        self.convtr = convtr

    def forward(self, x: torch.Tensor, packed: dict | None = None) -> torch.Tensor:
        convtr = self.convtr
        (stride,) = convtr.stride
        return self.kernels.conv_transpose1d(x, convtr.weight, convtr.bias, stride, convtr.groups, packed)


@dataclass
class ConvState(StreamingState):
    previous: torch.Tensor  # [B, C_in, P]: the last P input frames seen
    first: torch.Tensor  # [B] bool: no chunk seen yet (replicate padding pending)
    packed: dict = field(default_factory=dict)  # the kernels' derived weights, made once per session

    def reset(self, slots: torch.Tensor) -> None:
        self.previous.masked_fill_(slots[:, None, None], 0)  # masked writes: no host sync
        self.first |= slots


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
            return self.conv(x, None if state is None else state.packed)
        if state is None:
            return self.conv(torch.cat([self._left_padding(x), x], dim=-1))

        previous = state.previous
        replicate = self.pad_mode == "replicate"
        if replicate:
            previous = torch.where(state.first.view(-1, 1, 1), x[..., :1], previous)
        padded = torch.cat([previous, x], dim=-1)
        y = self.conv(padded, state.packed)
        tail = padded[..., -self.left_context :]
        mask = state.exec_mask  # frozen items keep their state (no branch on the mask: graph-ready)
        state.previous.copy_(torch.where(mask.view(-1, 1, 1), tail, state.previous))
        if replicate:
            state.first &= ~mask
        return y


@dataclass
class ConvTransposeState(StreamingState):
    partial: torch.Tensor  # [B, C_out, K - S]: overlap-add tail, without bias
    packed: dict = field(default_factory=dict)  # the kernels' derived weights, made once per session

    def reset(self, slots: torch.Tensor) -> None:
        self.partial.masked_fill_(slots[:, None, None], 0)


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
        state = self._streaming_state
        y = self.convtr(x, None if state is None else state.packed)
        overlap = self.overlap
        if overlap == 0:
            return y
        if state is None:
            return y[..., :-overlap]

        y[..., :overlap] += state.partial
        tail = y[..., -overlap:]
        bias = self.convtr.convtr.bias
        if bias is not None:
            tail = tail - bias[:, None]
        state.partial.copy_(torch.where(state.exec_mask.view(-1, 1, 1), tail, state.partial))
        return y[..., :-overlap]
