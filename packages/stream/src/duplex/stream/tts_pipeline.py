"""The frame pipeline of a text-to-speech (TTS) server: independent speech streams as rows of one
:class:`~duplex.lm.synthesizer.SpeechBatch` (docs/architecture.md §5.3, §6.3).

A TTS stream has no audio coming in: its connection pushes a "tick" (a frame of silence) into
its slot for each step it wants, one more after every reply it has sent, so each stream runs as
fast as the engine and its own reader allow. Text arrives from the event loop while the engine
steps in its thread, so it is queued per row and handed to the row's state machine at the next
step. A row starts on its first step after a reset, with the conditions its connection gave
(:meth:`TtsPipeline.open_row`).

Each reply's ``extra`` is a :class:`TtsStep`: the step's audio (None before the delay has passed),
the words whose times became known, and whether the row has finished speaking. A row whose next
words have not come yet is not stepped (``waiting``), so its speech does not depend on how fast
its text arrives; its connection sends the tick again when more text comes.
"""

from __future__ import annotations

import threading
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from duplex.codec.interfaces import StepOutput
from duplex.codec.kernels import Numerics
from duplex.codec.kernels.weight_formats import WeightFormat
from duplex.lm.conditioners import Attributes
from duplex.lm.synthesizer import SpeechBatch, Synthesizer
from duplex.lm.words import Word
from duplex.stream import kyutai
from duplex.stream.slots import SamplingParams


@dataclass
class TtsStep:
    pcm: np.ndarray | None
    words: list[Word] = field(default_factory=list)
    finished: bool = False
    waiting: bool = False  # not stepped: the row needs more text first


@dataclass
class _Row:
    conditions: Attributes
    seed: int | None
    max_steps: int
    started: bool = False
    texts: list[str | None] = field(default_factory=list)  # None: the end of the text
    words_told: int = 0
    steps: int = 0


class TtsPipeline:
    kind = "tts"
    endpoints = {"/api/tts_streaming": kyutai.tts_streaming}  # what the server exposes for this pipeline

    def __init__(self, synth: Synthesizer, cfg: float = 2.0, temperature: float = 0.6) -> None:
        self.synth = synth
        self.cfg, self.temperature = cfg, temperature
        self.sample_rate = synth.sample_rate
        self.frame_rate = synth.frame_rate
        self.frame_size = int(synth.mimi.frame_size)
        self._contexts: ExitStack | None = None
        self._batch: SpeechBatch | None = None
        self._rows: dict[int, _Row] = {}
        self._lock = threading.Lock()  # guards _rows' text queues (event loop vs engine thread)

    @classmethod
    def from_checkpoint(
        cls,
        source: str | Path,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
        voice_dirs: tuple[Path, ...] = (),
        quantize: WeightFormat | None = None,
        numerics: Numerics = "fast",
        use_sampling: bool | None = None,
        **options,
    ) -> TtsPipeline:
        """A TTS checkpoint's pipeline; ``use_sampling=False`` decodes greedily (temperature 0);
        ``options``: ``cfg``, ``temperature``."""
        synth = Synthesizer.from_checkpoint(
            source, device=device, dtype=dtype, voice_dirs=voice_dirs, quantize=quantize, numerics=numerics
        )
        if use_sampling is False:
            options["temperature"] = 0.0
        return cls(synth, **options)

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self, batch_size: int) -> None:
        if self._contexts is not None:
            raise RuntimeError("the pipeline is already streaming; stop() it first")
        contexts = ExitStack()
        self._batch = contexts.enter_context(self.synth.batch(batch_size, self.cfg, self.temperature))
        self._contexts = contexts
        self._default = self.synth.conditions(self.synth.default_voices(), self.cfg)

    def stop(self) -> None:
        if self._contexts is not None:
            self._contexts.close()
            self._contexts, self._batch = None, None

    def reset(self, row: int, params: SamplingParams) -> None:
        with self._lock:
            current = self._rows.get(row)
            if current is None:  # a warm-up, or a connection that has not opened its row yet
                current = self._rows[row] = _Row(self._default, params.seed, max_steps=10**9)
            current.started = False

    # -- rows (from the event loop) -------------------------------------------------------------
    def open_row(self, row: int, conditions: Attributes, seed: int | None, max_steps: int) -> None:
        """What ``row``'s next stream speaks with; call it before the stream's first tick."""
        with self._lock:
            self._rows[row] = _Row(conditions, seed, max_steps)

    def add_text(self, row: int, text: str) -> None:
        with self._lock:
            self._rows[row].texts.append(text)

    def close_text(self, row: int) -> None:
        with self._lock:
            self._rows[row].texts.append(None)

    def has_queued_text(self, row: int) -> bool:
        """Whether text came for ``row`` that its next step has still to take."""
        with self._lock:
            return bool(self._rows[row].texts)

    # -- stepping (the engine thread) -----------------------------------------------------------
    def step(self, pcm: np.ndarray, active: np.ndarray) -> StepOutput:
        batch = self._batch
        assert batch is not None, "start() the pipeline first"
        rows = [int(row) for row in np.flatnonzero(active)]
        for row in rows:
            self._take_text(batch, row)
        waiting = [row for row in rows if batch.needs_text(row)]
        stepping = [row for row in rows if row not in waiting]
        out = batch.step(stepping) if stepping else {}
        n = len(active)
        extra = np.empty(n, dtype=object)
        for row in waiting:
            extra[row] = TtsStep(None, waiting=True)
        for row in stepping:
            state = self._rows[row]
            state.steps += 1
            finished = batch.done(row) or state.steps >= state.max_steps
            words = batch.words(row)
            known = len(words) if finished else max(len(words) - 1, 0)  # the last one's end is not known
            extra[row] = TtsStep(out.get(row), words[state.words_told : known], finished)
            state.words_told = max(state.words_told, known)
        return StepOutput(np.zeros((n, self.frame_size), np.float32), active.copy(), [None] * n, None, extra)

    def _take_text(self, batch: SpeechBatch, row: int) -> None:
        with self._lock:
            state = self._rows[row]
            texts, state.texts = state.texts, []
            start = not state.started
            state.started = True
        if start:
            batch.start_row(row, state.conditions, state.seed)
        for text in texts:
            if text is None:
                batch.close_text(row)
            elif batch.states[row].open:
                batch.add_text(row, text)
