"""The training path of Mimi's split residual quantizer.

Inference modules only look codes up; training also has to learn the codebooks. Here that is
done around the inference modules (their buffers are the state), the way the official Mimi was
trained:

* codebooks start from k-means on the first batch they see, one residual level per step (a level
  is initialised only once the level before it was, so it never clusters all-zero residuals);
* each codebook follows an exponential moving average of the vectors assigned to it (no gradient);
* every ``check_unused_every`` steps, codes used less than ``threshold_usage_ratio`` of a uniform
  share are replaced by vectors drawn from the batch;
* the encoder gets the straight-through gradient, plus a commitment loss pulling its output
  toward the chosen centroids;
* quantizer dropout: each step keeps a random number of acoustic levels, so one model serves
  every bitrate;
* under data parallelism the statistics are averaged over ranks after each update, so all ranks
  keep identical codebooks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F
from duplex.codec.kernels.rvq_torch import nearest_codes, quantize_level
from duplex.codec.quantizer import (
    EuclideanCodebook,
    ResidualVectorQuantizer,
    SplitResidualVectorQuantizer,
)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _sample_rows(rows: torch.Tensor, count: int, generator: torch.Generator | None) -> torch.Tensor:
    if rows.shape[0] >= count:
        index = torch.randperm(rows.shape[0], generator=generator, device="cpu")[:count]
    else:
        index = torch.randint(0, rows.shape[0], (count,), generator=generator, device="cpu")
    return rows[index.to(rows.device)]


def kmeans(
    rows: torch.Tensor, clusters: int, iterations: int = 50, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means: centroids ``[clusters, D]`` and the size of each cluster ``[clusters]``.

    Empty clusters are re-seeded with random rows at every iteration and reported with size 1.
    """
    means = _sample_rows(rows, clusters, generator)
    counts = torch.ones(clusters, device=rows.device)
    for _ in range(iterations):
        assignment = nearest_codes(rows, means)
        raw_counts = torch.bincount(assignment, minlength=clusters).to(rows.dtype)
        counts = raw_counts.clamp(min=1)  # a re-seeded cluster starts as if it held one row
        sums = torch.zeros_like(means).index_add_(0, assignment, rows)
        new_means = sums / counts[:, None]
        means = torch.where((raw_counts == 0)[:, None], _sample_rows(rows, clusters, generator), new_means)
    return means, counts


@dataclass
class CodebookTrainingConfig:
    decay: float = 0.99
    threshold_usage_ratio: float = 0.1
    replaced_usage_ratio: float = 1.0
    check_unused_every: int = 5
    kmeans_iterations: int = 50


@dataclass
class QuantizerStepResult:
    quantized: torch.Tensor  # [B, C, T], straight-through
    codes: torch.Tensor  # [B, K, T]
    commitment: torch.Tensor  # scalar
    semantic: torch.Tensor  # [B, C, T], the semantic part alone (for distillation)
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


class CodebookTrainer:
    """EMA learning of one :class:`EuclideanCodebook` (its buffers are updated in place)."""

    def __init__(self, codebook: EuclideanCodebook, config: CodebookTrainingConfig) -> None:
        self.codebook = codebook
        self.config = config
        self.calls_until_check = config.check_unused_every

    @property
    def initialized(self) -> bool:
        return bool(self.codebook._initialized.item())

    @torch.no_grad()
    def initialize(self, rows: torch.Tensor, generator: torch.Generator | None) -> None:
        cb = self.codebook
        centroids, counts = kmeans(rows, cb.size, self.config.kmeans_iterations, generator)
        cb.seed(centroids, counts)
        if _distributed():
            for buffer in (cb.embedding_sum, cb.cluster_usage):
                dist.broadcast(buffer, 0)
            cb.refresh_centroids()

    def _check_due(self, step: int | None) -> bool:
        if step is not None:  # resumable runs: decided by the step number alone
            return (step + 1) % self.config.check_unused_every == 0
        self.calls_until_check -= 1
        if self.calls_until_check > 0:
            return False
        self.calls_until_check = self.config.check_unused_every
        return True

    @torch.no_grad()
    def replace_dead_codes(
        self, rows: torch.Tensor, generator: torch.Generator | None, step: int | None = None
    ) -> torch.Tensor:
        """Every ``check_unused_every`` steps: re-seed rarely used codes; returns the replaced fraction."""
        cb = self.codebook
        if not self.initialized or not self._check_due(step):
            return rows.new_zeros(())
        uniform_share = cb.cluster_usage.sum() / cb.size
        dead = cb.cluster_usage < self.config.threshold_usage_ratio * uniform_share
        new_usage = self.config.replaced_usage_ratio * uniform_share
        fresh = _sample_rows(rows, cb.size, generator)
        cb.embedding_sum.copy_(torch.where(dead[:, None], new_usage * fresh, cb.embedding_sum))
        cb.cluster_usage.copy_(torch.where(dead, new_usage, cb.cluster_usage))
        if _distributed():
            for buffer in (cb.embedding_sum, cb.cluster_usage):
                dist.broadcast(buffer, 0)
        cb.refresh_centroids()
        return dead.float().mean()

    @torch.no_grad()
    def ema_update(self, rows: torch.Tensor, codes: torch.Tensor) -> None:
        cb = self.codebook
        decay = self.config.decay
        counts = torch.bincount(codes, minlength=cb.size).to(cb.cluster_usage.dtype)
        sums = torch.zeros_like(cb.embedding_sum).index_add_(0, codes, rows.to(cb.embedding_sum.dtype))
        cb.cluster_usage.mul_(decay).add_(counts, alpha=1 - decay)
        cb.embedding_sum.mul_(decay).add_(sums, alpha=1 - decay)
        if _distributed():
            world = dist.get_world_size()
            for buffer in (cb.cluster_usage, cb.embedding_sum):
                dist.all_reduce(buffer)
                buffer.div_(world)
        cb.refresh_centroids()

    def usage_entropy(self) -> torch.Tensor:
        """Entropy of the usage statistics, relative to a uniform use of every code (1 = optimal)."""
        usage = self.codebook.cluster_usage
        p = usage / usage.sum()
        return -(p * torch.log(p.clamp(min=1e-30))).sum() / math.log(self.codebook.size)


