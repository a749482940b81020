"""Spectrogram helpers shared by the losses, the teacher and the metrics (torch only)."""

from __future__ import annotations

import math

import torch


def _hz_to_mel(hz: torch.Tensor) -> torch.Tensor:
    return 2595.0 * torch.log10(1.0 + hz / 700.0)


def _mel_to_hz(mel: torch.Tensor) -> torch.Tensor:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float = 0.0, f_max: float | None = None):
    """Triangular HTK-scale mel filters ``[n_mels, n_fft // 2 + 1]``, each normalised to unit area."""
    f_max = f_max if f_max is not None else sample_rate / 2
    bins = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    edges = _mel_to_hz(
        torch.linspace(
            _hz_to_mel(torch.tensor(f_min)).item(), _hz_to_mel(torch.tensor(f_max)).item(), n_mels + 2
        ).double()
    )
    low, center, high = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins[None] - low) / (center - low)
    falling = (high - bins[None]) / (high - center)
    filters = torch.clamp(torch.minimum(rising, falling), min=0.0)
    filters = filters / filters.sum(dim=1, keepdim=True).clamp(min=1e-8)
    return filters.float()


class MelSpectrogram(torch.nn.Module):
    """Magnitude mel spectrogram ``[B, n_mels, frames]`` of ``wav [B, 1, T]`` (or ``[B, T]``)."""

    def __init__(self, sample_rate: int, n_fft: int, hop_length: int, n_mels: int) -> None:
        super().__init__()
        self.n_fft = n_fft
        self.hop_length = hop_length
        n_mels = min(n_mels, n_fft // 4)  # narrow windows cannot resolve many mel bands
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        self.register_buffer("filters", mel_filterbank(sample_rate, n_fft, n_mels), persistent=False)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        wav = wav.reshape(-1, wav.shape[-1]).float()
        spec = torch.stft(
            wav, self.n_fft, self.hop_length, window=self.window, center=True, return_complex=True
        ).abs()
        return torch.matmul(self.filters, spec)


def log_clamped(x: torch.Tensor, floor: float = 1e-5) -> torch.Tensor:
    return torch.log(x.clamp(min=floor))


def db_to_amplitude_floor(db: float) -> float:
    return math.pow(10.0, db / 20.0)
