"""The multistream loss of the Moshi LM.

Text and audio are two cross-entropies, each a weighted mean over its valid positions (the
model's masks: delays, zero tokens), added together:

* audio: the semantic codebook (Moshi's first audio stream) weighs ``semantic_weight`` times an
  acoustic one, as in Moshi's training (the semantic tokens carry the content);
* text: padding positions weigh ``text_padding_weight`` (most frames are padding, and predicting
  them is easy; EPAD, which announces a word, keeps full weight).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from duplex.lm.model import LMModel, LMOutput
    from duplex.lm.training.config import LMTrainingConfig


@dataclass
class MultistreamLoss:
    total: torch.Tensor
    text: torch.Tensor
    audio: torch.Tensor
    per_codebook: torch.Tensor  # [dep_q], unweighted mean cross-entropy of each audio stream


def _weighted_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``logits [..., N]``, ``targets / mask / weights [...]`` -> (weighted mean, per-position CE)."""
    safe_logits = torch.where(mask[..., None], logits.float(), 0.0)  # masked positions may hold NaN
    safe_targets = torch.where(mask, targets, 0).long()
    ce = F.cross_entropy(safe_logits.flatten(0, -2), safe_targets.flatten(), reduction="none").view(
        targets.shape
    )
    w = weights * mask
    return (ce * w).sum() / w.sum().clamp(min=1e-8), ce


def text_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, padding_id: int, padding_weight: float
) -> torch.Tensor:
    """Mean cross-entropy of a text stream over ``mask``, padding positions weighing ``padding_weight``."""
    weights = torch.where(targets == padding_id, padding_weight, 1.0)
    return _weighted_cross_entropy(logits, targets, mask, weights)[0]


def multistream_loss(
    logits: torch.Tensor,
    mask: torch.Tensor,
    text_logits: torch.Tensor,
    text_mask: torch.Tensor,
    codes: torch.Tensor,
    semantic_weight: float = 100.0,
    text_padding_weight: float = 0.5,
    text_padding_id: int = 3,
    text_weight: float = 1.0,
) -> MultistreamLoss:
    """Loss of one training forward (docs/architecture.md §3.6 outputs) against ``codes [B, 1 + n_q, T]``."""
    dep_q = logits.shape[1]
    text_loss = text_cross_entropy(text_logits, codes[:, :1], text_mask, text_padding_id, text_padding_weight)
    audio_targets = codes[:, 1 : 1 + dep_q]
    codebook_weights = torch.ones(dep_q, device=logits.device)
    codebook_weights[0] = semantic_weight
    audio_weights = codebook_weights.view(1, dep_q, 1).expand_as(audio_targets)
    audio_loss, ce = _weighted_cross_entropy(logits, audio_targets, mask, audio_weights)
    valid = mask.float()
    per_codebook = (ce * valid).sum(dim=(0, 2)) / valid.sum(dim=(0, 2)).clamp(min=1)
    return MultistreamLoss(text_weight * text_loss + audio_loss, text_loss, audio_loss, per_codebook)


def model_loss(
    model: LMModel, codes: torch.Tensor, config: LMTrainingConfig
) -> tuple[LMOutput, MultistreamLoss]:
    """Run the training forward of ``model`` on ``codes`` and weigh its loss as ``config`` says."""
    output = model(codes)
    loss = multistream_loss(
        output.logits,
        output.mask,
        output.text_logits,
        output.text_mask,
        codes,
        semantic_weight=config.semantic_weight,
        text_padding_weight=config.text_padding_weight,
        text_padding_id=model.config.existing_text_padding_id,
        text_weight=config.text_weight,
    )
    return output, loss
