"""A training-only head that transcribes the user: what the LM heard, as text.

The LM's own text stream says what *it* says; nothing in Moshi's loss asks the temporal
transformer to know which words the *user* said. A small LM trained on a few thousand scripted
conversations then tells the questions apart by the exact codes of each training recording, and
answers a new recording of a known question at chance (docs/architecture.md §8.3). This head reads
the temporal state and predicts the user's words (their text stream, from the conversations' word
alignments) ``delay_frames`` late, once the word has been heard. Its loss makes the state hold the
words themselves, which carry over to recordings never heard in training.

The head lives in the training module, not in the LM: a checkpoint never holds it, and
generation is unchanged.
"""

from __future__ import annotations

import torch
from duplex.lm.data.interleave import ZERO_TOKEN
from duplex.lm.training.loss import text_cross_entropy
from torch import nn


class UserTextHead(nn.Module):
    def __init__(self, dim: int, text_card: int, delay_frames: int) -> None:
        super().__init__()
        self.delay_frames = delay_frames
        self.linear = nn.Linear(dim, text_card)

    def forward(self, hidden: torch.Tensor, user_text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``hidden [B, T, dim]`` (the LM's temporal state), ``user_text [B, T]`` -> logits
        ``[B, T - delay, text_card]`` and their targets ``[B, T - delay]``: the user's token
        ``delay_frames`` steps before each state."""
        delay = self.delay_frames
        if delay >= hidden.shape[1]:
            raise ValueError(
                f"user_text_delay_frames ({delay}) must be below the training window "
                f"({hidden.shape[1]} frames)"
            )
        return self.linear(hidden[:, delay:]), user_text[:, : user_text.shape[1] - delay]

    def loss(
        self, hidden: torch.Tensor, user_text: torch.Tensor, padding_id: int, padding_weight: float
    ) -> torch.Tensor:
        logits, targets = self(hidden, user_text)
        return text_cross_entropy(logits, targets, targets != ZERO_TOKEN, padding_id, padding_weight)
