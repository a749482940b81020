"""Evaluate a codec on audio segments: SI-SDR, mel distance, codebook usage and perplexity."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from duplex.codec.mimi import Mimi
from duplex.codec.training.metrics import SISDR, CodebookUsage, MelDistance


@torch.no_grad()
def evaluate_codec(codec: Mimi, segments: Sequence[torch.Tensor], batch_size: int = 8) -> dict[str, float]:
    """Round-trip every ``[1, T]`` segment through ``codec`` (its active codebooks)."""
    codec = codec.eval()
    si_sdr, mel = SISDR(), MelDistance(codec.sample_rate)
    usage = CodebookUsage(codec.num_codebooks, codec.cardinality)
    for start in range(0, len(segments), batch_size):
        batch = torch.stack(list(segments[start : start + batch_size]))
        codes = codec.encode(batch)
        estimate = codec.decode(codes)[..., : batch.shape[-1]]
        si_sdr.update(estimate, batch)
        mel.update(estimate, batch)
        usage.update(codes)
    books = usage.compute()
    return {
        "si_sdr": si_sdr.compute().item(),
        "mel_distance": mel.compute().item(),
        "codebook_usage": books["usage"].mean().item(),
        "codebook_perplexity": books["perplexity"].mean().item(),
    }
