"""`duplex run`, `duplex serve` and `duplex client` end to end, on the tiny demo checkpoint."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
import soundfile
from duplex.cli.app import app
from duplex.demo.checkpoints import build_tiny_checkpoint
from typer.testing import CliRunner


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return build_tiny_checkpoint(tmp_path_factory.mktemp("demo") / "tiny")


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory):
    path = tmp_path_factory.mktemp("speech") / "in.wav"
    subprocess.run(["espeak-ng", "-w", str(path), "Good morning, shall we talk?"], check=True)
    return path


def test_run_streams_a_file_and_writes_the_reply_and_a_timed_transcript(checkpoint, speech_wav, tmp_path):
    out = tmp_path / "reply.wav"
    result = CliRunner().invoke(
        app, ["run", "--checkpoint", str(checkpoint), "--greedy", str(speech_wav), str(out)]
    )
    assert result.exit_code == 0, result.output
    reply, rate = soundfile.read(out)
    source, source_rate = soundfile.read(speech_wav)
    assert rate == 24_000 and abs(len(reply) / rate - len(source) / source_rate) < 0.01
    transcript = json.loads(out.with_suffix(".json").read_text())
    assert transcript["sample_rate"] == 24_000 and transcript["text"].strip()
    pieces = transcript["pieces"]
    assert "".join(p["text"] for p in pieces) == transcript["text"]
    assert all(abs(p["start"] - 0.08 * p["frame"]) < 1e-6 and p["end"] > p["start"] for p in pieces)
    assert [p["frame"] for p in pieces] == sorted({p["frame"] for p in pieces})


def test_run_without_arguments_uses_the_default_checkpoint_and_example(tmp_path, monkeypatch):
    """From any folder: the example and the default checkpoint go to the cache, the reply to the
    current folder."""
    from duplex.demo import checkpoints as demo

    monkeypatch.setattr(demo, "BUNDLED_DEMO", tmp_path / "no-trained-demo")
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    result = CliRunner().invoke(app, ["run", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["reply.json", "reply.wav"]
    assert (tmp_path / "cache" / "duplex" / "hello.wav").is_file()
    assert (tmp_path / "cache" / "duplex" / f"demo-tiny-v{demo.TINY_VERSION}" / "config.json").is_file()
    verdict = result.output.strip().splitlines()[-1]
    assert verdict.startswith("mean step: ") and "real-time factor" in verdict
    assert ": kept up" in verdict or "slower than real time, a live call would fall behind" in verdict


def test_a_shipped_trained_demo_is_the_default(tmp_path, monkeypatch):
    from duplex.demo import checkpoints as demo

    monkeypatch.setattr(demo, "BUNDLED_DEMO", demo.build_tiny_checkpoint(tmp_path / "shipped"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert demo.default_checkpoint() == tmp_path / "shipped"
    from duplex.stream.defaults import default_checkpoint  # what the commands ask: the entry point

    assert default_checkpoint() == tmp_path / "shipped"
    assert not (tmp_path / "cache" / "duplex" / f"demo-tiny-v{demo.TINY_VERSION}").exists()


def test_the_bundled_demo_answers_the_example_question(tmp_path, monkeypatch):
    """A newcomer's first ``duplex run``: the shipped demo hears "Hello, how are you today?" in a
    voice it never heard and says its scripted answer."""
    from duplex.demo import checkpoints as demo
    from duplex.demo.data.conversations import SCRIPT
    from duplex.demo.data.conversations.script import words

    assert demo.default_checkpoint() == demo.BUNDLED_DEMO
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    result = CliRunner().invoke(app, ["run", "--no-progress"])
    assert result.exit_code == 0, result.output
    transcript = json.loads((tmp_path / "reply.json").read_text())
    assert transcript["text"].split() == words(SCRIPT[0].answer)
    reply, rate = soundfile.read(tmp_path / "reply.wav")
    spoken = reply[round(transcript["pieces"][0]["start"] * rate) :]
    assert np.sqrt(np.mean(spoken**2)) > 0.01  # it says it out loud, not in silence


def test_run_with_int8_weights_writes_the_reply(checkpoint, speech_wav, tmp_path, built_lms):
    out = tmp_path / "reply.wav"
    args = ["run", "--checkpoint", str(checkpoint), "--quantize", "int8", "--greedy", "--no-progress"]
    result = CliRunner().invoke(app, [*args, str(speech_wav), str(out)])
    assert result.exit_code == 0, result.output
    (model,) = built_lms  # the flag reached the loader
    assert model.config.low_precision.format == "int8"
    reply, rate = soundfile.read(out)
    assert rate == 24_000 and len(reply) > 0 and np.isfinite(reply).all()
    assert json.loads(out.with_suffix(".json").read_text())["sample_rate"] == 24_000


def test_run_names_a_missing_input(checkpoint, tmp_path):
    result = CliRunner().invoke(app, ["run", "--checkpoint", str(checkpoint), str(tmp_path / "nope.wav")])
    assert result.exit_code == 1 and "not found" in result.output


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_and_client_talk_over_the_network(checkpoint, speech_wav, tmp_path):
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "duplex.cli.app",
            "serve",
            "--checkpoint",
            str(checkpoint),
            "--port",
            str(port),
            "--max-conversations",
            "2",
            "--auth-token",
            "tok",
            "--log-level",
            "warning",
        ],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                    assert json.loads(response.read())["max_conversations"] == 2
                    break
            except OSError:
                assert server.poll() is None, "duplex serve exited"
                assert time.monotonic() < deadline, "duplex serve did not come up"
                time.sleep(0.5)
        url = f"ws://127.0.0.1:{port}/api/chat"
        refused = CliRunner().invoke(app, ["client", "--url", url, "--input", str(speech_wav)])
        assert refused.exit_code == 2 and "401" in refused.output
        out = tmp_path / "heard.wav"
        result = CliRunner().invoke(
            app,
            ["client", "--url", url, "--auth-token", "tok", "--input", str(speech_wav), "--output", str(out)],
        )
        assert result.exit_code == 0, result.output
        reply, rate = soundfile.read(out)
        source, source_rate = soundfile.read(speech_wav)
        frames = int(np.ceil(len(source) / source_rate * 12.5))
        assert rate == 24_000 and abs(len(reply) - (frames - 1) * 1920) <= 1920
        assert json.loads(out.with_suffix(".json").read_text())["text"].strip()
    finally:
        server.terminate()
        server.wait(30)


def test_the_step_time_verdict():
    from duplex.cli.run import speed_verdict

    fast = speed_verdict(20.0, 80.0, "cpu")
    assert fast.startswith("mean step: 20.0 ms for each 80 ms frame, real-time factor 0.25: kept up")
    slow = speed_verdict(760.0, 80.0, "cpu")
    assert "real-time factor 9.50: 9.5x slower than real time, a live call would fall behind" in slow
    assert "--device cuda" in slow and "--device cuda" not in speed_verdict(760.4, 80.0, "cuda")
