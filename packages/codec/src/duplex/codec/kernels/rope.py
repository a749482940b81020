"""Interleaved RoPE (spec 4.5) for the attention kernels: q and k rotated at their own positions.

Same numbers as :class:`duplex.codec.nn.rope.RotaryEmbedding`; kept here because the kernels
rotate queries and keys at *different* positions (a ring buffer's slots) and the Triton kernel
needs the exact float32 frequency table of the torch path.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def rope_frequencies(head_dim: int, max_period: float, device: torch.device) -> Tensor:
    """``max_period ** (-2i / head_dim)`` for pair ``i``, float32 ``[head_dim // 2]``."""
    pair = torch.arange(head_dim // 2, device=device, dtype=torch.float32)
    return torch.exp(pair * (-math.log(max_period) * 2 / head_dim))


def apply_rope(x: Tensor, positions: Tensor, max_period: float = 10_000) -> Tensor:
    """Rotate ``x`` ``[B, H, T, Dh]`` at absolute ``positions`` ``[B, T]``, in float32, back to x's dtype."""
    head_dim = x.shape[-1]
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head dimension, got {head_dim}")
    angles = positions.to(torch.float32)[:, None, :, None] * rope_frequencies(head_dim, max_period, x.device)
    cos, sin = torch.cos(angles), torch.sin(angles)
    pairs = x.unflatten(-1, (head_dim // 2, 2))
    real, imag = pairs[..., 0].float(), pairs[..., 1].float()
    rotated = torch.stack([real * cos - imag * sin, real * sin + imag * cos], dim=-1)
    return rotated.to(x.dtype).flatten(-2)
