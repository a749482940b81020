"""Reading and writing audio for Mimi: any file soundfile reads, to 24 kHz mono float32.

* Downmix: multi-channel audio becomes the mean of its channels.
* Resampling: band-limited windowed-sinc interpolation (Hann window over 16 zero crossings,
  cut-off at 0.99 of the lower of the two Nyquist frequencies), computed exactly for the rational
  ratio ``new / orig`` after dividing both rates by their gcd, as one strided convolution per
  output phase. Output length is ``ceil(T * new / orig)``. Files already at the target rate are
  returned untouched.
* Writing: 16-bit PCM wav by default (samples clipped to [-1, 1]); ``subtype="FLOAT"`` keeps floats.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import soundfile
import torch
import torch.nn.functional as F

MIMI_SAMPLE_RATE = 24000
_ZERO_CROSSINGS = 16
_ROLLOFF = 0.99


def _sinc_kernels(orig: int, new: int, dtype: torch.dtype) -> tuple[torch.Tensor, int]:
    """Polyphase filters ``[new, 1, 2 * width + orig]`` and the one-sided width, for reduced rates."""
    cutoff = min(orig, new) / 2 * _ROLLOFF  # cycles per unit time; input rate is `orig` per unit
    half_span = _ZERO_CROSSINGS / (2 * cutoff)  # filter half-length in time units
    width = math.ceil(half_span * orig)
    taps = torch.arange(-width, width + orig, dtype=torch.float64) / orig  # input times of the taps
    phases = torch.arange(new, dtype=torch.float64)[:, None] / new  # output times within one period
    t = phases - taps[None, :]
    window = torch.where(t.abs() <= half_span, torch.cos(math.pi * t / (2 * half_span)) ** 2, 0.0)
    kernels = (2 * cutoff / orig) * torch.sinc(2 * cutoff * t) * window
    return kernels[:, None, :].to(dtype), width


def resample(wav: torch.Tensor, orig_sample_rate: int, new_sample_rate: int) -> torch.Tensor:
    """Resample the last dimension of ``wav`` (float) from ``orig_sample_rate`` to ``new_sample_rate``."""
    if orig_sample_rate <= 0 or new_sample_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_sample_rate} -> {new_sample_rate}")
    if not wav.is_floating_point():
        raise TypeError(f"resample expects float audio, got {wav.dtype}")
    if orig_sample_rate == new_sample_rate:
        return wav
    g = math.gcd(orig_sample_rate, new_sample_rate)
    orig, new = orig_sample_rate // g, new_sample_rate // g
    kernels, width = _sinc_kernels(orig, new, wav.dtype)
    shape, length = wav.shape[:-1], wav.shape[-1]
    out_length = math.ceil(length * new / orig)
    periods = math.ceil(out_length / new)
    flat = wav.reshape(-1, 1, length)
    right = periods * orig + width + orig - length  # enough zeros for the last period's taps
    padded = F.pad(flat, (width, max(right, 0)))
    phases = F.conv1d(padded, kernels.to(wav.device), stride=orig)[..., :periods]  # [N, new, periods]
    out = phases.transpose(1, 2).reshape(flat.shape[0], -1)[:, :out_length]
    return out.reshape(*shape, out_length)


def load_audio(path: str | Path, sample_rate: int = MIMI_SAMPLE_RATE) -> torch.Tensor:
    """Read an audio file as float32 mono ``[1, T]`` at ``sample_rate`` (downmixed and resampled)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"audio file not found: {path}")
    try:
        data, file_rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except soundfile.LibsndfileError as e:
        raise ValueError(f"cannot read {path} as audio: {e}") from e
    wav = torch.from_numpy(np.ascontiguousarray(data.T)).mean(dim=0, keepdim=True)  # [1, T]
    return resample(wav, int(file_rate), sample_rate)


def save_audio(
    path: str | Path, wav: torch.Tensor, sample_rate: int = MIMI_SAMPLE_RATE, subtype: str = "PCM_16"
) -> Path:
    """Write mono audio (``[T]``, ``[1, T]`` or ``[1, 1, T]``, float) as a wav file."""
    path = Path(path)
    if not isinstance(wav, torch.Tensor) or not wav.is_floating_point():
        raise TypeError(f"save_audio expects a float tensor, got {getattr(wav, 'dtype', type(wav))}")
    mono = wav.detach()
    while mono.dim() > 1 and mono.shape[0] == 1:
        mono = mono[0]
    if mono.dim() != 1:
        raise ValueError(f"save_audio expects mono audio [T], [1, T] or [1, 1, T], got {list(wav.shape)}")
    if not torch.isfinite(mono).all():
        raise ValueError("save_audio: the audio contains NaN or Inf samples")
    samples = mono.float().cpu().numpy()
    if subtype.startswith("PCM"):
        samples = np.clip(samples, -1.0, 1.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), samples, sample_rate, subtype=subtype)
    return path
