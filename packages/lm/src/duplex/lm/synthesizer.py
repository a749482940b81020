"""Text-to-speech with Kyutai's TTS models (docs/architecture.md §5.3).

::

    synth = Synthesizer.from_checkpoint("kyutai/tts-1.6b-en_fr", voice_dirs=["voices/"])
    speech = synth.generate(["Hello there.", "Hi! <break time=\\"1s\\"/> How are you?"],
                            voices=[["alice", "bob"]], cfg=2.0, temperature=0.6, seed=1)[0]
    speech.audio, speech.words                       # 24 kHz float32, words with their times

    with synth.stream(voices=["alice"], seed=1) as session:   # text that arrives word by word
        session.add_text("Hello")
        pcm = session.step()                                 # one 80 ms frame of audio, or None
        session.add_text("there.")
        session.close()                                      # no more text: it finishes

The LM reads the text ``audio_delay`` seconds ahead of the audio it generates: a word is fed
when the model asks for it (see :mod:`duplex.lm.tts_machine`), and its audio comes out that many
steps later. The first steps (before any audio is due) skip the depformer, and each audio
codebook stays silent (the "zero" token) until its own delay has passed. The audio starts two
frames after the delay (the codec's first frames are a click), so a word said at text step ``s``
sounds at ``(s - 2) / 12.5`` seconds. Generation ends a few steps after the last word.

Guidance: models trained with distilled guidance (the ``cfg`` table, as tts-1.6b) take the
strength as a condition (1.0 to 4.0 by 0.5); others run classifier-free guidance by batch
doubling, the null rows without voice and without text.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from duplex.codec.interfaces import AudioCodec
from duplex.codec.kernels import Numerics
from duplex.codec.kernels.weight_formats import WeightFormat
from duplex.lm.conditioners import Attributes, LUTConditioner
from duplex.lm.config import check_model_type
from duplex.lm.generate import LMGen
from duplex.lm.model import LMModel
from duplex.lm.tokenizer import TextTokenizer
from duplex.lm.tts_machine import ZERO, State, TTSMachine
from duplex.lm.tts_script import Entry, parse_turns, script_entries
from duplex.lm.voices import DEFAULT_MAX_SPEAKERS, find_voice, load_voice, voice_condition
from duplex.lm.words import Word

CLICK_FRAMES = 2  # decoded frames dropped at the start of the audio
FINAL_PADDING = 4  # steps generated past the last word's audio delay
MAX_STEPS = 30_000


@dataclass
class Speech:
    audio: np.ndarray  # [samples] float32 in [-1, 1]
    sample_rate: int
    words: list[Word]


@dataclass
class Generation:
    """The raw result of :meth:`Synthesizer.run`: the generated frames ``[B, 1 + dep_q, 1]`` of every
    step (un-delayed, as LMGen returns them), and per row its end step and ``(word, step)`` pairs."""

    frames: list[torch.Tensor]
    end_steps: list[int | None]
    transcripts: list[list[tuple[str, int]]]


class Synthesizer:
    def __init__(
        self,
        mimi: AudioCodec,
        lm: LMModel,
        tokenizer: TextTokenizer,
        voice_dirs: Sequence[str | Path] = (),
        initial_padding: int = 2,
        max_padding: int = 8,
    ) -> None:
        config = lm.config
        check_model_type(config, "tts")
        self.mimi, self.lm, self.tokenizer = mimi, lm, tokenizer
        self.voice_dirs = [Path(d) for d in voice_dirs]
        self.sample_rate = int(mimi.sample_rate)
        self.frame_rate = float(mimi.frame_rate)
        tts = config.tts_config
        self.delay_steps = int(tts.get("audio_delay", 0.0) * self.frame_rate)
        self.max_speakers = int(tts.get("max_speakers", DEFAULT_MAX_SPEAKERS))
        self.machine = TTSMachine(
            card=config.text_card + 1,
            second_stream_ahead=int(tts.get("second_stream_ahead", 0)),
            max_padding=max_padding,
            initial_padding=initial_padding,
        )
        conditioners = lm.condition_provider.conditioners if lm.condition_provider is not None else {}
        self.voice_dim = conditioners["speaker_wavs"].dim if "speaker_wavs" in conditioners else None
        self.has_control = "control" in conditioners
        cfg_table = conditioners["cfg"] if "cfg" in conditioners else None
        self.cfg_values: list[float] | None = None  # distilled guidance: the strengths it was trained on
        if isinstance(cfg_table, LUTConditioner) and cfg_table.possible_values is not None:
            self.cfg_values = [float(v) for v in cfg_table.possible_values]

    @classmethod
    def from_checkpoint(
        cls,
        source: str | Path,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
        numerics: Numerics = "fast",
        voice_dirs: Sequence[str | Path] = (),
        quantize: WeightFormat | None = None,
    ) -> Synthesizer:
        """Load a TTS checkpoint; voices are looked up in ``voice_dirs`` and its ``voices/`` folder.

        ``quantize`` (``"bf16"`` or ``"int8"``) stores the LM's matmul weights in low precision.
        """
        from duplex.lm.checkpoint import load_models

        mimi, lm, tokenizer, bundle = load_models(source, "tts", device, dtype, numerics, quantize=quantize)
        return cls(mimi, lm, tokenizer, [*voice_dirs, bundle.lm_weights.parent / "voices"])

    # -- inputs ---------------------------------------------------------------------------------
    @property
    def multi_speaker(self) -> bool:
        return self.voice_dim is not None

    def entries(self, text: str | Sequence[str], padding_between: int = 1) -> list[Entry]:
        """The word entries of a text (``[S1]``/``[S2]`` tags make turns) or of a list of turns."""
        turns = parse_turns(text) if isinstance(text, str) else list(text)
        entries = script_entries(turns, self.tokenizer, self.frame_rate, self.multi_speaker, padding_between)
        if not any(entry.tokens for entry in entries):
            raise ValueError("the text has no words to say")
        return entries

    def conditions(self, voices: Sequence[str | Path | torch.Tensor], cfg: float) -> Attributes:
        """The conditions of one row: its voices (names, files or embeddings ``[frames, dim]``) and,
        for a distilled model, the guidance strength."""
        attributes: dict = {}
        if self.voice_dim is not None:
            embeddings = [
                v
                if isinstance(v, torch.Tensor)
                else load_voice(find_voice(v, self.lm.config, self.voice_dirs), self.voice_dim)
                for v in voices
            ]
            attributes["speaker_wavs"] = voice_condition(embeddings, self.max_speakers)
        elif voices:
            raise ValueError("this model takes no voice")
        if self.has_control:
            attributes["control"] = "ok"
        if self.cfg_values is not None:
            if cfg not in self.cfg_values:
                allowed = ", ".join(f"{v:.1f}" for v in self.cfg_values)
                raise ValueError(f"cfg={cfg}: this model was trained for the strengths {allowed}")
            attributes["cfg"] = f"{cfg:.1f}"
        return attributes

    # -- generation -----------------------------------------------------------------------------
    def generate(
        self,
        texts: Sequence[str | Sequence[str]],
        voices: Sequence[Sequence[str | Path | torch.Tensor]],
        cfg: float = 2.0,
        temperature: float = 0.6,
        seed: int | None = None,
        padding_between: int = 1,
    ) -> list[Speech]:
        """Speak each text (row ``i`` in ``voices[i]``, or ``voices[0]`` for every row)."""
        entries = [self.entries(text, padding_between) for text in texts]
        if len(voices) == 1:
            voices = list(voices) * len(texts)
        if len(voices) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(voices)} voice lists")
        conditions = [self.conditions(v, cfg) for v in voices]
        result = self.run(entries, conditions, cfg=cfg, temperature=temperature, seed=seed)
        return self.render(result)

    def _lm_gen(self, conditions: Sequence[Attributes], cfg: float, temperature: float) -> LMGen:
        _check_sampling(cfg, temperature)
        real_cfg = self.cfg_values is None and cfg != 1.0
        return LMGen(
            self.lm,
            use_sampling=temperature > 0,
            temp=temperature,
            temp_text=temperature,
            conditions=list(conditions),
            cfg_coef=cfg if real_cfg else 1.0,
            cfg_is_no_text=real_cfg,
        )

    @torch.no_grad()
    def run(
        self,
        entries: Sequence[Sequence[Entry]],
        conditions: Sequence[Attributes],
        cfg: float = 2.0,
        temperature: float = 0.6,
        seed: int | None = None,
        max_steps: int = MAX_STEPS,
    ) -> Generation:
        """Generate the frames of a batch of entry lists (the step loop, without decoding)."""
        with self.batch(len(conditions), cfg, temperature, conditions) as batch:
            for row, row_entries in enumerate(entries):
                batch.start_row(
                    row, conditions[row], None if seed is None else seed + row, row_entries, open=False
                )
            rows = list(range(len(entries)))
            frames = []
            for _ in range(max_steps):
                if all(batch.done(row) for row in rows):
                    break
                frame = batch.advance(rows)
                if frame is not None:
                    frames.append(frame)
            states = [batch.states[row] for row in rows]
        return Generation(frames, [s.end_step for s in states], [list(s.transcript) for s in states])

    @contextmanager
    def batch(
        self,
        size: int,
        cfg: float = 2.0,
        temperature: float = 0.6,
        conditions: Sequence[Attributes] | None = None,
    ) -> Iterator[SpeechBatch]:
        """``size`` independent speech streams stepped together (see :class:`SpeechBatch`);
        ``conditions``: every row's initial conditions (default: the first known voice)."""
        if conditions is None:
            conditions = [self.conditions(self.default_voices(), cfg)] * size
        gen = self._lm_gen(conditions, cfg, temperature)
        batch = SpeechBatch(self, gen, size)
        with gen.streaming(size), self.mimi.streaming(size):
            yield batch

    def default_voices(self) -> list[Path]:
        """The first voice file found in the voice folders ([] for a model without voices)."""
        if self.voice_dim is None:
            return []
        for directory in self.voice_dirs:
            found = sorted(directory.glob("*.safetensors"))
            if found:
                return [found[0]]
        raise ValueError("this model speaks in a given voice: pass one (a .safetensors voice file or a name)")

    @torch.no_grad()
    def render(self, result: Generation) -> list[Speech]:
        """Decode a generation's audio frames and time its words."""
        audio_frames = result.frames[self.delay_steps :]
        batch = result.frames[0].shape[0] if result.frames else 0
        decoded = []
        with self.mimi.streaming(batch):
            for frame in audio_frames:
                decoded.append(self.mimi.decode(frame[:, 1:]).clamp(-1, 1)[:, 0].cpu().numpy())
        decoded = decoded[CLICK_FRAMES:]
        speeches = []
        for row in range(batch):
            end = result.end_steps[row]
            chunks = [pcm[row] for pcm in (decoded if end is None else decoded[:end])]
            audio = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
            words = self._timed_words(result.transcripts[row], len(audio) / self.sample_rate)
            speeches.append(Speech(audio.astype(np.float32, copy=False), self.sample_rate, words))
        return speeches

    def _timed_words(self, transcript: list[tuple[str, int]], duration: float) -> list[Word]:
        starts = [max(0.0, (step - CLICK_FRAMES) / self.frame_rate) for _, step in transcript]
        ends = [*starts[1:], duration][: len(starts)]
        return [
            Word(text, start, max(start, end))
            for (text, _), start, end in zip(transcript, starts, ends, strict=True)
        ]

    # -- streamed text --------------------------------------------------------------------------
    @contextmanager
    def stream(
        self,
        voices: Sequence[str | Path | torch.Tensor] = (),
        cfg: float = 2.0,
        temperature: float = 0.6,
        seed: int | None = None,
        padding_between: int = 1,
    ) -> Iterator[TextStream]:
        """One voice session whose text arrives word by word (see :class:`TextStream`)."""
        conditions = self.conditions(voices, cfg)
        with self.batch(1, cfg, temperature, [conditions]) as batch:
            batch.start_row(0, conditions, seed, padding_between=padding_between)
            yield TextStream(batch, 0)


