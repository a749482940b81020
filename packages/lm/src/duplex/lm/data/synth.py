"""Synthetic two-voice dialogues in the moshi-finetune format, spoken by espeak-ng.

Each word is synthesised on its own, its silent edges trimmed, and the words are laid end to end
with short pauses, so every word's start and end time is known exactly. Turns alternate between
the model (left channel, speaker ``SPEAKER_MAIN``) and the user (right channel), and a turn
sometimes starts before the previous one ends (overlap), as in real conversations.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import torch
from duplex.codec.audio import resample
from duplex.lm.data.format import MAIN_SPEAKER, USER_SPEAKER

DEFAULT_VOICES = ("en+m3", "en+f3")

_VOCABULARY = (
    "hello how are you today I am fine thank you what is the weather like it is sunny and warm "
    "do you want some tea yes please no thanks where are we going to the park later maybe we "
    "could walk there together that sounds good I like green trees and blue water the cat is "
    "sleeping on the chair can you hear me now very well let us talk about music books and food"
).split()


@dataclass(frozen=True)
class SynthConfig:
    sample_rate: int = 24000
    voices: tuple[str, str] = DEFAULT_VOICES
    words_per_turn: tuple[int, int] = (3, 8)
    turns: tuple[int, int] = (3, 5)
    word_gap_s: tuple[float, float] = (0.05, 0.15)
    # Gap between turns; negative values make the next speaker start before the current one ends.
    turn_gap_s: tuple[float, float] = (-0.4, 0.6)
    speed_wpm: int = 175
    lead_in_s: float = 0.3
    tail_s: float = 0.3


def _require_espeak() -> str:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError("espeak-ng is not installed; install it (e.g. `apt-get install espeak-ng`)")
    return exe


def _trim_silence(wav: np.ndarray, threshold: float = 1e-3) -> np.ndarray:
    loud = np.flatnonzero(np.abs(wav) > threshold)
    if len(loud) == 0:
        return wav[:0]
    return wav[loud[0] : loud[-1] + 1]


class WordSpeaker:
    """Speaks single words with espeak-ng, caching each (voice, word) clip."""

    def __init__(self, config: SynthConfig) -> None:
        self.config = config
        self._exe = _require_espeak()
        self._cache: dict[tuple[str, str], np.ndarray] = {}

    def __call__(self, word: str, voice: str) -> np.ndarray:
        key = (voice, word)
        if key not in self._cache:
            with tempfile.NamedTemporaryFile(suffix=".wav") as tmp:
                subprocess.run(
                    [self._exe, "-v", voice, "-s", str(self.config.speed_wpm), "-w", tmp.name, word],
                    check=True,
                    capture_output=True,
                )
                wav, rate = soundfile.read(tmp.name, dtype="float32")
            wav = resample(torch.from_numpy(wav), rate, self.config.sample_rate).numpy()
            wav = _trim_silence(wav).astype(np.float32)
            self._cache[key] = wav
        return self._cache[key]


def synthesize_dialogue(
    speaker: WordSpeaker, rng: random.Random
) -> tuple[np.ndarray, list[list[object]], list[str]]:
    """One dialogue: stereo audio [T, 2], its alignments, and the text of its turns."""
    config = speaker.config
    rate = config.sample_rate
    placed: list[tuple[int, int, np.ndarray, str, str]] = []  # (channel, start sample, clip, word, who)
    turns_text = []
    cursor = config.lead_in_s
    num_turns = rng.randint(*config.turns)
    first = rng.randint(0, 1)
    for turn in range(num_turns):
        channel = (first + turn) % 2
        who = MAIN_SPEAKER if channel == 0 else USER_SPEAKER
        words = [rng.choice(_VOCABULARY) for _ in range(rng.randint(*config.words_per_turn))]
        turns_text.append(" ".join(words))
        t = max(cursor, 0.0)
        for word in words:
            clip = speaker(word, config.voices[channel])
            start = round(t * rate)
            placed.append((channel, start, clip, word, who))
            t = (start + len(clip)) / rate + rng.uniform(*config.word_gap_s)
        turn_end = (placed[-1][1] + len(placed[-1][2])) / rate
        cursor = turn_end + rng.uniform(*config.turn_gap_s)
    total = max(start + len(clip) for _, start, clip, _, _ in placed) + round(config.tail_s * rate)
    total = -(-total // 1920) * 1920  # a whole number of 80 ms frames
    audio = np.zeros((total, 2), dtype=np.float32)
    alignments: list[list[object]] = []
    for channel, start, clip, word, who in sorted(placed, key=lambda p: p[1]):
        audio[start : start + len(clip), channel] += clip
        alignments.append([word, [round(start / rate, 6), round((start + len(clip)) / rate, 6)], who])
    return audio, alignments, turns_text


def synthesize_dataset(
    output: str | Path,
    num_dialogues: int,
    seed: int = 0,
    config: SynthConfig | None = None,
    tokenizer_vocab_size: int | None = 128,
) -> Path:
    """Write ``num_dialogues`` dialogues under ``output`` and return the ``.jsonl`` index.

    With ``tokenizer_vocab_size``, also trains a small sentencepiece model on the dialogue text
    (``output/tokenizer.model``), enough for tiny LM runs.
    """
    if num_dialogues < 1:
        raise ValueError(f"num_dialogues must be >= 1, got {num_dialogues}")
    config = config or SynthConfig()
    output = Path(output)
    (output / "audio").mkdir(parents=True, exist_ok=True)
    speaker = WordSpeaker(config)
    rng = random.Random(seed)
    lines = []
    corpus = []
    for i in range(num_dialogues):
        audio, alignments, turns_text = synthesize_dialogue(speaker, rng)
        relative = Path("audio") / f"dialogue_{i:05d}.wav"
        soundfile.write(str(output / relative), audio, config.sample_rate, subtype="PCM_16")
        (output / relative).with_suffix(".json").write_text(json.dumps({"alignments": alignments}))
        lines.append(json.dumps({"path": str(relative), "duration": len(audio) / config.sample_rate}))
        corpus.extend(turns_text)
    index = output / "data.jsonl"
    index.write_text("\n".join(lines) + "\n")
    if tokenizer_vocab_size is not None:
        from duplex.lm.data.text_tokenizer import train_tokenizer

        corpus.extend(_VOCABULARY)  # every word at least once, whatever the dialogues drew
        train_tokenizer(corpus, output / "tokenizer.model", vocab_size=tokenizer_vocab_size)
    return index