class ResidualQuantizerTrainer:
    def __init__(self, rvq: ResidualVectorQuantizer, config: CodebookTrainingConfig) -> None:
        self.rvq = rvq
        self.levels = [CodebookTrainer(cb, config) for cb in rvq.codebooks()]

    def __call__(
        self,
        latent: torch.Tensor,
        num_levels: int,
        training: bool,
        generator: torch.Generator | None,
        step: int | None = None,
        quantize: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Quantize ``latent [B, C, T]`` with ``num_levels`` levels.

        Returns the straight-through output ``[B, C_out, T]``, codes ``[B, K, T]``, the commitment
        loss averaged over levels, and per-level metrics. Items where ``quantize`` (bool ``[B]``)
        is false pass their projected latent unquantized (the codebooks still learn from them).
        """
        batch, _, frames = latent.shape
        projected = self.rvq.input_proj(latent).transpose(1, 2).reshape(batch * frames, -1)
        residual = projected
        total = torch.zeros_like(projected)
        all_codes, losses, metrics = [], [], {}
        previous_was_ready = True
        for level, trainer in enumerate(self.levels[:num_levels]):
            was_ready = trainer.initialized
            rows = residual.detach()
            if training and previous_was_ready and not was_ready:
                trainer.initialize(rows, generator)
            codes, vectors = quantize_level(rows, trainer.codebook.centroids)
            if training:
                metrics[f"dead_codes_{level}"] = trainer.replace_dead_codes(rows, generator, step)
                trainer.ema_update(rows, codes)
                metrics[f"entropy_{level}"] = trainer.usage_entropy()
            losses.append(F.mse_loss(residual, vectors))
            residual = residual - vectors
            total = total + vectors
            all_codes.append(codes)
            previous_was_ready = was_ready
        straight_through = projected + (total - projected).detach()
        if quantize is not None:
            rows_quantized = quantize.to(projected.device).repeat_interleave(frames)[:, None]
            straight_through = torch.where(rows_quantized, straight_through, projected)
        out = self.rvq.output_proj(straight_through.view(batch, frames, -1).transpose(1, 2))
        codes = torch.stack(all_codes, dim=1).view(batch, frames, -1).transpose(1, 2)
        return out, codes, torch.stack(losses).mean(), metrics


class SplitQuantizerTrainer:
    """Training forward of a :class:`SplitResidualVectorQuantizer` (semantic + acoustic levels)."""

    def __init__(
        self,
        quantizer: SplitResidualVectorQuantizer,
        config: CodebookTrainingConfig | None = None,
        quantizer_dropout: bool = True,
        quantization_rate: float = 1.0,
    ) -> None:
        self.quantizer = quantizer
        self.config = config or CodebookTrainingConfig(
            decay=quantizer.config.decay,
            threshold_usage_ratio=quantizer.config.threshold_usage_ratio,
            replaced_usage_ratio=quantizer.config.replaced_usage_ratio,
        )
        self.quantizer_dropout = quantizer_dropout
        self.quantization_rate = quantization_rate
        self.semantic = ResidualQuantizerTrainer(quantizer.rvq_first, self.config)
        self.acoustic = ResidualQuantizerTrainer(quantizer.rvq_rest, self.config)

    def __call__(
        self,
        latent: torch.Tensor,
        training: bool = True,
        generator: torch.Generator | None = None,
        step: int | None = None,
    ) -> QuantizerStepResult:
        """Quantize ``latent [B, C, T]``; with ``training`` the codebooks learn from it.

        ``generator`` drives every random choice (k-means seeds, dead-code draws, dropout) and
        ``step`` schedules dead-code checks, so a resumed run repeats the interrupted one exactly.
        In training, each item is quantized with probability ``quantization_rate`` and otherwise
        decoded from its unquantized latent, as Mimi was trained (at 0.5): the encoder and decoder
        learn to reconstruct before the codebooks have settled.
        """
        quantize = None
        if training and self.quantization_rate < 1.0:
            quantize = torch.rand(latent.shape[0], generator=generator) < self.quantization_rate
        semantic_levels = self.quantizer.config.n_q_semantic
        acoustic_levels = self.quantizer.num_codebooks - semantic_levels
        if training and self.quantizer_dropout and acoustic_levels > 1:
            acoustic_levels = int(torch.randint(1, acoustic_levels + 1, (1,), generator=generator).item())
        semantic, codes, loss, metrics = self.semantic(
            latent, semantic_levels, training, generator, step, quantize
        )
        result = QuantizerStepResult(
            quantized=semantic, codes=codes, commitment=loss, semantic=semantic, metrics=metrics
        )
        if acoustic_levels > 0:
            acoustic, acoustic_codes, acoustic_loss, acoustic_metrics = self.acoustic(
                latent, acoustic_levels, training, generator, step, quantize
            )
            result.quantized = semantic + acoustic
            result.codes = torch.cat([codes, acoustic_codes], dim=1)
            total = semantic_levels + acoustic_levels
            result.commitment = (loss * semantic_levels + acoustic_loss * acoustic_levels) / total
            for key, value in acoustic_metrics.items():
                name, level = key.rsplit("_", 1)
                metrics[f"{name}_{int(level) + semantic_levels}"] = value
        return result