class SpeechBatch:
    """Rows of independent speech streams, stepped together (the TTS server's engine).

    A row starts with :meth:`start_row` (its conditions, seed and first entries), takes text as it
    comes (:meth:`add_text`, :meth:`close_text`), and :meth:`step` advances the chosen rows by one
    step each, returning the 80 ms of audio each row has ready. Rows do not wait for one another:
    each counts its own steps, so a row's speech does not depend on its neighbours.
    """

    def __init__(self, synth: Synthesizer, gen: LMGen, size: int) -> None:
        self.synth, self.gen, self.size = synth, gen, size
        lm = synth.lm
        self.states: list[State | None] = [None] * size
        self.offsets = [0] * size  # steps taken by each row since its start
        self.frames_out = [0] * size  # frames each row has had out of the LM
        self.padding_between = [1] * size
        self.first_turn = [True] * size
        self.stepping: list[int] = []  # the rows of the step under way
        self._executing: list[int] | None = None
        self.codebook_delays = torch.tensor(lm.delays[1 : 1 + lm.dep_q], device=lm.device)
        gen.on_text = self._feed_text
        gen.on_audio = self._silence_early_codebooks

    # -- rows -----------------------------------------------------------------------------------
    def start_row(
        self,
        row: int,
        conditions: Attributes,
        seed: int | None = None,
        entries: Sequence[Entry] = (),
        open: bool = True,
        padding_between: int = 1,
    ) -> None:
        """(Re)start ``row`` with its conditions and seed; ``open``: more text will come."""
        self.gen.set_conditions(row, conditions)
        self.gen.set_seed(row, seed)
        chosen = torch.zeros(self.size, dtype=torch.bool)
        chosen[row] = True
        self.gen.reset_streaming(chosen)
        self.synth.mimi.reset_streaming(chosen.to(self.synth.lm.device))
        self.states[row] = self.synth.machine.new_state(entries, open=open)
        self.offsets[row] = self.frames_out[row] = 0
        self.padding_between[row], self.first_turn[row] = padding_between, True

    def add_text(self, row: int, text: str) -> None:
        state = self.states[row]
        if state is None or not state.open:
            raise RuntimeError("the stream is closed: no more text can be added")
        entries = script_entries(
            parse_turns(text),
            self.synth.tokenizer,
            self.synth.frame_rate,
            self.synth.multi_speaker and self.first_turn[row],
            self.padding_between[row],
        )
        if entries:
            self.first_turn[row] = False
        state.add(entries)

    def close_text(self, row: int) -> None:
        if self.states[row] is not None:
            self.states[row].open = False

    def needs_text(self, row: int) -> bool:
        """Whether ``row`` should wait for more text before its next step (see
        :meth:`~duplex.lm.tts_machine.State.needs_text`)."""
        state = self.states[row]
        return state is not None and state.needs_text(self.synth.machine.second_stream_ahead)

    def done(self, row: int) -> bool:
        state = self.states[row]
        if state is None or state.end_step is None:
            return False
        return self.offsets[row] >= state.end_step + self.synth.delay_steps + FINAL_PADDING

    def words(self, row: int) -> list[Word]:
        """The row's words so far, timed in its audio (the last one ends with the audio so far)."""
        audio_frames = max(self.frames_out[row] - self.synth.delay_steps - CLICK_FRAMES, 0)
        return self.synth._timed_words(self.states[row].transcript, audio_frames / self.synth.frame_rate)

    # -- stepping -------------------------------------------------------------------------------
    def advance(self, rows: list[int]) -> torch.Tensor | None:
        """One LM step of ``rows``; returns the LM's un-delayed frame ``[B, 1 + dep_q, 1]`` (None
        while the acoustic delays fill; a row's own frames are ``-2`` until its delays have passed)."""
        lm = self.synth.lm
        if rows != self._executing:
            mask = torch.zeros(self.size, dtype=torch.bool)
            mask[rows] = True
            self.gen.set_exec_mask(mask)
            self._executing = rows
        user = torch.zeros(self.size, lm.config.num_user_codebooks, 1, dtype=torch.long, device=lm.device)
        skip = None
        if all(self.offsets[row] < self.synth.delay_steps for row in rows):  # no audio due: no depformer
            skip = torch.full((self.size, lm.dep_q, 1), ZERO, dtype=torch.long, device=lm.device)
        self.stepping = rows
        frame = self.gen.step(user, depformer_tokens=skip)
        for row in rows:
            self.offsets[row] += 1
        return frame

    @torch.no_grad()
    def step(self, rows: list[int]) -> dict[int, np.ndarray]:
        """Advance ``rows`` one step; the next 80 ms of audio of each row that has some."""
        frame = self.advance(rows)
        if frame is None:
            return {}
        sounding = []
        for row in rows:
            if int(frame[row, 0, 0]) == -2:  # this row's delays are still filling
                continue
            index = self.frames_out[row]
            self.frames_out[row] += 1
            if index >= self.synth.delay_steps:  # frame ``index`` holds audio from here on
                sounding.append((row, index - self.synth.delay_steps - CLICK_FRAMES))
        if not sounding:
            return {}
        mimi = self.synth.mimi
        mask = torch.zeros(self.size, dtype=torch.bool, device=self.synth.lm.device)
        mask[[row for row, _ in sounding]] = True
        mimi.set_exec_mask(mask)
        pcm = mimi.decode(frame[:, 1:].clamp(min=0)).clamp(-1, 1)[:, 0].cpu().numpy()
        out = {}
        for row, audio_frame in sounding:  # the first frames are a click; past the end, silence
            end = self.states[row].end_step
            if audio_frame >= 0 and (end is None or audio_frame < end):
                out[row] = pcm[row]
        return out

    def _feed_text(self, predicted: torch.Tensor) -> torch.Tensor:
        tokens = predicted.tolist()
        for row in self.stepping:
            tokens[row] = self.synth.machine.next_token(self.offsets[row], self.states[row], tokens[row])
        return torch.tensor(tokens, dtype=predicted.dtype, device=predicted.device)

    def _silence_early_codebooks(self, audio: torch.Tensor) -> torch.Tensor:
        offsets = torch.tensor(self.offsets, device=audio.device)
        early = offsets[:, None] < self.codebook_delays[None] + self.synth.delay_steps  # [B, dep_q]
        return audio.masked_fill(early, ZERO)


