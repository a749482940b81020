"""Kyutai's TTS protocol (/api/tts_streaming): their own client script, unchanged, against
`duplex serve`, several streams at once, and the server's answers to mistakes."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import aiohttp
import msgpack
import numpy as np
import pytest
import soundfile
from duplex.demo.random_checkpoint import write_random_checkpoint
from duplex.lm.synthesizer import Synthesizer
from duplex.stream.engine import DuplexEngine
from duplex.stream.tts_pipeline import TtsPipeline
from stream_helpers import RunningServer, start_duplex_serve

ASSETS = Path(__file__).parent / "assets" / "kyutai-dsm"
TEXT = "Hello there, how are you doing today?"


@pytest.fixture(scope="module")
def tts(tmp_path_factory) -> Path:
    return write_random_checkpoint(tmp_path_factory.mktemp("tts"), "tiny-tts", seed=5)


def test_kyutais_tts_client_writes_the_speech(tts, tmp_path):
    (tmp_path / "text.txt").write_text(TEXT + "\n")
    out = tmp_path / "out.wav"
    server, port = start_duplex_serve(tts, tmp_path / "serve.log", "--greedy")
    try:
        client = [sys.executable, str(ASSETS / "tts_rust_server.py"), str(tmp_path / "text.txt"), str(out)]
        client += ["--url", f"ws://127.0.0.1:{port}", "--voice", "alice"]
        env = {**os.environ, "PYTHONPATH": str(ASSETS / "stub")}
        result = subprocess.run(client, capture_output=True, text=True, timeout=120, env=env)
    finally:
        server.terminate()
        server.wait(30)
    assert result.returncode == 0, result.stderr
    audio, rate = soundfile.read(str(out), dtype="float32")
    expected = Synthesizer.from_checkpoint(tts).generate([TEXT], [["alice"]], temperature=0.0)[0].audio
    assert rate == 24_000 and len(audio) == len(expected) > 0
    np.testing.assert_allclose(audio, expected, atol=1e-4)


async def _speak(port: int, query: str, words: list[str], pause_s: float = 0.0) -> list[dict]:
    received = []
    url = f"ws://127.0.0.1:{port}/api/tts_streaming?{query}"
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
        for word in words:
            await ws.send_bytes(msgpack.packb({"type": "Text", "text": word}))
            await asyncio.sleep(pause_s)
        await ws.send_bytes(msgpack.packb({"type": "Eos"}))
        async for frame in ws:
            if frame.type == aiohttp.WSMsgType.BINARY:
                received.append(msgpack.unpackb(frame.data, raw=False))
    return received


def test_streams_at_once_each_speak_as_alone(tts):
    """Three streams in one batched engine, with their own voices and seeds: each gets the audio
    and word times it would get alone, and the socket closes after its last audio."""
    synth = Synthesizer.from_checkpoint(tts)
    engine = DuplexEngine(TtsPipeline(synth, temperature=0.6), max_conversations=3)
    engine.warmup()
    requests = [
        ("voice=alice&seed=1", "Hello there."),
        ("voice=bob&seed=2", TEXT),
        ("voice=alice&seed=3", "Fine day"),
    ]
    with RunningServer(engine) as server:

        async def together():
            return await asyncio.gather(
                *[_speak(server.port, q + "&format=PcmMessagePack", text.split()) for q, text in requests]
            )

        results = asyncio.run(together())
    for (query, text), messages in zip(requests, results, strict=True):
        voice, seed = query.split("&")[0].split("=")[1], int(query.split("=")[-1])
        alone = synth.generate([text], [[voice]], temperature=0.6, seed=seed)[0]
        assert messages[0] == {"type": "Ready"}
        audio = np.concatenate([np.asarray(m["pcm"], np.float32) for m in messages if m["type"] == "Audio"])
        np.testing.assert_allclose(audio, alone.audio, atol=1e-5)
        words = [m for m in messages if m["type"] == "Text"]
        assert [w["text"] for w in words] == [w.text for w in alone.words]
        for sent, word in zip(words, alone.words, strict=True):
            assert sent["start_s"] == pytest.approx(word.start) and sent["stop_s"] == pytest.approx(word.end)


async def _say_one_word_and_leave(port: int) -> None:
    url = f"ws://127.0.0.1:{port}/api/tts_streaming?voice=alice&format=PcmMessagePack"
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
        await ws.send_bytes(msgpack.packb({"type": "Text", "text": "Hello"}))
        await asyncio.sleep(0.5)  # its stream now waits for the words it reads ahead


def test_text_that_trickles_in_speaks_as_if_sent_at_once(tts):
    """Words sent slower than the engine steps (as from a language model) give the same speech:
    the stream waits for the words it reads ahead instead of padding; a client that leaves while
    its stream waits frees its place."""
    synth = Synthesizer.from_checkpoint(tts)
    engine = DuplexEngine(TtsPipeline(synth, temperature=0.6), max_conversations=1)
    engine.warmup()
    with RunningServer(engine) as server:
        asyncio.run(_say_one_word_and_leave(server.port))
        assert server.wait_idle(30), "the stream of a client that left while it waited holds its slot"
        messages = asyncio.run(
            _speak(server.port, "voice=bob&seed=4&format=PcmMessagePack", TEXT.split(), 0.15)
        )
    alone = synth.generate([TEXT], [["bob"]], temperature=0.6, seed=4)[0]
    assert messages[0] == {"type": "Ready"}
    audio = np.concatenate([np.asarray(m["pcm"], np.float32) for m in messages if m["type"] == "Audio"])
    np.testing.assert_allclose(audio, alone.audio, atol=1e-5)
    assert [m["text"] for m in messages if m["type"] == "Text"] == [w.text for w in alone.words]


def test_mistakes_get_an_error(tts):
    engine = DuplexEngine(TtsPipeline(Synthesizer.from_checkpoint(tts)), max_conversations=1)
    with RunningServer(engine) as server:
        for query, says in (
            ("voice=alice", "format=OggOpus: this server sends PcmMessagePack"),
            ("voice=carol&format=PcmMessagePack", "unknown voice 'carol'"),
            ("voice=alice&format=PcmMessagePack&cfg_alpha=2.2", "trained for the strengths"),
            ("voice=alice&format=PcmMessagePack&temperature=0.1", "temperature is the server's"),
        ):
            messages = asyncio.run(_speak(server.port, query, ["hi"]))
            assert messages[-1]["type"] == "Error" and says in messages[-1]["message"], messages
