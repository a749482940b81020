"""Distillation teachers: frozen feature extractors the first (semantic) codebook is pulled toward.

A teacher maps ``wav [B, 1, T]`` at ``sample_rate`` to features ``[B, dim, frames]`` at the codec's
frame rate. Teachers are registered in ``duplex.codec.registry.TEACHERS`` (entry-point group
``duplex.teachers``), so a plugin can offer a self-supervised speech model (the official Mimi used
WavLM) without duplex depending on it. The default, ``mel-projection``, works offline with no
download: a fixed random projection of log-mel frames, smoothed over neighbouring frames.
"""

from __future__ import annotations

from typing import Protocol

import torch
from duplex.codec.registry import TEACHERS
from duplex.codec.training.spectral import MelSpectrogram, log_clamped
from torch import nn


class Teacher(Protocol):
    dim: int

    def __call__(self, wav: torch.Tensor) -> torch.Tensor: ...


class MelProjectionTeacher(nn.Module):
    """Log-mel frames at the codec frame rate, mixed by a fixed seeded random matrix."""

    def __init__(
        self,
        sample_rate: int = 24000,
        frame_rate: float = 12.5,
        dim: int = 64,
        n_mels: int = 80,
        seed: int = 0,
    ) -> None:
        super().__init__()
        hop = int(sample_rate / frame_rate)
        self.dim = dim
        self.hop = hop
        self.mel = MelSpectrogram(sample_rate, n_fft=2 * hop, hop_length=hop, n_mels=n_mels)
        n_mels = self.mel.filters.shape[0]
        generator = torch.Generator().manual_seed(seed)
        projection = torch.randn(dim, n_mels, generator=generator) / n_mels**0.5
        self.register_buffer("projection", projection, persistent=False)
        self.requires_grad_(False)

    @torch.no_grad()
    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        frames = -(-wav.shape[-1] // self.hop)
        mel = log_clamped(self.mel(wav))[..., :frames]  # centred STFT: one extra frame at the end
        mel = mel - mel.mean(dim=1, keepdim=True)
        return torch.einsum("dm,bmf->bdf", self.projection, mel)


TEACHERS.register("mel-projection", MelProjectionTeacher)


def build_teacher(name: str, sample_rate: int, frame_rate: float, **kwargs) -> nn.Module:
    """Instantiate a registered teacher for a codec running at ``sample_rate`` / ``frame_rate``."""
    return TEACHERS.get(name)(sample_rate=sample_rate, frame_rate=frame_rate, **kwargs)
