"""Streaming speech recognition: the read-out of words, and the Transcriber against moshi 0.2.13."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from duplex.codec.audio import load_audio
from duplex.demo.random_checkpoint import write_random_checkpoint
from duplex.lm.config import LMConfig
from duplex.lm.tokenizer import TextTokenizer
from duplex.lm.transcriber import Transcriber
from duplex.lm.words import Word, WordReader
from moshi.utils.compile import no_compile

SAMPLE_RATE = 24_000


@pytest.fixture(scope="module")
def stt_checkpoint(tmp_path_factory) -> Path:
    """A random STT model over a calibrated random Mimi: different sounds get different codes, so
    its text follows the audio (markers, pieces and pads come and go, and words come out)."""
    return write_random_checkpoint(tmp_path_factory.mktemp("stt"), "tiny-stt", seed=3)


@pytest.fixture(scope="module")
def tokenizer(stt_checkpoint) -> TextTokenizer:
    return TextTokenizer.from_file(stt_checkpoint / "tokenizer.model")


def ids(tokenizer: TextTokenizer, word: str) -> list[int]:
    return tokenizer.encode(word)


def read(tokenizer: TextTokenizer, tokens: list[int], offset: float = 0.0) -> list[Word]:
    reader = WordReader(tokenizer, 12.5, offset)
    words = [w for t in tokens for w in reader.push(t)]
    return words + reader.finish()


def test_words_lie_between_end_of_padding_markers(tokenizer):
    pad, epad = 3, 0
    hello, there = ids(tokenizer, "hello"), ids(tokenizer, "there")
    # steps: 0 pad, 1 epad, 2.. hello pieces, then pads, epad at 8, there, pads to 30
    tokens = [pad, epad, *hello] + [pad] * (7 - 1 - len(hello)) + [epad, *there] + [pad] * 20
    words = read(tokenizer, tokens, offset=0.08)
    assert [w.text for w in words] == ["hello", "there"]
    assert words[0].start == pytest.approx(2 / 12.5 - 0.08) and words[0].end == pytest.approx(8 / 12.5 - 0.08)
    # the last word: no marker after it, so it lasts one second (13 steps) from its start
    assert words[1].start == pytest.approx(9 / 12.5 - 0.08)
    assert words[1].end == pytest.approx((9 + 13) / 12.5 - 0.08)


def test_fast_words_share_a_segment_and_end_of_text_closes_the_last(tokenizer):
    pad, epad, eos = 3, 0, 2
    how, are, you = ids(tokenizer, "how"), ids(tokenizer, "are"), ids(tokenizer, "you")
    tokens = [pad, pad, *how, epad, *are, *you, pad, epad, *how, pad, eos, pad, pad]
    words = read(tokenizer, tokens)
    assert [w.text for w in words] == ["are", "you", "how"]  # pieces before the first marker: none
    start = 2 + len(how) + 1
    assert words[0].start == pytest.approx(start / 12.5)
    assert words[0].end == pytest.approx((start + len(are)) / 12.5) == words[1].start
    second_marker = start + len(are) + len(you) + 1
    assert words[1].end == pytest.approx(second_marker / 12.5)
    assert words[2].end == pytest.approx(tokens.index(eos) / 12.5)  # the end-of-text step


def test_a_live_reader_closes_a_word_after_a_silence(tokenizer):
    """Live streams have no end: with ``close_after`` a word comes out one second after its last
    piece, timed as the last word of a stream; a late piece before the next marker is dropped."""
    pad, epad = 3, 0
    hello, there = ids(tokenizer, "hello"), ids(tokenizer, "there")
    tokens = [epad, *hello] + [pad] * 20 + [there[0], pad, epad, *there, pad]
    live = WordReader(tokenizer, 12.5, 0.0, close_after=1.0)
    emitted = [(i, w) for i, t in enumerate(tokens) for w in live.push(t)]
    ((step, word),) = emitted
    assert step == len(hello) + 12 and word == read(tokenizer, [epad, *hello] + [pad] * 20)[0]
    assert word.end == pytest.approx(13 / 12.5 + 1 / 12.5)  # one second after its start
    assert [w.text for w in live.finish()] == ["there"]


def test_times_are_never_negative(tokenizer):
    words = read(tokenizer, [0, *ids(tokenizer, "walk"), 0], offset=2.0)
    assert words == [Word("walk", 0.0, 0.0)]


def espeak(tmp_path: Path, text: str, voice: str = "en") -> np.ndarray:
    path = tmp_path / f"{abs(hash(text))}.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-w", str(path), text], check=True)
    return load_audio(path, SAMPLE_RATE)[0].numpy()


def reference_tokens(info, frames: np.ndarray) -> list[int]:  # noqa: ANN001
    """moshi 0.2.13 run as the DSM scripts run it: one Mimi + LMGen step per 80 ms frame, greedy."""
    from moshi.models import LMGen

    mimi = info.get_mimi(device="cpu")
    lm_gen = LMGen(info.get_moshi(device="cpu", dtype=torch.float32), temp=0, temp_text=0)
    tokens = []
    with torch.no_grad(), no_compile(), mimi.streaming(1), lm_gen.streaming(1):
        for frame in frames:
            out = lm_gen.step(mimi.encode(torch.from_numpy(frame)[None, None]))
            tokens.append(int(out[0, 0, 0]))
    return tokens


def padded_frames(transcriber: Transcriber, audio: np.ndarray) -> np.ndarray:
    size = transcriber.frame_size
    body = np.pad(audio, (0, -len(audio) % size))
    silence = np.zeros((transcriber.prefix_frames * size,), dtype=np.float32)
    flush = np.zeros((transcriber.flush_frames * size,), dtype=np.float32)
    return np.concatenate([silence, body, flush]).reshape(-1, size)


def test_transcriber_rows_give_the_reference_tokens_and_its_words(
    stt_checkpoint, tokenizer, tmp_path, reference_info
):
    """Three recordings streamed in one batch (different lengths, pushed in ragged chunks, rows
    joining at different times) give, row by row, the reference's greedy tokens over every step,
    and the words the read-out makes of the reference's tokens."""
    transcriber = Transcriber.from_checkpoint(stt_checkpoint, numerics="reference")
    audios = [
        espeak(tmp_path, "Hello there, how are you doing today? I would like a walk."),
        espeak(tmp_path, "What a fine day it is to go outside for a long walk in the park.", voice="en+f3"),
        espeak(tmp_path, "Can you hear me well enough on this line, my friend?", voice="en-us"),
    ]
    tokens: dict[int, list[int]] = {0: [], 1: [], 2: []}
    words: dict[int, list[Word]] = {0: [], 1: [], 2: []}
    pauses: dict[int, list[np.ndarray]] = {0: [], 1: [], 2: []}

    def collect(updates):
        for update in updates:
            tokens[update.row] += update.tokens
            words[update.row] += update.words
            pauses[update.row].append(update.pauses)

    with transcriber.streaming(3):
        transcriber.start(0)
        transcriber.push(0, audios[0][:5000])
        collect(transcriber.process())
        transcriber.start(1)
        transcriber.start(2)
        for row, audio, start, chunk in (
            (0, audios[0], 5000, 3331),
            (1, audios[1], 0, 999),
            (2, audios[2], 0, 7777),
        ):
            for offset in range(start, len(audio), chunk):
                transcriber.push(row, audio[offset : offset + chunk])
                if row != 1:
                    collect(transcriber.process(max_steps=2))
        for row in range(3):
            transcriber.finish(row)
        collect(transcriber.process())
    for row, audio in enumerate(audios):
        frames = padded_frames(transcriber, audio)
        expected = reference_tokens(reference_info(stt_checkpoint), frames)
        assert len(tokens[row]) == len(frames) >= 50
        assert tokens[row] == expected
        assert words[row] == read(tokenizer, expected, transcriber.offset)
        probs = np.concatenate(pauses[row])
        assert probs.shape == (len(frames), 4) and ((probs >= 0) & (probs <= 1)).all()
    assert sum(len(w) for w in words.values()) >= 3, words  # the read-out had words to make


