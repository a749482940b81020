"""Residual vector quantization in plain torch: the reference numbers, and the CPU path.

Distances go through ``torch.cdist`` (default compute mode) followed by ``argmin``, level after
level on the residual, exactly as the official Mimi does; any other distance formula flips codes
on near-ties (docs/architecture.md §1.6, §7.5). Ties go to the lowest centroid index (``argmin``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def nearest_codes(vectors: Tensor, centroids: Tensor) -> Tensor:
    """Index of the nearest centroid (Euclidean) for each row of ``vectors`` ``[N, D]`` -> ``[N]``,
    with ``torch.cdist`` as the reference computes it (another formula flips near-ties)."""
    return torch.cdist(vectors[None], centroids[None], p=2)[0].argmin(dim=-1)


def lookup(codes: Tensor, centroids: Tensor) -> Tensor:
    """Centroid vectors for integer ``codes`` of any shape -> ``[*codes.shape, D]``."""
    return F.embedding(codes, centroids)


def quantize_level(residual: Tensor, centroids: Tensor) -> tuple[Tensor, Tensor]:
    """One level of the residual search: the codes of ``residual [N, D]`` and their centroids
    ``[N, D]`` (the next level searches ``residual - vectors``). Every residual loop of duplex,
    inference, training, initialisation and calibration, steps through this."""
    codes = nearest_codes(residual, centroids)
    return codes, lookup(codes, centroids)


def rvq_encode(x: Tensor, centroids: Tensor) -> Tensor:
    """Codes ``[N, L]`` (int64) of ``x`` ``[N, D]`` against ``centroids`` ``[L, K, D]``."""
    residual = x
    codes = []
    for table in centroids:
        level_codes, vectors = quantize_level(residual, table)
        residual = residual - vectors
        codes.append(level_codes)
    if not codes:
        return x.new_zeros((x.shape[0], 0), dtype=torch.long)
    return torch.stack(codes, dim=1)


def rvq_decode(codes: Tensor, centroids: Tensor, proj: Tensor | None = None) -> Tensor:
    """Sum over levels of the chosen centroids, ``[N, D]``; then ``@ proj.T`` when ``proj`` is given."""
    total = torch.zeros((codes.shape[0], centroids.shape[-1]), dtype=centroids.dtype, device=centroids.device)
    for level, table in enumerate(centroids):
        total = total + lookup(codes[:, level], table)
    return total if proj is None else F.linear(total, proj)
