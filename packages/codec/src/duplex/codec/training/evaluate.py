"""Evaluate a codec on audio segments: SI-SDR, mel distance, STOI, wideband PESQ, codebook usage and
perplexity."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from duplex.codec.mimi import Mimi
from duplex.codec.training.metrics import PESQ, SISDR, STOI, CodebookUsage, MelDistance


@torch.no_grad()
def evaluate_codec(
    codec: Mimi, segments: Sequence[torch.Tensor], batch_size: int = 8, per_codebook: bool = False
) -> dict[str, float]:
    """Round-trip every ``[1, T]`` segment through ``codec`` (its active codebooks).

    The keys are those of the training run's validation, less the ``val/`` prefix:
    ``code_perplexity`` is the perplexity of the codes used, averaged over codebooks, and with
    ``per_codebook`` each codebook's is ``code_perplexity/K`` too. ``stoi`` and ``pesq`` (wideband)
    average the segments they could score (NaN when none), ``stoi_skipped`` and ``pesq_skipped``
    count the others (near-silent or too short: see :class:`STOI` and :class:`PESQ`)."""
    codec = codec.eval()
    si_sdr, mel = SISDR(), MelDistance(codec.sample_rate)
    stoi, pesq = STOI(codec.sample_rate), PESQ(codec.sample_rate)
    usage = CodebookUsage(codec.num_codebooks, codec.cardinality)
    for start in range(0, len(segments), batch_size):
        batch = torch.stack(list(segments[start : start + batch_size]))
        codes = codec.encode(batch)
        estimate = codec.decode(codes)[..., : batch.shape[-1]]
        si_sdr.update(estimate, batch)
        mel.update(estimate, batch)
        stoi.update(estimate, batch)
        pesq.update(estimate, batch)
        usage.update(codes)
    books = usage.compute()
    results = {
        "si_sdr": si_sdr.compute().item(),
        "mel_distance": mel.compute().item(),
        "codebook_usage": books["usage"].mean().item(),
        "code_perplexity": books["perplexity"].mean().item(),
    }
    for key, metric in (("stoi", stoi), ("pesq", pesq)):
        result = metric.compute()
        results[key] = result["mean"].item()
        results[f"{key}_skipped"] = int(result["skipped"])
    if per_codebook:
        for k, value in zip(books["codebook"].tolist(), books["perplexity"].tolist(), strict=True):
            results[f"code_perplexity/{k}"] = value
    return results