def test_transcribe_batches_files_and_equals_streaming(stt_checkpoint, tmp_path):
    transcriber = Transcriber.from_checkpoint(stt_checkpoint)
    audios = [espeak(tmp_path, "one two three"), espeak(tmp_path, "four five"), espeak(tmp_path, "six")]
    batched = transcriber.transcribe(audios, batch_size=2)
    alone = [transcriber.transcribe([audio])[0] for audio in audios]
    assert batched == alone


def test_transcriber_refuses_other_models_and_misuse(tmp_path, stt_checkpoint):
    checkpoint = write_random_checkpoint(tmp_path / "moshi", LMConfig.from_preset("tiny", card=32))
    with pytest.raises(ValueError, match="'moshi' checkpoint.*duplex run"):
        Transcriber.from_checkpoint(checkpoint)
    transcriber = Transcriber.from_checkpoint(stt_checkpoint)
    with pytest.raises(RuntimeError, match="not streaming"):
        transcriber.start(0)
    with transcriber.streaming(1):
        with pytest.raises(RuntimeError, match="call start"):
            transcriber.push(0, np.zeros(10))
        transcriber.start(0)
        with pytest.raises(ValueError, match="mono"):
            transcriber.push(0, np.zeros((2, 10)))
        with pytest.raises(IndexError):
            transcriber.start(1)
