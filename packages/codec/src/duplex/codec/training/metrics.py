"""Codec metrics (torchmetrics): SI-SDR, mel distance, STOI, wideband PESQ, codebook usage and perplexity."""

from __future__ import annotations

import math
import warnings

import torch
from duplex.codec.audio import resample
from duplex.codec.training.spectral import MelSpectrogram, log_clamped
from pesq import PesqError
from torchmetrics import Metric
from torchmetrics.functional.audio import (
    perceptual_evaluation_speech_quality,
    short_time_objective_intelligibility,
)


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


class _PerSegmentScore(Metric):
    """Mean of a per-segment score that some segments cannot get: those are skipped and counted
    rather than failing (the mean is NaN when no segment was scored).

    A segment whose reference is near-silent (RMS below ``min_rms``, the training data's own
    threshold for silence) is skipped too: a speech metric of silence means nothing."""

    higher_is_better = True
    full_state_update = False
    name = ""
    skips = ""  # which segments get skipped, in words

    def __init__(self, sample_rate: int, min_rms: float = 1e-3) -> None:
        super().__init__()
        self.sample_rate = sample_rate
        self.min_rms = min_rms
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("skipped", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, estimate: torch.Tensor, target: torch.Tensor) -> None:
        """``estimate`` and ``target`` ``[..., T]`` at ``sample_rate``: one score per item."""
        estimate = estimate.detach().float().reshape(-1, estimate.shape[-1])
        target = target.detach().float().reshape(-1, target.shape[-1])
        silent = target.pow(2).mean(dim=-1).sqrt() < self.min_rms
        estimate, target = self._prepare(estimate.cpu()), self._prepare(target.cpu())
        for item in range(target.shape[0]):
            value = None if silent[item] else self._score(estimate[item], target[item])
            if value is None or not math.isfinite(value):
                self.skipped += 1
            else:
                self.total += value
                self.count += 1

    def _prepare(self, audio: torch.Tensor) -> torch.Tensor:
        return audio

    def _score(self, estimate: torch.Tensor, target: torch.Tensor) -> float | None:
        raise NotImplementedError

    def compute(self) -> dict[str, torch.Tensor]:
        """``mean`` over the segments scored (NaN when none was), how many were ``scored`` and
        ``skipped``."""
        mean = (self.total / self.count).float() if self.count > 0 else torch.tensor(float("nan"))
        return {"mean": mean, "scored": self.count.clone(), "skipped": self.skipped.clone()}


class STOI(_PerSegmentScore):
    """Mean STOI (short-time objective intelligibility, 0..1; torchmetrics' ``pystoi`` backend,
    which resamples to its native 10 kHz itself).

    STOI needs 30 frames (about 0.4 s) of non-silent speech; shorter segments are skipped."""

    name = "STOI"
    skips = "near-silent, or under 0.4 s once pystoi drops its silent frames"

    def _score(self, estimate: torch.Tensor, target: torch.Tensor) -> float | None:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            value = short_time_objective_intelligibility(estimate, target, self.sample_rate).item()
        if any("Not enough STFT frames" in str(w.message) for w in caught):
            return None  # pystoi's 1e-5 stand-in for "too short to score"
        return value


class PESQ(_PerSegmentScore):
    """Mean wideband PESQ (MOS-LQO, about 1..4.64; torchmetrics' ``pesq`` backend) on the audio
    resampled to 16 kHz.

    PESQ needs 0.25 s; shorter segments, and those it finds no speech in or cannot score (a
    digitally silent estimate), are skipped."""

    name = "PESQ"
    skips = "near-silent, shorter than 0.25 s, a silent estimate, or no speech PESQ could find"
    PESQ_RATE = 16000
    MIN_SECONDS = 0.25

    def _prepare(self, audio: torch.Tensor) -> torch.Tensor:
        return resample(audio, self.sample_rate, self.PESQ_RATE)

    def _score(self, estimate: torch.Tensor, target: torch.Tensor) -> float | None:
        if target.shape[-1] < self.MIN_SECONDS * self.PESQ_RATE or not estimate.abs().max() > 0:
            return None
        try:
            return perceptual_evaluation_speech_quality(estimate, target, self.PESQ_RATE, "wb").item()
        except PesqError:
            return None


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
