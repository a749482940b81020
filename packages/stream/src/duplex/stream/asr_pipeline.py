"""The frame pipeline of a speech recognition (STT) server: one batched Mimi + LM step per 80 ms
frame of every active row, as :class:`~duplex.lm.transcriber.Transcriber` steps (docs/architecture.md §5.2).

Each reply carries the row's text token and the pause probabilities of the step; turning tokens
into timed words is the connection's business (one :class:`~duplex.lm.words.WordReader` each).
No silence prefix is fed: a stream's words are timed from its first frame.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch
from duplex.codec.interfaces import StepOutput
from duplex.codec.kernels import Numerics
from duplex.codec.kernels.weight_formats import WeightFormat
from duplex.lm.transcriber import Transcriber
from duplex.stream import kyutai
from duplex.stream.slots import SamplingParams


class AsrPipeline:
    kind = "asr"
    endpoints = {"/api/asr-streaming": kyutai.asr_streaming}  # what the server exposes for this pipeline

    def __init__(self, transcriber: Transcriber) -> None:
        self.transcriber = transcriber
        self.sample_rate = transcriber.sample_rate
        self.frame_rate = transcriber.frame_rate
        self.frame_size = transcriber.frame_size
        self.tokenizer = transcriber.tokenizer
        self.audio_delay = transcriber.audio_delay
        self._contexts: ExitStack | None = None
        self._batch_size = 0

    @classmethod
    def from_checkpoint(
        cls,
        source: str | Path,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
        quantize: WeightFormat | None = None,
        numerics: Numerics = "fast",
        **sampling,
    ) -> AsrPipeline:
        """An STT checkpoint's pipeline (it decodes greedily: ``sampling`` is ignored)."""
        transcriber = Transcriber.from_checkpoint(
            source, device=device, dtype=dtype, numerics=numerics, quantize=quantize
        )
        return cls(transcriber)

    def start(self, batch_size: int) -> None:
        if self._contexts is not None:
            raise RuntimeError("the pipeline is already streaming; stop() it first")
        contexts = ExitStack()
        contexts.enter_context(self.transcriber.streaming(batch_size))
        self._contexts, self._batch_size = contexts, batch_size

    def stop(self) -> None:
        if self._contexts is not None:
            self._contexts.close()
            self._contexts = None

    def reset(self, row: int, params: SamplingParams) -> None:
        self.transcriber.reset_row(row)

    def step(self, pcm: np.ndarray, active: np.ndarray) -> StepOutput:
        n = self._batch_size
        if pcm.shape != (n, self.frame_size) or active.shape != (n,):
            raise ValueError(
                f"expected pcm [{n}, {self.frame_size}] and active [{n}], "
                f"got {list(pcm.shape)} and {list(active.shape)}"
            )
        rows = [int(row) for row in np.flatnonzero(active)]
        tokens, pauses = self.transcriber.step_frames(pcm.astype(np.float32, copy=False), rows)
        text: list[str | None] = [None] * n
        for row in rows:
            text[row] = self.tokenizer.token_text(tokens[row]) or None
        return StepOutput(
            np.zeros((n, self.frame_size), dtype=np.float32),
            active.copy(),
            text,
            np.asarray(tokens, dtype=np.int64)[:, None],
            pauses,
        )
