"""Scripted conversations: a user asks questions of the script, the model answers each one.

The model's channel (left) holds its answers, always the same recording of each answer; the
user's channel (right) holds the questions in a voice, rate, pitch and level drawn per
conversation, and sometimes a short backchannel while the model talks. Both channels carry a
noise floor. As in :mod:`duplex.demo.data.speech.clips`, everything about conversation ``index`` is
drawn from a generator seeded with ``(seed, index)``.

espeak-ng speaks whole sentences and gives no word times, so a sentence's words are placed in
proportion to how long each word lasts spoken alone (the model's answers) or to its length in
letters (the user's questions, which the text stream does not use).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numpy as np
import torch
from duplex.codec.audio import resample
from duplex.demo.data.conversations.config import ConversationConfig
from duplex.demo.data.conversations.script import BACKCHANNELS, SCRIPT, Exchange, words
from duplex.demo.data.speech.clips import draw_integer, draw_uniform, trim_silence
from duplex.demo.data.speech.espeak import Prosody, require_espeak, speak
from duplex.demo.data.speech.levels import at_level
from duplex.demo.data.speech.noise import noise_floor
from duplex.demo.data.speech.voices import Voice
from duplex.lm.data.format import MAIN_SPEAKER, USER_SPEAKER


@dataclass(frozen=True)
class Spoken:
    """A sentence at the config's rate, its silent edges trimmed, with its words' times (seconds
    from the first sample)."""

    audio: np.ndarray
    words: tuple[tuple[str, float, float], ...]


@dataclass
class Conversation:
    audio: np.ndarray  # float32 [samples, 2]: the model left, the user right
    sample_rate: int
    voice: Voice
    alignments: list[list[Any]]  # moshi-finetune word alignments
    # Per exchange: the script index and the question's and the answer's [start, end] in seconds.
    exchanges: list[dict[str, Any]] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        return {
            "duration": round(len(self.audio) / self.sample_rate, 6),
            "voice": self.voice.name,
            "exchanges": self.exchanges,
        }


class ConversationGenerator:
    """Makes conversation ``index`` of ``seed``, the user speaking in one of ``user_voices``."""

    def __init__(
        self,
        user_voices: Sequence[Voice],
        config: ConversationConfig | None = None,
        script: Sequence[Exchange] = SCRIPT,
    ) -> None:
        if not user_voices or not script:
            raise ValueError("conversations need at least one user voice and one scripted exchange")
        self.user_voices = tuple(user_voices)
        self.config = config or ConversationConfig()
        self.script = tuple(script)
        self._exe = require_espeak()
        self.answer = cache(self._answer)

    def _speak(self, text: str, voice: str, prosody: Prosody) -> np.ndarray:
        wav, rate = speak(text, voice, prosody, self._exe)
        wav = trim_silence(wav)
        if not len(wav):
            raise RuntimeError(f"espeak-ng wrote silence for {text!r} in voice {voice!r}")
        return resample(torch.from_numpy(wav), rate, self.config.sample_rate).numpy()

    def _answer(self, index: int) -> Spoken:
        """The model's one recording of answer ``index``, at the model's level, with word times."""
        c = self.config
        prosody = Prosody(rate_wpm=c.model_rate_wpm, pitch=c.model_pitch)
        audio = at_level(
            self._speak(self.script[index].answer, c.model_voice, prosody), c.model_dbfs, c.sample_rate
        )
        tokens = words(self.script[index].answer)
        weights = [len(self._speak(w, c.model_voice, prosody)) for w in tokens]
        return Spoken(audio, _spread(tokens, weights, len(audio) / c.sample_rate))

    def user_says(self, text: str, voice: Voice, prosody: Prosody, dbfs: float) -> Spoken:
        """``text`` in the user's voice and delivery, at ``dbfs``; words spread by length."""
        c = self.config
        audio = at_level(self._speak(text, voice.name, prosody), dbfs, c.sample_rate)
        tokens = words(text)
        return Spoken(audio, _spread(tokens, [len(w) + 1 for w in tokens], len(audio) / c.sample_rate))

    def conversation(self, seed: int, index: int, questions: Sequence[int] | None = None) -> Conversation:
        """Conversation ``index`` of ``seed``; ``questions`` (script indices) fixes what is asked,
        else 1 to ``config.exchanges`` questions are drawn."""
        c = self.config
        rate = c.sample_rate
        rng = np.random.default_rng([seed, index])
        voice = self.user_voices[int(rng.integers(len(self.user_voices)))]
        prosody = Prosody(
            rate_wpm=draw_integer(rng, c.user_rate_wpm),
            pitch=draw_integer(rng, c.user_pitch),
            pitch_range=draw_integer(rng, c.user_pitch_range),
        )
        dbfs = draw_uniform(rng, c.user_dbfs)
        if questions is None:
            count = draw_integer(rng, c.exchanges)
            questions = [int(q) for q in rng.choice(len(self.script), size=count, replace=False)]
        placed: list[tuple[int, float, Spoken, str]] = []  # (channel, start s, speech, speaker)
        exchanges = []
        t = draw_uniform(rng, c.lead_s)
        for number, q in enumerate(questions):
            if number:
                t += draw_uniform(rng, c.next_question_gap_s)
            asked = self.user_says(self.script[q].question, voice, prosody, dbfs)
            placed.append((1, t, asked, USER_SPEAKER))
            question_start, question_end = t, t + len(asked.audio) / rate
            t = max(question_end + draw_uniform(rng, c.answer_gap_s), t + 0.3)
            answer = self.answer(q)
            placed.append((0, t, answer, MAIN_SPEAKER))
            answer_end = t + len(answer.audio) / rate
            if rng.random() < c.backchannel_probability:
                said = BACKCHANNELS[int(rng.integers(len(BACKCHANNELS)))]
                at = draw_uniform(rng, (t + 0.3, max(t + 0.3, answer_end - 0.4)))
                placed.append((1, at, self.user_says(said, voice, prosody, dbfs - 4), USER_SPEAKER))
            exchanges.append(
                {
                    "question": q,
                    "question_s": [round(question_start, 6), round(question_end, 6)],
                    "answer_s": [round(t, 6), round(answer_end, 6)],
                }
            )
            t = max(answer_end, question_end)
        end = max(start + len(s.audio) / rate for _, start, s, _ in placed) + draw_uniform(rng, c.tail_s)
        samples = -(-round(end * rate) // c.frame_samples) * c.frame_samples
        audio = np.stack(
            [
                noise_floor(
                    samples, draw_uniform(rng, c.noise_dbfs), draw_uniform(rng, c.noise_colour), rng, rate
                )
                for _ in range(2)
            ],
            axis=1,
        )
        alignments: list[list[Any]] = []
        for channel, start, spoken, speaker in sorted(placed, key=lambda p: p[1]):
            first = round(start * rate)
            audio[first : first + len(spoken.audio), channel] += spoken.audio
            for word, word_start, word_end in spoken.words:
                alignments.append([word, [round(start + word_start, 6), round(start + word_end, 6)], speaker])
        return Conversation(audio, rate, voice, alignments, exchanges)


def _spread(
    tokens: Sequence[str], weights: Sequence[float], seconds: float
) -> tuple[tuple[str, float, float], ...]:
    """``tokens`` laid over ``seconds`` end to end, each lasting in proportion to its weight."""
    total = float(sum(weights)) or 1.0
    spans, t = [], 0.0
    for token, weight in zip(tokens, weights, strict=True):
        length = seconds * weight / total
        spans.append((token, round(t, 6), round(t + length, 6)))
        t += length
    return tuple(spans)
