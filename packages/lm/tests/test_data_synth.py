"""Synthetic dialogues: exact word timings, two voices, overlapping turns."""

from __future__ import annotations

import numpy as np
import pytest
import sentencepiece
import soundfile
from duplex.lm.data import load_dataset
from duplex.lm.data.synth import SynthConfig, WordSpeaker, synthesize_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    synthesize_dataset(out, 6, seed=0, tokenizer_vocab_size=128)
    return out


def test_word_timings_are_exact(dataset):
    speaker = WordSpeaker(SynthConfig())
    for dialogue in load_dataset(dataset):
        wav, rate = soundfile.read(str(dialogue.entry.audio_path), dtype="float32")
        for word in dialogue.words:
            channel = 0 if word.speaker == "SPEAKER_MAIN" else 1
            voice = SynthConfig().voices[channel]
            start, end = round(word.start * rate), round(word.end * rate)
            clip = speaker(word.text, voice)
            assert end - start == len(clip)
            # PCM16 storage: equal to the synthesized word up to quantization.
            np.testing.assert_allclose(wav[start:end, channel], np.clip(clip, -1, 1), atol=1.5 / 2**15)
            # Silence around each word on its channel (words of a speaker never overlap).
            assert np.abs(wav[start - 10 : start, channel]).max() < 2e-3


def test_two_voices_and_overlaps(dataset):
    dialogues = load_dataset(dataset)
    overlaps = 0
    for dialogue in dialogues:
        assert dialogue.audio.frames % 1920 == 0
        main = [w for w in dialogue.words if w.speaker == "SPEAKER_MAIN"]
        user = [w for w in dialogue.words if w.speaker == "SPEAKER_USER"]
        assert main and user
        overlaps += any(m.start < u.end and u.start < m.end for m in main for u in user)
    assert 0 < overlaps < len(dialogues)  # turns sometimes overlap
    # The voices differ: the same word sounds different on the two channels.
    speaker = WordSpeaker(SynthConfig())
    a, b = speaker("hello", "en+m3"), speaker("hello", "en+f3")
    assert len(a) != len(b) or not np.allclose(a, b)


def test_tokenizer_has_moshi_special_ids(dataset):
    sp = sentencepiece.SentencePieceProcessor(model_file=str(dataset / "tokenizer.model"))
    assert [sp.id_to_piece(i) for i in range(4)] == ["<unk>", "<s>", "</s>", "<pad>"]
    assert sp.vocab_size() <= 128
    words = " ".join(w.text for d in load_dataset(dataset) for w in d.words)
    assert 0 not in sp.encode(words)  # no unknown pieces on the synthetic text


def test_bad_count():
    with pytest.raises(ValueError, match="num_dialogues must be >= 1"):
        synthesize_dataset("/tmp/never", 0)