class TextStream:
    """A voice session fed word by word: :meth:`add_text` as the text comes, :meth:`step` for each
    80 ms of audio (None until audio is due), :meth:`close` when the text is complete; ``words``
    holds the timed words spoken so far and ``finished`` turns true after the last one."""

    def __init__(self, batch: SpeechBatch, row: int) -> None:
        self.batch, self.row = batch, row

    def add_text(self, text: str) -> None:
        self.batch.add_text(self.row, text)

    def close(self) -> None:
        self.batch.close_text(self.row)

    @property
    def finished(self) -> bool:
        return self.batch.done(self.row)

    @property
    def words(self) -> list[Word]:
        return self.batch.words(self.row)

    def step(self) -> np.ndarray | None:
        """Advance one step; the next 80 ms of audio once the delay has passed (None before, and
        None without advancing while the words it must read ahead have not come yet)."""
        if self.finished or self.batch.needs_text(self.row):
            return None
        return self.batch.step([self.row]).get(self.row)


def _check_sampling(cfg: float, temperature: float) -> None:
    if not 0.0 <= temperature <= 5.0:
        raise ValueError(f"temperature must be in [0, 5], got {temperature}")
    if not 0.0 < cfg <= 10.0:
        raise ValueError(f"cfg must be in (0, 10], got {cfg}")
