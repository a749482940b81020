"""The reference's own Python client (moshi.client) talks to our server.

It captures a microphone and plays to a speaker through sounddevice; here a stand-in sounddevice
plays a wav file into its input callback at real-time pace and records what it is asked to play.
"""

import asyncio
import sys
import threading
import time
import types

import aiohttp
import numpy as np
from duplex.stream.engine import DuplexEngine
from stream_helpers import FRAME, SAMPLE_RATE, RunningServer, make_pipeline


class FakeStream:
    """sounddevice.InputStream / OutputStream driven by a thread ticking every block."""

    source: np.ndarray = np.zeros(0, np.float32)
    played: list[np.ndarray] = []

    def __init__(self, samplerate, channels, blocksize, callback, is_input) -> None:
        self.blocksize, self.channels, self.callback, self.is_input = blocksize, channels, callback, is_input
        self.period = blocksize / samplerate
        self._stop = threading.Event()

    def _run(self) -> None:
        start, index = time.monotonic(), 0
        while not self._stop.is_set():
            block = np.zeros((self.blocksize, self.channels), np.float32)
            if self.is_input:
                chunk = FakeStream.source[index * self.blocksize : (index + 1) * self.blocksize]
                block[: len(chunk), 0] = chunk
                self.callback(block, self.blocksize, None, None)
            else:
                self.callback(block, self.blocksize, None, None)
                FakeStream.played.append(block[:, 0].copy())
            index += 1
            self._stop.wait(max(0.0, start + index * self.period - time.monotonic()))

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


class Printer:
    def __init__(self) -> None:
        self.tokens: list[str] = []
        self.logs: list[tuple[str, str]] = []

    def print_token(self, token: str) -> None:
        self.tokens.append(token)

    def log(self, level: str, message: str) -> None:
        self.logs.append((level, message))

    def print_header(self) -> None: ...
    def print_pending(self) -> None: ...
    def print_lag(self) -> None: ...


def test_the_reference_python_client_hears_the_reply_and_reads_the_text(demo_checkpoint, speech, monkeypatch):
    sounddevice = types.ModuleType("sounddevice")
    sounddevice.InputStream = lambda **kw: FakeStream(is_input=True, **kw)
    sounddevice.OutputStream = lambda **kw: FakeStream(is_input=False, **kw)
    monkeypatch.setitem(sys.modules, "sounddevice", sounddevice)
    monkeypatch.delitem(sys.modules, "moshi.client", raising=False)
    from moshi.client import Connection

    FakeStream.source = speech
    FakeStream.played = []
    printer = Printer()
    frames = len(speech) // FRAME

    async def converse(url: str) -> None:
        async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
            connection = Connection(printer, ws, asyncio.get_running_loop())
            talking = asyncio.create_task(connection.run())
            await asyncio.sleep(len(speech) / SAMPLE_RATE + 1.5)
            await ws.close()
            await asyncio.wait_for(talking, 10)

    engine = DuplexEngine(make_pipeline(demo_checkpoint, use_sampling=False), max_conversations=2)
    with RunningServer(engine) as server:
        asyncio.run(converse(server.ws))

    heard = np.concatenate(FakeStream.played)
    voiced_blocks = sum(np.abs(block).max() > 1e-3 for block in FakeStream.played)
    assert voiced_blocks >= frames - 2  # the client's speaker played (about) one reply frame per frame
    assert np.abs(heard).max() > 0.01
    assert "".join(printer.tokens).strip()
    assert not [m for level, m in printer.logs if level == "error"]
