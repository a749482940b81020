"""Residual vector quantization in plain torch: the reference numbers, and the CPU path.

Distances go through ``torch.cdist`` (default compute mode) followed by ``argmin``, level after
level on the residual, exactly as the official Mimi does; any other distance formula flips codes
on near-ties (docs/architecture.md §1.6, §7.5). Ties go to the lowest centroid index (``argmin``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def rvq_encode(x: Tensor, centroids: Tensor) -> Tensor:
    """Codes ``[N, L]`` (int64) of ``x`` ``[N, D]`` against ``centroids`` ``[L, K, D]``."""
    residual = x
    codes = []
    for table in centroids:
        level_codes = torch.cdist(residual[None], table[None], p=2)[0].argmin(dim=-1)
        residual = residual - F.embedding(level_codes, table)
        codes.append(level_codes)
    if not codes:
        return x.new_zeros((x.shape[0], 0), dtype=torch.long)
    return torch.stack(codes, dim=1)


def rvq_decode(codes: Tensor, centroids: Tensor, proj: Tensor | None = None) -> Tensor:
    """Sum over levels of the chosen centroids, ``[N, D]``; then ``@ proj.T`` when ``proj`` is given."""
    total = torch.zeros((codes.shape[0], centroids.shape[-1]), dtype=centroids.dtype, device=centroids.device)
    for level, table in enumerate(centroids):
        total = total + F.embedding(codes[:, level], table)
    return total if proj is None else F.linear(total, proj)
