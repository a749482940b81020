"""Kyutai's STT protocol (/api/asr-streaming): their own client script, unchanged, against
`duplex serve`, and the server's answers to protocol mistakes."""

from __future__ import annotations

import asyncio
import math
import re
import subprocess
import sys
from pathlib import Path

import aiohttp
import msgpack
import numpy as np
import pytest
import soundfile
from duplex.demo.random_checkpoint import write_random_checkpoint
from duplex.lm.transcriber import Transcriber
from duplex.lm.words import WordReader
from duplex.stream.asr_pipeline import AsrPipeline
from duplex.stream.audio import load_mono
from duplex.stream.engine import DuplexEngine
from duplex.stream.kyutai import WORD_CLOSE_S
from stream_helpers import RunningServer, start_duplex_serve

ASSETS = Path(__file__).parent / "assets" / "kyutai-dsm"
RATE, FRAME = 24_000, 1920


@pytest.fixture(scope="module")
def stt(tmp_path_factory) -> Path:
    return write_random_checkpoint(tmp_path_factory.mktemp("stt"), "tiny-stt", seed=4)


def expected_lines(checkpoint: Path, audio: np.ndarray) -> list[str]:
    """What the client should print: the words of the stream it sends (1 s of silence, the file,
    5 s of silence, then the marker and more silence), read out up to the marker's step."""
    transcriber = Transcriber.from_checkpoint(checkpoint)
    stream = np.concatenate([np.zeros(RATE), audio, np.zeros(40 * RATE)]).astype(np.float32)
    before_marker = RATE + len(audio) + 5 * RATE
    marker_step = math.ceil(before_marker / FRAME) - 1 + math.ceil(transcriber.audio_delay * 12.5)
    with transcriber.streaming(1):
        transcriber.reset_row(0)
        tokens = [
            transcriber.step_frames(stream[i * FRAME : (i + 1) * FRAME][None], [0])[0][0]
            for i in range(marker_step + 1)
        ]
    reader = WordReader(transcriber.tokenizer, 12.5, transcriber.audio_delay, close_after=WORD_CLOSE_S)
    words = [w for t in tokens for w in reader.push(t)] + reader.finish()
    return [f"{w.start:7.2f} -{w.end:7.2f}  {w.text}" for w in words]


def test_kyutais_stt_client_transcribes_a_file(stt, tmp_path):
    wav = tmp_path / "speech.wav"
    subprocess.run(
        [
            "espeak-ng",
            "-w",
            str(tmp_path / "raw.wav"),
            "Hello there, how are you doing today? I would like a walk.",
        ],
        check=True,
    )
    audio = load_mono(tmp_path / "raw.wav", RATE)
    soundfile.write(str(wav), audio, RATE, subtype="FLOAT")
    expected = expected_lines(stt, audio)
    assert expected, "the random model said nothing: the test would check nothing"
    server, port = start_duplex_serve(stt, tmp_path / "serve.log", "--auth-token", "sesame")
    try:
        client = [sys.executable, str(ASSETS / "stt_from_file_rust_server.py"), str(wav)]
        client += ["--url", f"ws://127.0.0.1:{port}", "--api-key", "sesame", "--rtf", "50"]
        result = subprocess.run(client, capture_output=True, text=True, timeout=120)
    finally:
        server.terminate()
        server.wait(30)
    assert result.returncode == 0, result.stderr
    printed = [line for line in result.stdout.splitlines() if re.match(r"^\s*\d+\.\d\d -", line)]
    assert printed == expected


async def _session(port: int, messages: list[dict | bytes], query: str = "", headers=None) -> list[dict]:
    received = []
    url = f"ws://127.0.0.1:{port}/api/asr-streaming{query}"
    async with aiohttp.ClientSession() as session, session.ws_connect(url, headers=headers or {}) as ws:
        for message in messages:
            await ws.send_bytes(
                message if isinstance(message, bytes) else msgpack.packb(message, use_single_float=True)
            )
        async for frame in ws:
            if frame.type != aiohttp.WSMsgType.BINARY:
                break
            received.append(msgpack.unpackb(frame.data, raw=False))
            if received[-1]["type"] in ("Marker", "Error"):
                break
    return received


def test_markers_steps_auth_and_mistakes(stt):
    pipeline = AsrPipeline.from_checkpoint(stt)
    engine = DuplexEngine(pipeline, max_conversations=2, max_backlog_frames=256)
    silence = {"type": "Audio", "pcm": [0.0] * (10 * FRAME)}
    with RunningServer(engine, auth_token="sesame") as server:
        replies = asyncio.run(
            _session(server.port, [silence, {"type": "Marker", "id": 7}, silence], query="?auth_id=sesame")
        )
        assert replies[0] == {"type": "Ready"}
        steps = [r for r in replies if r["type"] == "Step"]
        assert [s["step_idx"] for s in steps] == list(range(len(steps)))
        assert all(len(s["prs"]) == 4 and all(0 <= p <= 1 for p in s["prs"]) for s in steps)
        assert replies[-1] == {"type": "Marker", "id": 7}
        assert len(steps) == 10 + math.ceil(
            pipeline.audio_delay * 12.5
        )  # the audio before it, plus the delay

        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            asyncio.run(_session(server.port, []))
        assert refused.value.status == 401
        headers = {"kyutai-api-key": "sesame"}
        for bad, says in (
            (b"\xc1", "not a MessagePack message"),
            ({"type": "Audio", "pcm": "loud"}, "a list of float samples"),
            ({"type": "Shout"}, "unknown message type 'Shout'"),
            ({"type": "Marker", "id": "x"}, "an integer"),
        ):
            replies = asyncio.run(_session(server.port, [bad], headers=headers))
            assert replies[-1]["type"] == "Error" and says in replies[-1]["message"], replies
