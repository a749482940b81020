"""Codec training losses: multi-scale mel reconstruction, adversarial hinge, feature matching,
semantic distillation."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from duplex.codec.training.spectral import MelSpectrogram, log_clamped
from torch import nn


class MultiScaleMelLoss(nn.Module):
    """Sum over window sizes of L1 between log-mels plus L2 between mels (Descript / EnCodec style)."""

    def __init__(
        self,
        sample_rate: int,
        window_sizes: Sequence[int] = (64, 128, 256, 512, 1024, 2048),
        n_mels: int = 64,
        log_weight: float = 1.0,
        linear_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.mels = nn.ModuleList(MelSpectrogram(sample_rate, n, n // 4, n_mels) for n in window_sizes)
        self.log_weight = log_weight
        self.linear_weight = linear_weight

    def forward(self, estimate: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if estimate.shape != target.shape:
            raise ValueError(
                f"estimate {list(estimate.shape)} and target {list(target.shape)} differ in shape"
            )
        total = estimate.new_zeros(())
        for mel in self.mels:
            a, b = mel(estimate), mel(target)
            total = total + self.log_weight * F.l1_loss(log_clamped(a), log_clamped(b))
            total = total + self.linear_weight * F.mse_loss(a, b)
        return total / len(self.mels)


def discriminator_hinge_loss(real_logits: Sequence[torch.Tensor], fake_logits: Sequence[torch.Tensor]):
    """Hinge loss of the discriminator, averaged over its sub-discriminators."""
    losses = [
        F.relu(1 - real).mean() + F.relu(1 + fake).mean()
        for real, fake in zip(real_logits, fake_logits, strict=True)
    ]
    return torch.stack(losses).mean()


def generator_hinge_loss(fake_logits: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.stack([F.relu(1 - fake).mean() for fake in fake_logits]).mean()


def feature_matching_loss(
    real_features: Sequence[Sequence[torch.Tensor]], fake_features: Sequence[Sequence[torch.Tensor]]
) -> torch.Tensor:
    """L1 between discriminator activations of real and generated audio, relative to the real ones."""
    losses = []
    for reals, fakes in zip(real_features, fake_features, strict=True):
        for real, fake in zip(reals, fakes, strict=True):
            real = real.detach()
            losses.append((fake - real).abs().mean() / real.abs().mean().clamp(min=1e-8))
    return torch.stack(losses).mean()


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """1 - cosine similarity along channels between ``student`` and ``teacher`` ``[B, D, F]``.

    The shorter of the two sequences sets the length (teachers may round frame counts differently).
    """
    frames = min(student.shape[-1], teacher.shape[-1])
    return (1 - F.cosine_similarity(student[..., :frames], teacher[..., :frames].detach(), dim=1)).mean()
