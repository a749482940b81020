"""Speech clips for codec training: the sentence corpus and its held-out split, held-out voices, the
noise floor (no digital silence), variety, determinism."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile
from duplex.demo.data.speech import (
    HELDOUT_VOICES,
    TRAIN_VOICES,
    Prosody,
    SentenceSource,
    SpeechConfig,
    SpeechGenerator,
    is_heldout_sentence,
    speak,
    split_sentences,
    write_speech_dataset,
)
from duplex.demo.data.speech.levels import active_dbfs, dbfs
from duplex.demo.data.speech.sentences import harvest_stdlib, speakable
from duplex.demo.data.speech.splits import sentence_key

# Short clips: the tests make a handful, in well under a second each.
CONFIG = SpeechConfig(seconds=0.5, lead_s=(0.2, 0.3), tail_s=(0.1, 0.2))


@pytest.fixture(scope="module")
def source() -> SentenceSource:
    return SentenceSource.stdlib()


@pytest.fixture(scope="module")
def datasets(source, tmp_path_factory) -> dict[str, list[dict]]:
    """A few clips of each split: their index records, with the audio read back (as stored, 16-bit)."""
    written = {}
    for split, clips in (("train", 8), ("heldout", 4)):
        folder = tmp_path_factory.mktemp(split)
        index = write_speech_dataset(folder, clips, seed=0, split=split, config=CONFIG, source=source)
        records = [json.loads(line) for line in index.read_text().splitlines()]
        for record in records:
            record["audio"], record["rate"] = soundfile.read(str(folder / record["path"]), dtype="int16")
        written[split] = records
    return written


def _longest_zero_run(samples: np.ndarray) -> int:
    edges = np.diff(np.concatenate([[0], (samples == 0).astype(np.int8), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return int((ends - starts).max()) if len(starts) else 0


def _f0(wav: np.ndarray, rate: int) -> float:
    """Median pitch (Hz) of the loud 40 ms frames, from the autocorrelation peak in 60-500 Hz."""
    frame, estimates = int(0.04 * rate), []
    loud = 0.3 * np.abs(wav).max()
    for start in range(0, len(wav) - frame, frame // 2):
        segment = wav[start : start + frame]
        if np.abs(segment).max() < loud:
            continue
        correlation = np.correlate(segment, segment, "full")[frame - 1 :]
        low, high = rate // 500, rate // 60
        estimates.append(rate / (low + int(np.argmax(correlation[low:high]))))
    return float(np.median(estimates))


def test_the_default_corpus_has_thousands_of_distinct_speakable_sentences(source):
    sentences = source.sentences
    assert len(sentences) > 4000
    assert len({sentence_key(s) for s in sentences}) == len(sentences)  # deduplicated
    assert list(sentences) == sorted(sentences)  # a deterministic order
    assert all(speakable(s) for s in sentences)
    assert SentenceSource.stdlib().sentences == sentences  # the cache returns the same corpus


def test_harvest_reads_docstrings_and_skips_code_and_tests(tmp_path):
    (tmp_path / "mod.py").write_text(
        '"""Tools for reading files.\n\nThe reader keeps its place between calls, unlike most readers.\n\n'
        '>>> Reader("x").read(3)\n\nSee getFoo for the details."""\n'
        'def f():\n    """Return the number of bytes left in the buffer."""\n'
    )
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "test_mod.py").write_text('"""Check that the reader reads what it should."""\n')
    assert harvest_stdlib(tmp_path) == [
        "Return the number of bytes left in the buffer.",
        "The reader keeps its place between calls, unlike most readers.",
        "Tools for reading files.",
    ]


def test_user_text_is_prose_or_one_sentence_per_line():
    prose = "The cat sat on the mat all day.  It was\nwarm in the sun, and it slept. Done now.\n"
    assert split_sentences(prose) == [
        "The cat sat on the mat all day.",
        "It was warm in the sun, and it slept.",
        "Done now.",
    ]
    lines = "Good morning to you all\nWhere did you put the keys?\n"
    assert split_sentences(lines) == ["Good morning to you all.", "Where did you put the keys?"]
    source = SentenceSource.from_text(prose + "\n" + lines + "\nCall f(x) with 3 args, e.g. like this.\n")
    # "Done now." is too short; digits, brackets and abbreviations are dropped, not cleaned.
    assert source.sentences == (
        "Good morning to you all.",
        "It was warm in the sun, and it slept.",
        "The cat sat on the mat all day.",
        "Where did you put the keys?",
    )


def test_bad_text_files_fail_in_one_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist: pass --text"):
        SentenceSource.from_file(tmp_path / "missing.txt")
    (tmp_path / "code.txt").write_text("x = f(1)\nprint(x)\n")
    with pytest.raises(ValueError, match="no usable sentence in .*code.txt"):
        SentenceSource.from_file(tmp_path / "code.txt")
    (tmp_path / "latin.bin").write_bytes(b"Caf\xe9 au lait is a fine drink.\n")
    with pytest.raises(ValueError, match="not UTF-8"):
        SentenceSource.from_file(tmp_path / "latin.bin")
    tiny = SentenceSource.from_text("The cat sat on the mat.")
    empty_split = "heldout" if not is_heldout_sentence(tiny.sentences[0]) else "train"
    with pytest.raises(ValueError, match=f"the {empty_split} split of text is empty"):
        tiny.split(empty_split)


