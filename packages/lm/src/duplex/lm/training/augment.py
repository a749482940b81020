"""Training-time corruption of the user's audio stream, so the LM learns what was said, not which
recording it heard.

A small LM trained on a few thousand conversations otherwise keys its answers on the exact codes
of each training recording (it answers them well and new recordings of the same question at
chance). Two corruptions, drawn per window, leave the words and change the recording: whole
acoustic codebooks of the user become the zero token (``user_codebook_dropout``; the semantic
codebook always stays), and single user codes become random ones (``user_code_noise``). Only the
model's input changes: the user's stream is never a target (docs/architecture.md §8.3).
"""

from __future__ import annotations

import torch
from duplex.lm.data.interleave import ZERO_TOKEN


def corrupt_user_audio(
    codes: torch.Tensor,
    dep_q: int,
    card: int,
    codebook_dropout: float,
    code_noise: float,
) -> torch.Tensor:
    """A copy of training ``codes [B, 1 + n_q, T]`` (text, model audio, user audio) with the user's
    audio corrupted; ``codes`` itself is left as it is."""
    user = slice(1 + dep_q, codes.shape[1])
    books = codes.shape[1] - 1 - dep_q
    if books <= 0 or (codebook_dropout == 0 and code_noise == 0):
        return codes
    out = codes.clone()
    batch, _, length = codes.shape
    device = codes.device
    user_codes = out[:, user]
    valid = user_codes >= 0
    if code_noise > 0:
        noisy = torch.rand(batch, books, length, device=device) < code_noise
        random = torch.randint(0, card, (batch, books, length), device=device)
        user_codes.copy_(torch.where(noisy & valid, random.to(codes.dtype), user_codes))
    if codebook_dropout > 0:
        dropped = torch.rand(batch, books, 1, device=device) < codebook_dropout
        dropped[:, 0] = False  # the semantic codebook carries the words
        user_codes.masked_fill_(dropped & valid, ZERO_TOKEN)
    return out
