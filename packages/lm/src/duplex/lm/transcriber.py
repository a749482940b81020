"""Streaming speech recognition with Kyutai's STT models (docs/architecture.md §5.2).

::

    transcriber = Transcriber.from_checkpoint("kyutai/stt-1b-en_fr")
    with transcriber.streaming(batch_size=4):
        transcriber.start(0)                         # a stream joins row 0
        transcriber.push(0, pcm)                     # 24 kHz mono float32, any length
        for update in transcriber.process():         # every step the buffered audio allows
            print(update.row, update.words, update.pauses)
        transcriber.finish(0)                        # flush: the last words come out
        ...

    words = transcriber.transcribe([wav_a, wav_b])   # whole files, batched

Each row is an independent stream: rows start, push, finish and restart whenever they like, and
one batched step advances every row that has a full 80 ms frame buffered (the others are frozen
by the streaming exec mask, so a row's words never depend on its neighbours).

A stream is fed ``audio_silence_prefix_seconds`` of silence first (as the model was trained),
then its audio, and at :meth:`Transcriber.finish` enough silence for the text, which lags the
audio by ``audio_delay_seconds``, to catch up (the delay plus one second). Like the reference,
the model never sees the first 80 ms frame it is given (its first step reads the initial token);
with a silence prefix that frame is silence. Words come out once their segment closes (the next
word starts, or the stream ends); the pause probabilities of the semantic VAD heads come with every
step: ``pauses[:, 2]`` above 0.5 is the models' "the speaker has finished".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from duplex.codec.interfaces import AudioCodec
from duplex.codec.kernels import Numerics
from duplex.codec.kernels.weight_formats import WeightFormat
from duplex.lm.config import check_model_type
from duplex.lm.generate import LMGen
from duplex.lm.model import LMModel
from duplex.lm.tokenizer import TextTokenizer
from duplex.lm.words import Word, WordReader

FLUSH_MARGIN_SECONDS = 1.0


@dataclass
class RowUpdate:
    """What one call of :meth:`Transcriber.process` produced for one row."""

    row: int
    words: list[Word] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)  # this call's text tokens, one per step
    pieces: str = ""  # their text, for live display
    pauses: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32))
    finished: bool = False  # the stream ended: its last words are in ``words``


@dataclass
class _Row:
    reader: WordReader
    pending: list[np.ndarray] = field(default_factory=list)
    buffered: int = 0
    finishing: bool = False


class Transcriber:
    """Mimi + an STT LM + its tokenizer, batched over independent rows."""

    def __init__(
        self,
        mimi: AudioCodec,
        lm: LMModel,
        tokenizer: TextTokenizer,
        audio_delay: float | None = None,
        silence_prefix: float | None = None,
    ) -> None:
        config = lm.config
        check_model_type(config, "stt")
        if mimi.num_codebooks < config.num_user_codebooks:
            raise ValueError(
                f"the LM reads {config.num_user_codebooks} codebooks but Mimi makes {mimi.num_codebooks}"
            )
        self.mimi = mimi
        self.lm = lm
        self.tokenizer = tokenizer
        stt = config.stt_config
        self.audio_delay = float(stt.get("audio_delay_seconds", 0.0) if audio_delay is None else audio_delay)
        prefix = stt.get("audio_silence_prefix_seconds", 0.0) if silence_prefix is None else silence_prefix
        self.sample_rate = int(mimi.sample_rate)
        self.frame_rate = float(mimi.frame_rate)
        self.frame_size = int(mimi.frame_size)
        self.prefix_frames = math.ceil(float(prefix) * self.frame_rate)
        self.flush_frames = math.ceil((self.audio_delay + FLUSH_MARGIN_SECONDS) * self.frame_rate)
        self.gen = LMGen(lm, use_sampling=False)
        self._contexts: ExitStack | None = None
        self._rows: dict[int, _Row] = {}
        self._batch_size = 0
        self._executing: list[int] | None = None  # the rows of the current exec masks

    @classmethod
    def from_checkpoint(
        cls,
        source: str | Path,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
        numerics: Numerics = "fast",
        quantize: WeightFormat | None = None,
    ) -> Transcriber:
        """Load an STT checkpoint (directory or Hugging Face repo, see ``load_checkpoint``).

        ``quantize`` (``"bf16"`` or ``"int8"``) stores the LM's matmul weights in low precision.
        """
        from duplex.lm.checkpoint import load_models

        mimi, lm, tokenizer, _ = load_models(source, "stt", device, dtype, numerics, quantize=quantize)
        return cls(mimi, lm, tokenizer)

    def steps_for(self, samples: int) -> int:
        """The steps a recording of ``samples`` takes (silence prefix and flush included)."""
        return self.prefix_frames + math.ceil(samples / self.frame_size) + self.flush_frames

    @property
    def offset(self) -> float:
        """Seconds the text stream lags the audio pushed (the silence prefix and the model's delay)."""
        return self.prefix_frames / self.frame_rate + self.audio_delay

    # -- lifecycle ------------------------------------------------------------------------------
    @contextmanager
    def streaming(self, batch_size: int = 1) -> Iterator[Transcriber]:
        contexts = ExitStack()
        with contexts:
            contexts.enter_context(self.mimi.streaming(batch_size))
            contexts.enter_context(self.gen.streaming(batch_size))
            self._contexts, self._batch_size, self._rows = contexts, batch_size, {}
            self._executing = None
            try:
                yield self
            finally:
                self._contexts, self._rows = None, {}

    def _check_row(self, row: int) -> None:
        if self._contexts is None:
            raise RuntimeError("the transcriber is not streaming; use `with transcriber.streaming(n):`")
        if not 0 <= row < self._batch_size:
            raise IndexError(f"row {row} out of range for a batch of {self._batch_size}")

    def start(self, row: int) -> None:
        """(Re)start a stream in ``row``: its Mimi and LM state restart, its silence prefix is queued."""
        self.reset_row(row)
        state = _Row(WordReader(self.tokenizer, self.frame_rate, self.offset))
        self._rows[row] = state
        self._queue(state, np.zeros(self.prefix_frames * self.frame_size, dtype=np.float32))

    def push(self, row: int, pcm: np.ndarray | torch.Tensor) -> None:
        """Append mono audio at 24 kHz (float, any length) to ``row``'s stream."""
        self._check_row(row)
        state = self._rows.get(row)
        if state is None or state.finishing:
            raise RuntimeError(f"row {row} has no open stream: call start({row}) first")
        audio = pcm.detach().cpu().numpy() if isinstance(pcm, torch.Tensor) else np.asarray(pcm)
        if audio.ndim != 1:
            raise ValueError(f"push takes mono audio [samples], got shape {list(audio.shape)}")
        self._queue(state, audio.astype(np.float32, copy=False))

    def finish(self, row: int) -> None:
        """End ``row``'s stream: the last partial frame is padded, the flush silence queued; the row's
        final update (``finished``) comes from :meth:`process`."""
        self._check_row(row)
        state = self._rows.get(row)
        if state is None or state.finishing:
            raise RuntimeError(f"row {row} has no open stream: call start({row}) first")
        partial = state.buffered % self.frame_size
        pad = (self.frame_size - partial) % self.frame_size
        self._queue(state, np.zeros(pad + self.flush_frames * self.frame_size, dtype=np.float32))
        state.finishing = True

    def reset_row(self, row: int) -> None:
        """Restart ``row``'s Mimi and LM state (the other rows go on)."""
        self._check_row(row)
        mask = torch.zeros(self._batch_size, dtype=torch.bool, device=self.lm.device)
        mask[row] = True
        self.mimi.reset_streaming(mask)
        self.gen.reset_streaming(mask)

    @staticmethod
    def _queue(state: _Row, audio: np.ndarray) -> None:
        if audio.size:
            state.pending.append(audio)
            state.buffered += audio.size

    def _take_frame(self, state: _Row) -> np.ndarray:
        audio = np.concatenate(state.pending) if len(state.pending) > 1 else state.pending[0]
        frame, rest = audio[: self.frame_size], audio[self.frame_size :]
        state.pending = [rest] if rest.size else []
        state.buffered -= self.frame_size
        return frame

    # -- stepping -------------------------------------------------------------------------------
    @torch.no_grad()
    def process(self, max_steps: int | None = None) -> list[RowUpdate]:
        """Run every step the buffered audio allows (at most ``max_steps``); one update per row that
        moved."""
        updates: dict[int, RowUpdate] = {}
        pauses: dict[int, list[np.ndarray]] = {}
        steps = 0
        while max_steps is None or steps < max_steps:
            steps += 1
            ready = [row for row, state in self._rows.items() if state.buffered >= self.frame_size]
            if not ready:
                break
            batch = np.zeros((self._batch_size, self.frame_size), dtype=np.float32)
            for row in ready:
                batch[row] = self._take_frame(self._rows[row])
            tokens, probs = self.step_frames(batch, ready)
            for row in ready:
                state = self._rows[row]
                update = updates.setdefault(row, RowUpdate(row))
                token = int(tokens[row])
                update.words += state.reader.push(token)
                update.tokens.append(token)
                update.pieces += self.tokenizer.token_text(token)
                pauses.setdefault(row, []).append(probs[row])
        for row, update in updates.items():
            update.pauses = np.stack(pauses[row])
            state = self._rows[row]
            if state.finishing and state.buffered < self.frame_size:
                update.words += state.reader.finish()
                update.finished = True
                del self._rows[row]
        return sorted(updates.values(), key=lambda u: u.row)

    @torch.no_grad()
    def step_frames(self, batch: np.ndarray, ready: list[int]) -> tuple[list[int], np.ndarray]:
        """One batched step of the rows ``ready`` over their frames ``batch [N, frame_size]`` (the
        other rows are frozen): every row's text token and pause probabilities ``[N, heads]``
        (meaningful for the ready rows). :meth:`process` is built on it; a serving engine calls it
        directly."""
        device = self.lm.device
        if ready != self._executing:  # walking the module trees costs more than a tiny step
            executing = torch.zeros(self._batch_size, dtype=torch.bool, device=device)
            executing[ready] = True
            self.mimi.set_exec_mask(executing)
            self.gen.set_exec_mask(executing)
            self._executing = ready
        wav = torch.from_numpy(batch).to(device)[:, None]
        codes = self.mimi.encode(wav)[:, : self.lm.config.num_user_codebooks]
        out = self.gen.step_with_extra_heads(codes)
        assert out is not None  # no delays in an STT model: every step has its token
        tokens, probs = out
        # class 0 of each head: "a pause of this length starts here"
        return tokens[:, 0, 0].tolist(), probs[:, :, 0].float().cpu().numpy()

    # -- whole files ----------------------------------------------------------------------------
    def transcribe(
        self,
        audios: Sequence[np.ndarray | torch.Tensor],
        batch_size: int = 8,
        on_step: Callable[[int], None] | None = None,
    ) -> list[list[Word]]:
        """Words of each mono 24 kHz recording, ``batch_size`` streams at a time; ``on_step(n)`` is
        called after each batched step with the number of rows it advanced."""
        results: list[list[Word]] = [[] for _ in audios]
        with self.streaming(min(batch_size, max(len(audios), 1))):
            queue = list(enumerate(audios))
            running: dict[int, int] = {}  # row -> index of the recording in it
            while queue or running:
                for row in range(self._batch_size):
                    if row not in running and queue:
                        index, audio = queue.pop(0)
                        self.start(row)
                        self.push(row, audio)
                        self.finish(row)
                        running[row] = index
                updates = self.process(max_steps=1)  # a finished row takes the next file at once
                if on_step is not None:
                    on_step(len(updates))
                for update in updates:
                    results[running[update.row]] += update.words
                    if update.finished:
                        del running[update.row]
        return results
