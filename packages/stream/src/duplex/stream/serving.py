"""The pipeline a checkpoint is served with, by its ``model_type`` (docs/architecture.md §6.3):
dialogue models (Moshi) behind ``/api/chat``, speech recognition (STT) behind
``/api/asr-streaming``, text-to-speech (TTS) behind ``/api/tts_streaming``. Other kinds (Hibiki)
are refused with the command that runs them."""

from __future__ import annotations

from pathlib import Path

import torch
from duplex.codec.kernels.weight_formats import WeightFormat
from duplex.stream.pipeline import FramePipeline


def load_pipeline(
    source: str | Path | None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    quantize: WeightFormat | None = None,
    **sampling,
) -> FramePipeline:
    """The serving pipeline of a checkpoint (None: the bundled dialogue demo); ``quantize``
    (``"bf16"`` or ``"int8"``) stores the LM's matmul weights in low precision; ``sampling``
    overrides a dialogue model's ``lm_gen_config``."""
    from duplex.lm.checkpoint import load_checkpoint
    from duplex.lm.config import MODEL_TASKS
    from duplex.stream.asr_pipeline import AsrPipeline
    from duplex.stream.pipeline import MoshiPipeline
    from duplex.stream.tts_pipeline import TtsPipeline

    if source is None:
        return MoshiPipeline.from_checkpoint(None, device=device, dtype=dtype, quantize=quantize, **sampling)
    model_type = load_checkpoint(source).config.model_type
    if model_type == "stt":
        return AsrPipeline.from_checkpoint(source, device=device, dtype=dtype, quantize=quantize)
    if model_type == "tts":
        greedy = sampling.get("use_sampling") is False
        return TtsPipeline.from_checkpoint(
            source,
            device=device,
            dtype=dtype,
            quantize=quantize,
            **({"temperature": 0.0} if greedy else {}),
        )
    if model_type == "moshi":
        return MoshiPipeline.from_checkpoint(
            source, device=device, dtype=dtype, quantize=quantize, **sampling
        )
    task, command = MODEL_TASKS[model_type]
    raise ValueError(
        f"{source} is a {model_type!r} checkpoint ({task}); duplex serve serves dialogue (moshi), "
        f"speech recognition (stt) and text-to-speech (tts) models; use `{command}` for it"
    )
