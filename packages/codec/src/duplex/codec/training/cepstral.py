"""Mel-cepstral distance between two recordings of the same words, after DTW alignment.

Two renderings of a sentence differ in timing as well as in sound, so each frame of one is matched
to a frame of the other by dynamic time warping on the cepstra, and the distance is averaged
along that path. The cepstra are the DCT of 10 ms log-mel frames; c0 (the level) is left out, as
is usual, so a louder copy of the same sound is at distance 0.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from duplex.codec.training.spectral import MelSpectrogram

_FLOOR = 1e-4  # mel energies are floored 80 dB below the loudest, so the floor scales with the level
_DB = 10 / math.log(10) * math.sqrt(2)  # the customary dB scaling of a cepstral distance


def mel_cepstra(
    wav: torch.Tensor, sample_rate: int, coefficients: int = 24, n_mels: int = 80
) -> torch.Tensor:
    """Cepstra ``[frames, coefficients]`` (c1 .. c_coefficients) of mono ``wav`` at 10 ms hops."""
    hop = sample_rate // 100
    mel = MelSpectrogram(sample_rate, 4 * hop, hop, n_mels)(wav.reshape(1, -1).float())[0]  # [n_mels, F]
    log_mel = torch.log(mel.clamp(min=mel.max().clamp(min=1e-12) * _FLOOR))
    k = torch.arange(n_mels, dtype=torch.float64)
    dct = torch.cos(math.pi / n_mels * (k[None] + 0.5) * torch.arange(1, coefficients + 1)[:, None])
    return (dct.float() @ log_mel).T * math.sqrt(2 / n_mels)


def dtw_path(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The monotonic alignment of least total ``cost [N, M]`` from (0, 0) to (N-1, M-1)."""
    n, m = cost.shape
    total = np.full((n + 1, m + 1), np.inf)
    total[0, 0] = 0.0
    for i in range(1, n + 1):
        row, above = total[i], total[i - 1]
        best = np.minimum(above[1:], above[:-1])  # from (i-1, j) or (i-1, j-1)
        for j in range(1, m + 1):
            row[j] = cost[i - 1, j - 1] + min(best[j - 1], row[j - 1])
    path_i, path_j = [n - 1], [m - 1]
    i, j = n, m
    while (i, j) != (1, 1):
        moves = ((i - 1, j - 1), (i - 1, j), (i, j - 1))
        i, j = min((move for move in moves if move[0] >= 1 and move[1] >= 1), key=lambda ij: total[ij])
        path_i.append(i - 1)
        path_j.append(j - 1)
    return np.array(path_i[::-1]), np.array(path_j[::-1])


def mel_cepstral_distance(estimate: torch.Tensor, reference: torch.Tensor, sample_rate: int) -> float:
    """MCD in dB between mono ``estimate`` and ``reference``, frames matched by DTW."""
    if not estimate.numel() or not reference.numel():
        raise ValueError("mel-cepstral distance needs two non-empty recordings")
    a, b = mel_cepstra(estimate, sample_rate), mel_cepstra(reference, sample_rate)
    distances = torch.cdist(a.double(), b.double()).numpy()  # Euclidean distance of every frame pair
    i, j = dtw_path(distances)
    return float(_DB * distances[i, j].mean())
