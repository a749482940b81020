"""The wav files of the client and the offline run, as numpy (through duplex.codec's audio helpers)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from duplex.codec.audio import load_audio, save_audio


def load_mono(path: str | Path, sample_rate: int) -> np.ndarray:
    """A file as mono float32 ``[T]`` at ``sample_rate`` (channels averaged, resampled if needed)."""
    return load_audio(path, sample_rate)[0].numpy().astype(np.float32, copy=False)


def save_wav(path: str | Path, pcm: np.ndarray, sample_rate: int) -> None:
    save_audio(path, torch.from_numpy(np.ascontiguousarray(pcm, dtype=np.float32)), sample_rate)
