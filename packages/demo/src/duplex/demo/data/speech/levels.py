"""Signal levels in dBFS (decibels relative to full scale, RMS: a full-scale sine is -3 dBFS)."""

from __future__ import annotations

import numpy as np

_FLOOR = 1e-12
PEAK = 10 ** (-1 / 20)  # speech is turned down if its peak would pass -1 dBFS


def dbfs(samples: np.ndarray) -> float:
    """The RMS level of ``samples``."""
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
    return float(20 * np.log10(max(rms, _FLOOR)))


def active_dbfs(
    samples: np.ndarray, sample_rate: int, frame_s: float = 0.01, below_peak_db: float = 40.0
) -> float:
    """The RMS level of the active part of ``samples``: the 10 ms frames within ``below_peak_db`` of
    the loudest one. Unlike :func:`dbfs`, it does not fall when a clip has longer pauses, so a
    target level means the same loudness for fast and slow speakers."""
    frame = max(1, round(frame_s * sample_rate))
    usable = len(samples) // frame * frame
    if usable == 0:
        return dbfs(samples)
    power = np.mean(np.square(samples[:usable].reshape(-1, frame), dtype=np.float64), axis=1)
    active = power[power >= power.max() * 10 ** (-below_peak_db / 10)]
    return float(10 * np.log10(max(float(active.mean()), _FLOOR**2)))


def at_level(samples: np.ndarray, target_dbfs: float, sample_rate: int) -> np.ndarray:
    """``samples`` scaled so that their :func:`active_dbfs` is ``target_dbfs``, or less where the peak
    would pass ``PEAK``."""
    gain = 10 ** ((target_dbfs - active_dbfs(samples, sample_rate)) / 20)
    return samples * min(gain, PEAK / max(float(np.abs(samples).max()), 1e-9))
