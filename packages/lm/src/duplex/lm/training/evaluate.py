"""Evaluate an LM on multistream segments: loss, token accuracy and perplexity."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from duplex.lm.model import LMModel
from duplex.lm.training.config import LMTrainingConfig
from duplex.lm.training.loss import model_loss
from duplex.lm.training.metrics import LMMetrics


@torch.no_grad()
def evaluate_lm(
    model: LMModel, segments: Sequence[torch.Tensor], config: LMTrainingConfig, batch_size: int = 8
) -> dict[str, float]:
    """Mean loss (as trained) and the metrics of :class:`LMMetrics` over ``[1 + n_q, T]`` segments."""
    model = model.eval()
    metrics = LMMetrics()
    total, count = 0.0, 0
    for start in range(0, len(segments), batch_size):
        codes = torch.stack(list(segments[start : start + batch_size]))
        output, loss = model_loss(model, codes, config)
        total += loss.total.item() * codes.shape[0]
        count += codes.shape[0]
        metrics.update(output, codes)
    return {"loss": total / max(count, 1), **{k: v.item() for k, v in metrics.compute().items()}}
