"""The moshi-finetune reader: a synthetic dataset loads, and each kind of bad input fails clearly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile
from duplex.lm.data import DatasetError, find_index, load_dataset, read_index
from duplex.lm.data.synth import synthesize_dataset


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    synthesize_dataset(out, 2, seed=3, tokenizer_vocab_size=None)
    return out


@pytest.fixture
def dataset(synth_dir, tmp_path) -> Path:
    copy = tmp_path / "data"
    shutil.copytree(synth_dir, copy)
    return copy


def test_synthetic_dataset_loads(dataset):
    dialogues = load_dataset(dataset)
    assert len(dialogues) == 2
    index = [json.loads(line) for line in (dataset / "data.jsonl").read_text().splitlines()]
    for dialogue, record in zip(dialogues, index, strict=True):
        assert dialogue.audio.channels == 2 and dialogue.audio.sample_rate == 24000
        assert dialogue.audio.duration == pytest.approx(record["duration"])
        assert {w.speaker for w in dialogue.words} == {"SPEAKER_MAIN", "SPEAKER_USER"}


def test_missing_index_and_folder_without_index(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        find_index(tmp_path / "nowhere")
    with pytest.raises(DatasetError, match="exactly one .jsonl"):
        find_index(tmp_path)


def test_bad_index_line(dataset):
    (dataset / "data.jsonl").write_text('{"path": "audio/dialogue_00000.wav", "duration": 1.0}\n{oops\n')
    with pytest.raises(DatasetError, match=r"data.jsonl:2: not valid JSON"):
        read_index(dataset / "data.jsonl")
    (dataset / "data.jsonl").write_text('{"path": "a.wav"}\n')
    with pytest.raises(DatasetError, match='"path" and "duration"'):
        read_index(dataset / "data.jsonl")


def test_missing_audio_file(dataset):
    (dataset / "audio" / "dialogue_00001.wav").unlink()
    with pytest.raises(DatasetError, match=r"dialogue_00001.wav does not exist"):
        load_dataset(dataset)


def test_missing_alignment_file(dataset):
    (dataset / "audio" / "dialogue_00000.json").unlink()
    with pytest.raises(DatasetError, match=r"dialogue_00000.json does not exist"):
        load_dataset(dataset)


def test_mono_audio_is_rejected(dataset):
    wav_path = dataset / "audio" / "dialogue_00000.wav"
    wav, rate = soundfile.read(str(wav_path))
    soundfile.write(str(wav_path), wav[:, 0], rate)
    with pytest.raises(DatasetError, match=r"expected stereo audio .* got 1 channel"):
        load_dataset(dataset)


def test_bad_alignment_json(dataset):
    (dataset / "audio" / "dialogue_00000.json").write_text('{"alignments": [["hi", [0.1, ')
    with pytest.raises(DatasetError, match=r"dialogue_00000.json: not valid JSON"):
        load_dataset(dataset)
    (dataset / "audio" / "dialogue_00000.json").write_text('{"alignments": [["hi", 0.1, "SPEAKER_MAIN"]]}')
    with pytest.raises(DatasetError, match=r"must be \[word, \[start, end\], speaker\]"):
        load_dataset(dataset)
    (dataset / "audio" / "dialogue_00000.json").write_text('{"words": []}')
    with pytest.raises(DatasetError, match='"alignments" list'):
        load_dataset(dataset)


def test_word_outside_audio(dataset):
    path = dataset / "audio" / "dialogue_00000.json"
    duration = soundfile.info(str(dataset / "audio" / "dialogue_00000.wav")).duration
    alignments = json.loads(path.read_text())["alignments"]
    alignments.append(["late", [duration + 0.5, duration + 0.9], "SPEAKER_MAIN"])
    path.write_text(json.dumps({"alignments": alignments}))
    with pytest.raises(DatasetError, match=r"word 'late' .* lies outside the audio"):
        load_dataset(dataset)


def test_index_duration_must_match_the_audio(dataset):
    lines = [json.loads(line) for line in (dataset / "data.jsonl").read_text().splitlines()]
    lines[0]["duration"] = 900
    (dataset / "data.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    with pytest.raises(DatasetError, match=r"dialogue_00000.wav: the index says 900 s but the audio lasts"):
        load_dataset(dataset)
    lines[0]["duration"] = round(soundfile.info(str(dataset / "audio" / "dialogue_00000.wav")).duration, 1)
    (dataset / "data.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert len(load_dataset(dataset)) == 2  # rounded durations are fine


def test_reversed_word_times(dataset):
    path = dataset / "audio" / "dialogue_00000.json"
    path.write_text(json.dumps({"alignments": [["back", [1.0, 0.5], "SPEAKER_MAIN"]]}))
    with pytest.raises(DatasetError, match=r"invalid times \[1.0, 0.5\]"):
        load_dataset(dataset)


def test_other_sample_rate_is_accepted(dataset):
    wav_path = dataset / "audio" / "dialogue_00000.wav"
    wav, _ = soundfile.read(str(wav_path))
    soundfile.write(str(wav_path), np.ascontiguousarray(wav[::2]), 12000)
    dialogues = load_dataset(dataset)
    assert dialogues[0].audio.sample_rate == 12000
