"""Interleaved rotary position embedding (spec 4.5).

Pair ``i`` of a head is the adjacent element pair ``(x[2i], x[2i+1])``, rotated by the angle
``position * max_period ** (-2i / Dh)``; angles and products are computed in float32 and the
result is cast back to the input dtype.
"""

from __future__ import annotations

import math

import torch


class RotaryEmbedding:
    """Parameter-free, so a plain object (not a module): casting a model to bf16 leaves the
    float32 frequency table alone. ``apply`` rotates q and k at absolute per-item positions."""

    def __init__(self, max_period: float = 10_000) -> None:
        self.max_period = max_period
        self._frequencies: dict[tuple[torch.device, int], torch.Tensor] = {}

    def frequencies(self, head_dim: int, device: torch.device) -> torch.Tensor:
        key = (device, head_dim)
        if key not in self._frequencies:
            pair = torch.arange(head_dim // 2, device=device, dtype=torch.float32)
            self._frequencies[key] = torch.exp(pair * (-math.log(self.max_period) * 2 / head_dim))
        return self._frequencies[key]

    def rotate(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Rotate ``x`` of shape ``[B, T, H, Dh]`` (time before heads) at ``positions [B, T]``."""
        head_dim = x.shape[-1]
        if head_dim % 2 != 0:
            raise ValueError(f"rotary embedding needs an even head dim, got {head_dim}")
        angles = positions.to(torch.float32)[:, :, None, None] * self.frequencies(head_dim, x.device)
        cos, sin = torch.cos(angles), torch.sin(angles)
        pairs = x.unflatten(-1, (head_dim // 2, 2))
        real, imag = pairs[..., 0].float(), pairs[..., 1].float()
        rotated = torch.stack([real * cos - imag * sin, real * sin + imag * cos], dim=-1)
        return rotated.to(x.dtype).flatten(-2)

    def apply(
        self, q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotate ``q`` and ``k`` of shape ``[B, H, T, Dh]`` at ``positions [B, T]``."""
        return (
            self.rotate(q.transpose(1, 2), positions).transpose(1, 2),
            self.rotate(k.transpose(1, 2), positions).transpose(1, 2),
        )

    def __repr__(self) -> str:
        return f"RotaryEmbedding(max_period={self.max_period})"
