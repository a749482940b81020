"""Codec metrics (torchmetrics): SI-SDR, mel distance, codebook usage and perplexity."""

from __future__ import annotations

import math

import torch
from duplex.codec.training.spectral import MelSpectrogram, log_clamped
from torchmetrics import Metric


def si_sdr(estimate: torch.Tensor, target: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Scale-invariant signal-to-distortion ratio in dB, per item of ``[..., T]`` (zero-mean signals)."""
    estimate = estimate - estimate.mean(dim=-1, keepdim=True)
    target = target - target.mean(dim=-1, keepdim=True)
    scale = (estimate * target).sum(-1, keepdim=True) / (target.pow(2).sum(-1, keepdim=True) + eps)
    projection = scale * target
    noise = estimate - projection
    return 10 * torch.log10((projection.pow(2).sum(-1) + eps) / (noise.pow(2).sum(-1) + eps))


class SISDR(Metric):
    """Mean SI-SDR (dB) over every item seen."""

    higher_is_better = True
    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, estimate: torch.Tensor, target: torch.Tensor) -> None:
        values = si_sdr(
            estimate.float().reshape(-1, estimate.shape[-1]), target.float().reshape(-1, target.shape[-1])
        )
        self.total += values.double().sum()
        self.count += values.numel()

    def compute(self) -> torch.Tensor:
        return (self.total / self.count.clamp(min=1)).float()


class MelDistance(Metric):
    """Mean L1 distance between log-mel spectrograms (one 1024-point window, 80 bands)."""

    higher_is_better = False
    full_state_update = False

    def __init__(self, sample_rate: int = 24000, n_fft: int = 1024, n_mels: int = 80) -> None:
        super().__init__()
        self.mel = MelSpectrogram(sample_rate, n_fft, n_fft // 4, n_mels)
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, estimate: torch.Tensor, target: torch.Tensor) -> None:
        self.mel.to(estimate.device)
        difference = (log_clamped(self.mel(estimate)) - log_clamped(self.mel(target))).abs()
        self.total += difference.double().sum()
        self.count += difference.numel()

    def compute(self) -> torch.Tensor:
        return (self.total / self.count.clamp(min=1)).float()


def code_histograms(codes: torch.Tensor, cardinality: int) -> torch.Tensor:
    """Per-codebook code counts ``[K, cardinality]`` of ``codes [B, K, T]``."""
    k = codes.shape[1]
    flat = codes.transpose(0, 1).reshape(k, -1)
    offsets = torch.arange(k, device=codes.device)[:, None] * cardinality
    histogram = torch.bincount((flat + offsets).reshape(-1), minlength=k * cardinality)
    return histogram.view(k, cardinality)


def perplexity(counts: torch.Tensor) -> torch.Tensor:
    """``exp(entropy)`` of each row's empirical distribution (``counts [..., cardinality]``): the
    number of codes a row uses, weighted by use; 1 when one code takes everything."""
    counts = counts.float()
    p = counts / counts.sum(dim=-1, keepdim=True).clamp(min=1)
    return (-(p * torch.log(p.clamp(min=1e-30))).sum(dim=-1)).exp()


def code_perplexity(codes: torch.Tensor, cardinality: int) -> torch.Tensor:
    """Perplexity ``[K]`` of the codes each codebook actually emitted in ``codes [B, K, T]``."""
    return perplexity(code_histograms(codes, cardinality))


class CodebookUsage(Metric):
    """Per-codebook code histograms; ``compute`` gives the used fraction and perplexity of each
    codebook that emitted any code (``codebook``: their indices).

    Perplexity is ``exp(entropy)`` of the empirical code distribution: ``cardinality`` when every
    code is equally used, 1 when a single code is.
    """

    full_state_update = False

    def __init__(self, num_codebooks: int, cardinality: int) -> None:
        super().__init__()
        self.num_codebooks = num_codebooks
        self.cardinality = cardinality
        self.add_state("counts", default=torch.zeros(num_codebooks, cardinality), dist_reduce_fx="sum")

    def update(self, codes: torch.Tensor) -> None:
        """``codes [B, K, T]`` with ``K <= num_codebooks`` (quantizer dropout may use fewer)."""
        k = codes.shape[1]
        if k > self.num_codebooks:
            raise ValueError(f"got {k} codebooks, the metric tracks {self.num_codebooks}")
        self.counts[:k] += code_histograms(codes, self.cardinality).to(self.counts.dtype)

    def compute(self) -> dict[str, torch.Tensor]:
        counts = self.counts
        total = counts.sum(dim=1, keepdim=True)
        p = counts / total.clamp(min=1)
        entropy = -(p * torch.log(p.clamp(min=1e-30))).sum(dim=1)
        seen = total[:, 0] > 0
        return {
            "usage": ((counts > 0).float().mean(dim=1))[seen],
            "perplexity": entropy.exp()[seen],
            "normalized_entropy": (entropy / math.log(self.cardinality))[seen],
            "codebook": torch.nonzero(seen)[:, 0],  # which codebook each value above is of
        }
