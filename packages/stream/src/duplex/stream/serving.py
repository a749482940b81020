"""The pipeline a checkpoint is served with, by its ``model_type`` (docs/architecture.md §6.3),
looked up in :data:`duplex.stream.registry.PIPELINES`: dialogue models (``moshi``) behind
``/api/chat``, speech recognition (``stt``) behind ``/api/asr-streaming``, text-to-speech
(``tts``) behind ``/api/tts_streaming``; a plugin adds a kind through the ``duplex.pipelines``
entry-point group. A kind without a pipeline (Hibiki) is refused with the command that runs it."""

from __future__ import annotations

from pathlib import Path

import torch
from duplex.codec.interfaces import Pipeline
from duplex.codec.kernels import Numerics
from duplex.codec.kernels.weight_formats import WeightFormat
from duplex.stream.registry import PIPELINES

DIALOGUE = "moshi"


def load_pipeline(
    source: str | Path | None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    quantize: WeightFormat | None = None,
    numerics: Numerics = "fast",
    **sampling,
) -> Pipeline:
    """The serving pipeline of a checkpoint (None: the bundled dialogue demo); ``quantize``
    (``"bf16"`` or ``"int8"``) stores the LM's matmul weights in low precision; ``numerics``
    "reference" gives the reference's tokens bit for bit; ``sampling`` overrides a dialogue
    model's ``lm_gen_config`` (``use_sampling=False``: greedy for every kind)."""
    from duplex.lm.checkpoint import load_checkpoint
    from duplex.lm.config import MODEL_TASKS

    model_type = DIALOGUE if source is None else load_checkpoint(source).config.model_type
    if model_type not in PIPELINES:
        task, command = MODEL_TASKS.get(model_type, (model_type, "duplex info"))
        served = ", ".join(PIPELINES.names())
        raise ValueError(
            f"{source} is a {model_type!r} checkpoint ({task}); duplex serve serves the model types "
            f"with a pipeline ({served}); use `{command}` for it"
        )
    pipeline_class = PIPELINES.get(model_type)
    return pipeline_class.from_checkpoint(
        source, device=device, dtype=dtype, quantize=quantize, numerics=numerics, **sampling
    )
