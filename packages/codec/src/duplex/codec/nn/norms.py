"""Normalisation layers of the transformers (docs/architecture.md §2.4).

``make_norm`` maps the config strings of the official models to modules whose parameter names
match the checkpoints: LayerNorm keeps ``weight`` / ``bias``, RMSNorm keeps ``alpha`` [1, 1, D].
"""

from __future__ import annotations

import torch
from duplex.codec.nn.schema import NormKind
from torch import nn
from torch.nn import functional as F


class LayerNormF32(nn.LayerNorm):
    """LayerNorm computed in float32 whatever the input dtype, cast back to it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


class RMSNorm(nn.Module):
    """``y = x * alpha / sqrt(mean(x^2) + eps)`` over the last dim.

    With ``compute_dtype`` set (float32 for ``rms_norm_f32``), the input is upcast for the
    statistics and the product, and the result is cast back to the input dtype.
    """

    def __init__(self, dim: int, eps: float, compute_dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.eps = eps
        self.compute_dtype = compute_dtype
        self.alpha = nn.Parameter(torch.ones(1, 1, dim, dtype=compute_dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        input_dtype = x.dtype
        if self.compute_dtype is not None and input_dtype != self.compute_dtype:
            x = x.to(self.compute_dtype)
        weight = self.alpha.view(-1)
        if weight.dtype != x.dtype:
            weight = weight.to(x.dtype)
        y = F.rms_norm(x, weight.shape, weight, self.eps)
        return y if y.dtype == input_dtype else y.to(input_dtype)


def make_norm(kind: NormKind, dim: int) -> nn.Module:
    if kind == "layer_norm":
        return nn.LayerNorm(dim, eps=1e-5)
    if kind == "layer_norm_f32":
        return LayerNormF32(dim, eps=1e-8)
    if kind == "rms_norm":
        return RMSNorm(dim, eps=1e-5)
    if kind == "rms_norm_f32":
        return RMSNorm(dim, eps=1e-8, compute_dtype=torch.float32)
    raise ValueError(f"unknown norm {kind!r}; expected layer_norm, layer_norm_f32, rms_norm or rms_norm_f32")
