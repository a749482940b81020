"""Sinusoidal positional embedding (docs/architecture.md §2.7), added once before the first layer."""

from __future__ import annotations

import torch


def sinusoidal_embedding(
    positions: torch.Tensor, dim: int, max_period: float = 10_000, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """``[B, T]`` absolute positions -> ``[B, T, dim]``: cosines in the first half, sines in the second.

    Channel ``i`` of each half has the period ``max_period ** (i / (dim / 2 - 1))``; everything
    is computed in ``dtype`` (the reference computes it in the input dtype).
    """
    if dim % 2 != 0 or dim < 4:
        raise ValueError(f"sinusoidal embedding needs an even dim >= 4, got {dim}")
    half = dim // 2
    phase_positions = positions.to(dtype).unsqueeze(-1)
    channel = torch.arange(half, device=positions.device, dtype=dtype)
    period = torch.full((), max_period, device=positions.device, dtype=dtype) ** (channel / (half - 1))
    phase = phase_positions / period
    return torch.cat([torch.cos(phase), torch.sin(phase)], dim=-1)
