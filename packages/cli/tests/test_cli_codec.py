"""`duplex codec encode | decode | roundtrip | evaluate` on a tiny random Mimi saved to disk."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import soundfile
import torch
from duplex.cli.app import app
from duplex.codec import Mimi, MimiConfig, load_audio
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

runner = CliRunner()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    torch.manual_seed(0)
    mimi = Mimi(MimiConfig.from_preset("tiny"))
    g = torch.Generator().manual_seed(0)
    state = mimi.state_dict()
    for key, value in state.items():
        if key.endswith("embedding_sum"):
            state[key] = torch.randn(value.shape, generator=g)
    mimi.load_state_dict(state)
    return str(mimi.save_pretrained(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"))


@pytest.fixture(scope="module")
def stereo_wav(tmp_path_factory) -> str:
    t = np.arange(int(44100 * 1.3)) / 44100
    tone = 0.3 * np.sin(2 * np.pi * 220 * t)
    path = tmp_path_factory.mktemp("audio") / "in.wav"
    soundfile.write(str(path), np.stack([tone, 0.5 * tone], axis=1), 44100)
    return str(path)


def test_encode_then_decode_equals_roundtrip_and_the_api(checkpoint, stereo_wav, tmp_path):
    codes_path, out, direct = tmp_path / "codes.safetensors", tmp_path / "out.wav", tmp_path / "rt.wav"
    result = runner.invoke(app, ["codec", "encode", stereo_wav, str(codes_path), "--checkpoint", checkpoint])
    assert result.exit_code == 0, result.output
    codes = load_file(str(codes_path))["codes"]
    assert codes.dtype == torch.int64 and codes.shape == (1, 8, 17)  # ceil(1.3 s * 12.5)

    mimi = Mimi.from_pretrained(checkpoint)
    wav = load_audio(stereo_wav)
    assert torch.equal(codes, mimi.encode(wav[None]))  # streaming in the CLI == batch here (< 10 s)

    result = runner.invoke(app, ["codec", "decode", str(codes_path), str(out), "--checkpoint", checkpoint])
    assert result.exit_code == 0, result.output
    result = runner.invoke(
        app, ["codec", "roundtrip", stereo_wav, str(direct), "-c", checkpoint, "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    decoded, rate = soundfile.read(str(out), dtype="float32")
    assert rate == 24000 and decoded.shape == (wav.shape[-1],)  # trimmed to the input length
    assert np.array_equal(decoded, soundfile.read(str(direct), dtype="float32")[0])
    expected = mimi.decode(codes)[0, 0, : wav.shape[-1]].detach().clamp(-1, 1).numpy()
    assert np.abs(decoded - expected).max() <= 1 / 32768 + 1e-6


def test_fewer_codebooks(checkpoint, stereo_wav, tmp_path):
    codes_path = tmp_path / "c.safetensors"
    result = runner.invoke(app, ["codec", "encode", stereo_wav, str(codes_path), "-c", checkpoint, "-k", "3"])
    assert result.exit_code == 0, result.output
    assert load_file(str(codes_path))["codes"].shape == (1, 3, 17)
    result = runner.invoke(
        app, ["codec", "decode", str(codes_path), str(tmp_path / "o.wav"), "-c", checkpoint]
    )
    assert result.exit_code == 0, result.output


def test_clear_errors(checkpoint, stereo_wav, tmp_path):
    result = runner.invoke(
        app, ["codec", "encode", str(tmp_path / "missing.wav"), "x.safetensors", "-c", checkpoint]
    )
    assert result.exit_code == 1 and "audio file not found" in result.output
    result = runner.invoke(
        app, ["codec", "encode", stereo_wav, "x.safetensors", "-c", str(tmp_path / "no.safetensors")]
    )
    assert result.exit_code == 1 and "not found" in result.output
    result = runner.invoke(
        app, ["codec", "encode", stereo_wav, str(tmp_path / "x.safetensors"), "-c", checkpoint, "-k", "9"]
    )
    assert result.exit_code == 1 and "num_codebooks must be an integer in [1, 8]" in result.output
    bad = tmp_path / "bad.safetensors"
    save_file({"codes": torch.full((1, 8, 4), 99, dtype=torch.long)}, str(bad))
    result = runner.invoke(app, ["codec", "decode", str(bad), str(tmp_path / "o.wav"), "-c", checkpoint])
    assert result.exit_code == 1 and "out of range" in result.output
    save_file({"x": torch.zeros(2)}, str(bad))
    result = runner.invoke(app, ["codec", "decode", str(bad), str(tmp_path / "o.wav"), "-c", checkpoint])
    assert result.exit_code == 1 and "one tensor named 'codes'" in result.output


def test_help_lists_the_commands():
    result = runner.invoke(app, ["codec", "--help"])
    assert result.exit_code == 0
    for command in ("encode", "decode", "roundtrip", "evaluate"):
        assert command in result.output


def test_evaluate_scores_the_round_trip_as_validation_does(checkpoint, tmp_path):
    """The metrics of `evaluate_codec` (SI-SDR, mel distance, STOI, PESQ, code use) on the segments
    a training run would validate on; segments too short to score are counted, not fatal."""
    from duplex.codec.training.data import AudioSegments
    from duplex.codec.training.evaluate import evaluate_codec
    from duplex.codec.training.run import validation_subset
    from duplex.lm.data.synth import SynthConfig, WordSpeaker

    speaker = WordSpeaker(SynthConfig())
    for i, words in enumerate([("hello", "there", "friend"), ("music", "books", "and", "food")]):
        speech = np.concatenate([speaker(w, "en+f3") for w in words])
        soundfile.write(str(tmp_path / f"clip{i}.wav"), speech, 24000)
    command = ["codec", "evaluate", str(tmp_path), "-c", checkpoint, "--segments", "3"]
    result = runner.invoke(app, [*command, "--segment-seconds", "0.48", "--json"])
    assert result.exit_code == 0, result.output
    scores = json.loads(result.output)
    segments = validation_subset(AudioSegments.from_folder(tmp_path, 24000, 11520), 3)
    assert scores == pytest.approx(evaluate_codec(Mimi.from_pretrained(checkpoint), segments))
    assert {"si_sdr", "mel_distance", "stoi", "pesq", "code_perplexity"} <= scores.keys()
    assert math.isfinite(scores["stoi"]) and 1.0 <= scores["pesq"] <= 4.7 and scores["pesq_skipped"] == 0

    result = runner.invoke(app, [*command, "--segment-seconds", "0.24"])  # too short for either
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line for line in result.output.splitlines()[1:]}
    assert "nan  (3 of 3 segments too short or silent to score)" in lines["pesq"]
    assert "nan  (3 of 3" in lines["stoi"] and "si_sdr" in lines

    result = runner.invoke(app, ["codec", "evaluate", str(tmp_path / "missing"), "-c", checkpoint])
    assert result.exit_code == 1 and f"{tmp_path / 'missing'} does not exist: pass a folder" in result.output
    result = runner.invoke(app, ["codec", "evaluate", str(tmp_path / "clip0.wav"), "-c", checkpoint])
    assert result.exit_code == 1 and "no audio files (or .jsonl index) found" in result.output
