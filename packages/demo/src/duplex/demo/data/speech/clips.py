"""Speech clips: whole sentences in one voice, with varied prosody, over a noise floor.

Each clip draws a speaker (voice, base rate, base pitch, word gap) and then sentences, each with
its own small rate and pitch change and its own intonation width, until their speech lasts the
configured length; then a level, a noise floor and the pauses around it. Every draw of clip
``index`` comes from a generator seeded with ``(seed, index)``: a clip is the same whatever
other clips were made, in whatever order or process, so a dataset can be written in parallel.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from duplex.codec.audio import resample
from duplex.demo.data.speech.config import SpeechConfig
from duplex.demo.data.speech.espeak import Prosody, require_espeak, speak
from duplex.demo.data.speech.levels import active_dbfs, at_level
from duplex.demo.data.speech.noise import noise_floor
from duplex.demo.data.speech.voices import Voice

_SILENT = 2 / 2**15  # espeak-ng's 16-bit silence, with a margin


@dataclass(frozen=True)
class Utterance:
    text: str
    prosody: Prosody


@dataclass(frozen=True)
class Clip:
    audio: np.ndarray  # float32 [samples] at the config's rate
    sample_rate: int
    voice: Voice
    utterances: tuple[Utterance, ...]
    speech_dbfs: float
    noise_dbfs: float
    noise_colour: float
    speech_start: int  # the speech's first and end sample (index record: "speech_s", in seconds);
    # the rest of the clip is noise floor
    speech_end: int

    @property
    def text(self) -> str:
        return " ".join(u.text for u in self.utterances)

    def record(self) -> dict[str, Any]:
        """What the dataset index says about the clip, besides its path (JSON types)."""
        return {
            "duration": round(len(self.audio) / self.sample_rate, 6),
            "text": self.text,
            "voice": self.voice.name,
            "female": self.voice.female,
            "sentences": [{"text": u.text, **asdict(u.prosody)} for u in self.utterances],
            "speech_dbfs": round(self.speech_dbfs, 2),
            "noise_dbfs": round(self.noise_dbfs, 2),
            "noise_colour": round(self.noise_colour, 3),
            "speech_s": [round(i / self.sample_rate, 6) for i in (self.speech_start, self.speech_end)],
        }


def draw_uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(*bounds))


def draw_integer(rng: np.random.Generator, bounds: tuple[int, int]) -> int:
    return int(rng.integers(bounds[0], bounds[1] + 1))


def trim_silence(wav: np.ndarray) -> np.ndarray:
    """``wav`` without its silent edges (espeak-ng pads sentences with exact zeros)."""
    loud = np.flatnonzero(np.abs(wav) > _SILENT)
    return wav[loud[0] : loud[-1] + 1] if len(loud) else wav[:0]


class SpeechGenerator:
    """Makes clip ``index`` of seed ``seed`` from ``sentences`` and ``voices``, half of the clips in a
    female voice where both kinds are offered."""

    def __init__(self, sentences: Sequence[str], voices: Sequence[Voice], config: SpeechConfig | None = None):
        if not sentences or not voices:
            raise ValueError("a speech generator needs at least one sentence and one voice")
        self.sentences = tuple(sentences)
        self.config = config or SpeechConfig()
        kinds = ([v for v in voices if v.female], [v for v in voices if not v.female])
        self._by_kind = [kind for kind in kinds if kind]
        self._exe = require_espeak()

    def _speaker(self, rng: np.random.Generator) -> tuple[Voice, int, int, int]:
        group = self._by_kind[int(rng.integers(len(self._by_kind)))]
        voice = group[int(rng.integers(len(group)))]
        config = self.config
        return (
            voice,
            draw_integer(rng, config.rate_wpm),
            draw_integer(rng, config.pitch),
            draw_integer(rng, config.word_gap),
        )

    def _speech(
        self, rng: np.random.Generator, voice: Voice, rate_wpm: int, pitch: int, word_gap: int
    ) -> tuple[np.ndarray, tuple[Utterance, ...]]:
        """Sentences of one speaker, their silent edges trimmed, laid end to end with pauses, until
        they last ``config.seconds``; at the config's rate."""
        config = self.config
        pieces: list[np.ndarray] = []
        utterances: list[Utterance] = []
        espeak_rate = 0
        while not pieces or sum(map(len, pieces)) < config.seconds * espeak_rate:
            text = self.sentences[int(rng.integers(len(self.sentences)))]
            jitter = draw_uniform(rng, (-config.rate_jitter, config.rate_jitter))
            prosody = Prosody(
                rate_wpm=int(np.clip(round(rate_wpm * (1 + jitter)), 80, 450)),
                pitch=int(
                    np.clip(pitch + draw_integer(rng, (-config.pitch_jitter, config.pitch_jitter)), 0, 99)
                ),
                pitch_range=draw_integer(rng, config.pitch_range),
                word_gap=word_gap,
            )
            gap = draw_uniform(rng, config.sentence_gap_s)
            wav, espeak_rate = speak(text, voice.name, prosody, self._exe)
            wav = trim_silence(wav)
            if not len(wav):
                raise RuntimeError(f"espeak-ng wrote silence for {text!r} in voice {voice.name!r}")
            if pieces:
                pieces.append(np.zeros(round(gap * espeak_rate), dtype=np.float32))
            pieces.append(wav)
            utterances.append(Utterance(text, prosody))
        speech = resample(torch.from_numpy(np.concatenate(pieces)), espeak_rate, config.sample_rate)
        return speech.numpy(), tuple(utterances)

    def clip(self, seed: int, index: int) -> Clip:
        """Clip ``index`` of ``seed``: the speech at its level, over the noise floor, with pauses around."""
        config = self.config
        rng = np.random.default_rng([seed, index])
        voice, *speaker = self._speaker(rng)
        speech, utterances = self._speech(rng, voice, *speaker)
        speech = at_level(speech, draw_uniform(rng, config.speech_dbfs), config.sample_rate)
        noise_dbfs = draw_uniform(rng, config.noise_dbfs)
        colour = draw_uniform(rng, config.noise_colour)
        lead = round(draw_uniform(rng, config.lead_s) * config.sample_rate)
        tail = round(draw_uniform(rng, config.tail_s) * config.sample_rate)
        frames = -(-(lead + len(speech) + tail) // config.frame_samples)
        audio = noise_floor(frames * config.frame_samples, noise_dbfs, colour, rng, config.sample_rate)
        audio[lead : lead + len(speech)] += speech
        return Clip(
            audio=audio,
            sample_rate=config.sample_rate,
            voice=voice,
            utterances=utterances,
            speech_dbfs=active_dbfs(speech, config.sample_rate),
            noise_dbfs=noise_dbfs,
            noise_colour=colour,
            speech_start=lead,
            speech_end=lead + len(speech),
        )
