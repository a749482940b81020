"""A recording's noise floor: low-level coloured noise under the whole clip.

espeak-ng writes exact digital zeros between words and sentences, something no microphone
produces. On such clips a codec's log-mel loss, floored at a tiny value, is dominated by the
silent frames (any output there is an enormous log error), and SI-SDR is undefined there. A
real floor (-70 to -45 dBFS: a quiet studio to an ordinary room) removes both problems and
teaches the codec to carry background noise.

The colour is the exponent ``alpha`` of a ``1 / f**alpha`` power spectrum: 0 is white (preamp
hiss), 1 pink (room and ventilation noise). Below 20 Hz the spectrum is flat, so the floor has
no drifting DC. Above ``alpha`` = 1 (brown noise) the floor moves so slowly that 16-bit samples
sit at exact zero for runs of many samples again, so the defaults stop at 1.
"""

from __future__ import annotations

import numpy as np

_FLAT_BELOW_HZ = 20.0


def noise_floor(
    num_samples: int, level_dbfs: float, colour: float, rng: np.random.Generator, sample_rate: int = 24000
) -> np.ndarray:
    """``num_samples`` of ``1 / f**colour`` noise whose RMS is exactly ``level_dbfs`` (float32)."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    spectrum = np.fft.rfft(rng.standard_normal(num_samples))
    frequencies = np.maximum(np.fft.rfftfreq(num_samples, 1 / sample_rate), _FLAT_BELOW_HZ)
    noise = np.fft.irfft(spectrum * frequencies ** (-colour / 2), num_samples)
    noise -= noise.mean()
    noise *= 10 ** (level_dbfs / 20) / max(float(np.sqrt(np.mean(noise**2))), 1e-12)
    return noise.astype(np.float32)
