"""`duplex asr` on files, as a user runs it: words with times in txt, json and srt."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile
from duplex.cli.app import app
from duplex.demo.random_checkpoint import write_random_checkpoint
from duplex.lm.transcriber import Transcriber
from duplex.stream.audio import load_mono
from typer.testing import CliRunner

runner = CliRunner()


@pytest.fixture(scope="module")
def stt(tmp_path_factory) -> Path:
    return write_random_checkpoint(tmp_path_factory.mktemp("stt"), "tiny-stt", seed=3)


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("speech")
    paths = []
    for index, text in enumerate(
        ["Hello there, how are you doing today? I would like a walk.", "A fine day."]
    ):
        path = folder / f"s{index}.wav"
        subprocess.run(["espeak-ng", "-w", str(path), text], check=True)
        paths.append(path)
    return paths


def test_json_output_holds_the_transcribers_words(stt, speech, tmp_path):
    result = runner.invoke(
        app, ["asr", *map(str, speech), "-c", str(stt), "-f", "json", "-o", str(tmp_path / "out")]
    )
    assert result.exit_code == 0, result.output
    transcriber = Transcriber.from_checkpoint(stt)
    expected = transcriber.transcribe([load_mono(p, 24_000) for p in speech])
    for path, words in zip(speech, expected, strict=True):
        document = json.loads((tmp_path / "out" / f"{path.stem}.json").read_text())
        assert document["words"] == [w.to_dict() for w in words]
        assert document["text"] == " ".join(w.text for w in words)
    assert expected[0], "the random model said nothing: the test would check nothing"


def test_stereo_at_another_rate_is_downmixed_and_resampled(stt, speech, tmp_path):
    mono = load_mono(speech[0], 24_000)
    stereo = tmp_path / "stereo.wav"
    soundfile.write(str(stereo), np.stack([mono, mono], axis=1), 24_000)
    plain = runner.invoke(app, ["asr", str(speech[0]), "-c", str(stt), "--no-progress"])
    both = runner.invoke(app, ["asr", str(stereo), "-c", str(stt), "--no-progress"])
    assert plain.exit_code == both.exit_code == 0
    assert plain.stdout == both.stdout and plain.stdout.strip()
    resampled = tmp_path / "48k.wav"
    soundfile.write(str(resampled), np.repeat(mono, 2), 48_000)
    assert runner.invoke(app, ["asr", str(resampled), "-c", str(stt), "--no-progress"]).exit_code == 0


def test_srt_cues_are_numbered_and_timed(stt, speech):
    result = runner.invoke(app, ["asr", str(speech[0]), "-c", str(stt), "-f", "srt", "--no-progress"])
    assert result.exit_code == 0
    blocks = [b for b in result.stdout.strip().split("\n\n") if b]
    assert blocks
    for number, block in enumerate(blocks, 1):
        index, timing, text = block.split("\n")
        assert int(index) == number and " --> " in timing and text


def test_int8_weights_transcribe_as_the_int8_transcriber(stt, speech, built_lms):
    result = runner.invoke(
        app, ["asr", str(speech[0]), "-c", str(stt), "--quantize", "int8", "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    (model,) = built_lms  # the flag reached the loader
    assert model.config.low_precision.format == "int8"
    words = Transcriber.from_checkpoint(stt, quantize="int8").transcribe([load_mono(speech[0], 24_000)])[0]
    assert words and result.stdout == " ".join(w.text for w in words) + "\n"
