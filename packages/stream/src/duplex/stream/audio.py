"""Reading and writing the wav files the client and the offline run work on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile
import sphn


def load_mono(path: str | Path, sample_rate: int) -> np.ndarray:
    """A file as mono float32 at ``sample_rate`` (channels averaged, resampled if needed)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no audio file at {path}")
    pcm, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    mono = pcm.mean(axis=1).astype(np.float32)
    if rate != sample_rate:
        mono = np.asarray(sphn.resample(mono, rate, sample_rate), dtype=np.float32)
    return mono


def save_wav(path: str | Path, pcm: np.ndarray, sample_rate: int) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), np.asarray(pcm, dtype=np.float32), sample_rate, subtype="PCM_16")
