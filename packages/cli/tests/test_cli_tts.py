"""`duplex tts` as a user runs it: text in (argument, file or stdin), speech and timed words out."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile
from duplex.cli.app import app
from duplex.demo.random_checkpoint import write_random_checkpoint
from duplex.lm.synthesizer import Synthesizer
from typer.testing import CliRunner

runner = CliRunner()
TEXT = 'Hello there. <break time="0.5s"/> How are you?'


@pytest.fixture(scope="module")
def tts(tmp_path_factory) -> Path:
    return write_random_checkpoint(tmp_path_factory.mktemp("tts"), "tiny-tts", seed=5)


def test_speech_and_words_equal_the_synthesizers(tts, tmp_path):
    out = tmp_path / "speech.wav"
    result = runner.invoke(app, ["tts", TEXT, str(out), "-c", str(tts), "-v", "bob", "--seed", "7"])
    assert result.exit_code == 0, result.output
    audio, rate = soundfile.read(str(out), dtype="float32")
    synth = Synthesizer.from_checkpoint(tts)
    run = synth.run([synth.entries(TEXT)], [synth.conditions(["bob"], 2.0)], temperature=0.6, seed=7)
    expected = synth.render(run)[0]
    assert rate == 24_000 and len(audio) == len(expected.audio) > 0
    np.testing.assert_allclose(audio, expected.audio, atol=1e-4)  # within the wav format's rounding
    words = json.loads(out.with_suffix(".json").read_text())["words"]
    assert [w["text"] for w in words] == ["Hello", "there.", "How", "are", "you?"]
    assert words == [w.to_dict() for w in expected.words]


def test_text_from_a_file_and_stdin_and_a_dialogue(tts, tmp_path):
    script = tmp_path / "script.txt"
    script.write_text("[S1] Hi there. [S2] Hello!")
    from_file = runner.invoke(
        app,
        ["tts", str(script), str(tmp_path / "a.wav"), "-c", str(tts), "-v", "alice", "-v", "bob", "-t", "0"],
    )
    from_stdin = runner.invoke(
        app,
        ["tts", "-", str(tmp_path / "b.wav"), "-c", str(tts), "-v", "alice", "-v", "bob", "-t", "0"],
        input="[S1] Hi there. [S2] Hello!",
    )
    assert from_file.exit_code == from_stdin.exit_code == 0, from_file.output + from_stdin.output
    a, _ = soundfile.read(str(tmp_path / "a.wav"))
    b, _ = soundfile.read(str(tmp_path / "b.wav"))
    np.testing.assert_array_equal(a, b)


def test_a_failed_synthesis_writes_nothing(tts, tmp_path):
    out = tmp_path / "none.wav"
    result = runner.invoke(app, ["tts", '<break time="1s"/>', str(out), "-c", str(tts)])
    assert result.exit_code == 1 and "no words" in result.output
    result = runner.invoke(
        app, ["tts", "hi", str(out), "-c", str(tts), "-v", str(tmp_path / "v.safetensors")]
    )
    assert result.exit_code == 1 and "voice file" in result.output
    assert not list(tmp_path.iterdir())


def test_bf16_weights_speak(tts, tmp_path, built_lms):
    out = tmp_path / "speech.wav"
    result = runner.invoke(
        app, ["tts", "Hello there.", str(out), "-c", str(tts), "-v", "bob", "--quantize", "bf16"]
    )
    assert result.exit_code == 0, result.output
    (model,) = built_lms  # the flag reached the loader
    assert model.config.low_precision.format == "bf16"
    audio, rate = soundfile.read(str(out), dtype="float32")
    assert rate == 24_000 and len(audio) > 0 and np.isfinite(audio).all()
    words = json.loads(out.with_suffix(".json").read_text())["words"]
    assert [w["text"] for w in words] == ["Hello", "there."]
