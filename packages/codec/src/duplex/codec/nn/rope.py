"""Rotary position embedding (docs/architecture.md §2.6).

Pair ``i`` of a head is the adjacent element pair ``(x[2i], x[2i+1])`` (interleaved, Moshi's layout)
or the halves' pair ``(x[i], x[i + Dh/2])`` (``interleave=False``, "rope_concat"), rotated by the
angle ``position * max_period ** (-2i / Dh)``; angles and products are computed in float32 and the
result is cast back to the input dtype. A pair is treated as one complex number, so the rotation is
one complex product with ``exp(i * angle)``.
"""

from __future__ import annotations

import math

import torch


class RotaryEmbedding:
    """Parameter-free, so a plain object (not a module): casting a model to bf16 leaves the
    float32 frequencies alone."""

    def __init__(self, max_period: float = 10_000, interleave: bool = True) -> None:
        self.max_period = max_period
        self.interleave = interleave
        self._frequencies: dict[tuple[torch.device, int], torch.Tensor] = {}

    def frequencies(self, head_dim: int, device: torch.device) -> torch.Tensor:
        """``[Dh / 2]`` float32 angular frequencies."""
        if head_dim % 2 != 0:
            raise ValueError(f"rotary embedding needs an even head dim, got {head_dim}")
        key = (device, head_dim)
        if key not in self._frequencies:
            pair = torch.arange(head_dim // 2, device=device, dtype=torch.float32)
            self._frequencies[key] = torch.exp(pair * (-math.log(self.max_period) * 2 / head_dim))
        return self._frequencies[key]

    def rotation(self, positions: torch.Tensor, head_dim: int) -> torch.Tensor:
        """``exp(i * angle)`` for ``positions [B, T]``: complex64 ``[B, T, 1, Dh / 2]``.

        Compute it once per call and share it across layers with :meth:`rotate`.
        """
        angles = positions.to(torch.float32)[:, :, None, None] * self.frequencies(head_dim, positions.device)
        return torch.complex(torch.cos(angles), torch.sin(angles))

    def rotate(self, x: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
        """Rotate ``x [B, T, H, Dh]`` (time before heads) by a :meth:`rotation`."""
        half = x.shape[-1] // 2
        if not self.interleave:
            real, imag = x.float().unflatten(-1, (2, half)).unbind(-2)
            rotated = torch.complex(real, imag) * rotation
            return torch.cat([rotated.real, rotated.imag], dim=-1).to(x.dtype)
        pairs = torch.view_as_complex(x.float().unflatten(-1, (half, 2)))
        return torch.view_as_real(pairs * rotation).flatten(-2).to(x.dtype)

    def apply(
        self, q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotate ``q`` and ``k`` of shape ``[B, H, T, Dh]`` at ``positions [B, T]``."""
        rotation = self.rotation(positions, q.shape[-1])
        return (
            self.rotate(q.transpose(1, 2), rotation).transpose(1, 2),
            self.rotate(k.transpose(1, 2), rotation).transpose(1, 2),
        )

    def __repr__(self) -> str:
        return f"RotaryEmbedding(max_period={self.max_period}, interleave={self.interleave})"