def test_heldout_sentences_never_reach_training(source, datasets):
    train, heldout = source.split("train"), source.split("heldout")
    assert not set(train) & set(heldout) and len(train) + len(heldout) == len(source.sentences)
    assert 0.03 < len(heldout) / len(source.sentences) < 0.07  # 5% by hash
    for split, allowed in (("train", set(train)), ("heldout", set(heldout))):
        spoken = [s["text"] for record in datasets[split] for s in record["sentences"]]
        assert spoken and set(spoken) <= allowed


def test_heldout_voices_never_reach_training(datasets):
    train_variants = {voice.variant for voice in TRAIN_VOICES}
    assert not train_variants & {voice.variant for voice in HELDOUT_VOICES}  # not even in another accent
    assert {record["voice"] for record in datasets["train"]} <= {voice.name for voice in TRAIN_VOICES}
    assert {record["voice"] for record in datasets["heldout"]} <= {voice.name for voice in HELDOUT_VOICES}


def test_no_digital_silence_and_the_noise_floor_is_at_its_level(datasets):
    low, high = CONFIG.noise_dbfs
    for record in [*datasets["train"], *datasets["heldout"]]:
        samples = record["audio"]
        assert len(samples) % CONFIG.frame_samples == 0
        assert _longest_zero_run(samples) <= 6  # 16-bit noise crosses zero, it never rests there
        assert low <= record["noise_dbfs"] <= high
        start, end = (round(seconds * record["rate"]) for seconds in record["speech_s"])
        lead_in, speech = samples[:start] / 2**15, samples[start:end] / 2**15
        assert abs(dbfs(lead_in) - record["noise_dbfs"]) < 2.0  # the floor under the lead-in
        assert CONFIG.speech_dbfs[0] - 1 <= active_dbfs(speech, record["rate"]) <= CONFIG.speech_dbfs[1] + 1


def test_clips_vary_in_voice_prosody_and_duration(datasets):
    records = datasets["train"]
    assert len({r["voice"] for r in records}) >= 6
    assert len({r["duration"] for r in records}) >= 4
    assert len({(s["rate_wpm"], s["pitch"]) for r in records for s in r["sentences"]}) >= 6
    assert any(r["female"] for r in records) and not all(r["female"] for r in records)


def test_voice_rate_and_pitch_change_the_sound():
    text = "We walked along the river until the evening came."
    slow, rate = speak(text, "en-us+m3", Prosody(rate_wpm=120))
    fast, _ = speak(text, "en-us+m3", Prosody(rate_wpm=240))
    assert len(slow) > 1.5 * len(fast)
    low, _ = speak(text, "en-us+m3", Prosody(pitch=10))
    high, _ = speak(text, "en-us+m3", Prosody(pitch=90))
    assert _f0(high, rate) > 1.4 * _f0(low, rate)
    male, _ = speak(text, "en+m1", Prosody())
    female, _ = speak(text, "en+f2", Prosody())
    assert _f0(female, rate) > 1.3 * _f0(male, rate)


def test_every_voice_sounds_different():
    """Each variant of the catalogue speaks differently, and every accent applies the variant
    (espeak-ng silently ignores it after some names, such as ``en-gb``)."""
    text = "We walked along the river."
    variants = {voice.variant for voice in (*TRAIN_VOICES, *HELDOUT_VOICES)}
    sounds = {speak(text, f"en-us+{variant}", Prosody())[0].tobytes() for variant in variants}
    assert len(sounds) == len(variants)
    for accent in {voice.accent for voice in (*TRAIN_VOICES, *HELDOUT_VOICES)}:
        male, _ = speak(text, f"{accent}+m1", Prosody())
        female, _ = speak(text, f"{accent}+f2", Prosody())
        assert len(male) != len(female) or not np.array_equal(male, female), accent


def test_clips_are_a_function_of_seed_and_index(source, tmp_path):
    generator = SpeechGenerator(source.split("train"), TRAIN_VOICES, CONFIG)
    first = generator.clip(seed=0, index=3)
    assert np.array_equal(first.audio, generator.clip(seed=0, index=3).audio)
    assert first.record() == generator.clip(seed=0, index=3).record()
    assert first.record() != generator.clip(seed=1, index=3).record()
    # Two processes make the same files as one (each clip depends on nothing else).
    one = write_speech_dataset(tmp_path / "one", 3, seed=5, config=CONFIG, source=source)
    two = write_speech_dataset(tmp_path / "two", 3, seed=5, config=CONFIG, source=source, workers=2)
    assert one.read_text() == two.read_text()
    for line in one.read_text().splitlines():
        path = json.loads(line)["path"]
        assert (tmp_path / "one" / path).read_bytes() == (tmp_path / "two" / path).read_bytes()


def test_a_smaller_rerun_leaves_exactly_its_clips(source, tmp_path):
    write_speech_dataset(tmp_path, 3, config=CONFIG, source=source)
    write_speech_dataset(tmp_path, 2, config=CONFIG, source=source)
    assert sorted(p.name for p in (tmp_path / "audio").iterdir()) == ["clip_000000.wav", "clip_000001.wav"]
    manifest = json.loads((tmp_path / "speech.json").read_text())
    assert manifest["clips"] == 2 and manifest["split"] == "train" and manifest["config"]["seconds"] == 0.5


def test_config_rejects_ranges_espeak_cannot_take():
    with pytest.raises(ValueError, match="low <= high"):
        SpeechConfig(noise_dbfs=(-40, -60))
    with pytest.raises(ValueError, match="pitch must lie within"):
        SpeechConfig(pitch=(0, 120))
    with pytest.raises(ValueError, match="unknown split"):
        write_speech_dataset("/tmp/never", 1, split="test")  # type: ignore[arg-type]
