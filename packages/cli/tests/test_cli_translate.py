"""`duplex translate` as a user runs it: speech in, translated speech and its text out."""

from __future__ import annotations

import subprocess

import numpy as np
import soundfile
from duplex.cli.app import app
from duplex.demo.random_checkpoint import write_random_checkpoint
from duplex.lm.translator import Translator
from duplex.stream.audio import load_mono
from typer.testing import CliRunner


def test_translation_files_equal_the_translators_result(tmp_path):
    checkpoint = write_random_checkpoint(tmp_path / "hibiki", "tiny-hibiki", seed=2)
    source = tmp_path / "source.wav"
    subprocess.run(["espeak-ng", "-v", "fr", "-w", str(source), "Bonjour tout le monde."], check=True)
    out = tmp_path / "out.wav"
    result = CliRunner().invoke(app, ["translate", str(source), str(out), "-c", str(checkpoint), "-t", "0"])
    assert result.exit_code == 0, result.output
    expected = Translator.from_checkpoint(checkpoint, temperature=0.0, seed=42).translate(
        load_mono(source, 24_000)
    )
    audio, rate = soundfile.read(str(out), dtype="float32")
    assert rate == 24_000 and len(audio) == len(expected.audio) > 0
    np.testing.assert_allclose(audio, expected.audio, atol=1e-4)
    assert out.with_suffix(".txt").read_text().strip() == expected.text
    assert not list(tmp_path.glob("*.partial*"))
