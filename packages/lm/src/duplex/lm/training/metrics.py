"""LM metrics (torchmetrics): token accuracy and perplexity over the valid positions only."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics import Metric


class MaskedTokenAccuracy(Metric):
    """Fraction of valid positions where the arg-max of ``logits [..., N]`` is the target."""

    higher_is_better = True
    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("correct", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> None:
        predictions = torch.where(mask[..., None], logits, 0.0).argmax(dim=-1)
        self.correct += ((predictions == targets) & mask).sum()
        self.total += mask.sum()

    def compute(self) -> torch.Tensor:
        return self.correct.float() / self.total.clamp(min=1).float()


class MaskedPerplexity(Metric):
    """``exp`` of the mean cross-entropy over valid positions."""

    higher_is_better = False
    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("nll", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> None:
        safe_logits = torch.where(mask[..., None], logits.float(), 0.0)
        ce = F.cross_entropy(
            safe_logits.flatten(0, -2), torch.where(mask, targets, 0).flatten().long(), reduction="none"
        )
        self.nll += (ce * mask.flatten()).double().sum()
        self.total += mask.sum()

    def compute(self) -> torch.Tensor:
        return torch.exp(self.nll / self.total.clamp(min=1)).float()


class LMMetrics(torch.nn.Module):
    """Text and audio accuracy and perplexity, fed from one training-forward output."""

    def __init__(self) -> None:
        super().__init__()
        self.text_accuracy = MaskedTokenAccuracy()
        self.audio_accuracy = MaskedTokenAccuracy()
        self.semantic_accuracy = MaskedTokenAccuracy()
        self.text_perplexity = MaskedPerplexity()
        self.audio_perplexity = MaskedPerplexity()

    def update(self, output, codes: torch.Tensor) -> None:  # noqa: ANN001  (an LMOutput)
        dep_q = output.logits.shape[1]
        audio_targets = codes[:, 1 : 1 + dep_q]
        self.text_accuracy.update(output.text_logits, codes[:, :1], output.text_mask)
        self.text_perplexity.update(output.text_logits, codes[:, :1], output.text_mask)
        self.audio_accuracy.update(output.logits, audio_targets, output.mask)
        self.audio_perplexity.update(output.logits, audio_targets, output.mask)
        self.semantic_accuracy.update(output.logits[:, :1], audio_targets[:, :1], output.mask[:, :1])

    def compute(self) -> dict[str, torch.Tensor]:
        return {name: metric.compute() for name, metric in self.named_children()}

    def reset(self) -> None:
        for metric in self.children():
            metric.reset()
