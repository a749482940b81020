"""Mel-cepstral distance with DTW: zero for the same sound at any level and any timing, large for
another sound; the DTW path is the cheapest monotonic one."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from duplex.codec.training.cepstral import dtw_path, mel_cepstral_distance

RATE = 24000


def _vowels(pitches: list[float], seconds: float = 0.25) -> torch.Tensor:
    """Harmonic tones, one pitch after another: a crude vowel sequence."""
    t = torch.arange(int(seconds * RATE)) / RATE
    parts = [sum(torch.sin(2 * torch.pi * k * f * t) / k for k in range(1, 8)) * 0.1 for f in pitches]
    return torch.cat(parts)


def _brute_force_cost(cost: np.ndarray) -> float:
    """The least total cost over every monotonic path (tiny matrices only)."""
    n, m = cost.shape
    best = np.inf
    for moves in itertools.product(((1, 0), (0, 1), (1, 1)), repeat=n + m - 2):
        i = j = 0
        total = cost[0, 0]
        for di, dj in moves:
            i, j = i + di, j + dj
            if i >= n or j >= m:
                break
            total += cost[i, j]
            if (i, j) == (n - 1, m - 1):
                best = min(best, total)
                break
    return best


def test_dtw_finds_the_cheapest_monotonic_path():
    rng = np.random.default_rng(0)
    cost = rng.random((4, 5))
    i, j = dtw_path(cost)
    assert (i[0], j[0]) == (0, 0) and (i[-1], j[-1]) == (3, 4)
    assert np.all(np.diff(i) >= 0) and np.all(np.diff(j) >= 0) and np.all(np.diff(i) + np.diff(j) >= 1)
    assert cost[i, j].sum() == pytest.approx(_brute_force_cost(cost))


def test_distance_ignores_level_and_timing_but_not_content():
    speech = _vowels([120, 180, 150, 220])
    assert mel_cepstral_distance(speech, speech, RATE) == pytest.approx(0.0, abs=1e-4)
    assert mel_cepstral_distance(3 * speech, speech, RATE) == pytest.approx(0.0, abs=1e-3)
    slower = _vowels([120, 180, 150, 220], seconds=0.4)  # the same sounds, held longer
    other = _vowels([300, 90, 260, 110])
    timing, content = mel_cepstral_distance(slower, speech, RATE), mel_cepstral_distance(other, speech, RATE)
    assert timing < 0.3 * content


def test_empty_audio_is_refused():
    with pytest.raises(ValueError, match="non-empty"):
        mel_cepstral_distance(torch.zeros(0), _vowels([100]), RATE)
