"""Helpers of the stream tests: a server in a thread, pipeline loading, a deterministic echo model."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from duplex.codec.interfaces import StepOutput
from duplex.stream.engine import DuplexEngine
from duplex.stream.pipeline import MoshiPipeline
from duplex.stream.server import DuplexServer, ServerConfig, bound_port, start_server
from duplex.stream.slots import SamplingParams

SAMPLE_RATE = 24_000
FRAME = 1920


def make_pipeline(checkpoint: Path, **sampling) -> MoshiPipeline:
    torch.set_num_threads(1)
    return MoshiPipeline.from_checkpoint(checkpoint, **sampling)


class RunningServer:
    """A server on 127.0.0.1 (free port) in a background thread, for the duration of a ``with``.

    Admission by step time is off unless a test sets ``overload_ratio``: a CI machine busy with
    other work steps slower than real time, and only the overload test is about that."""

    def __init__(self, engine: DuplexEngine, **config) -> None:
        config.setdefault("overload_ratio", None)
        self.server = DuplexServer(engine, ServerConfig(host="127.0.0.1", port=0, **config))
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self.port = 0

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        runner = await start_server(self.server)
        self.port = bound_port(runner)
        self._loop = asyncio.get_running_loop()
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await runner.cleanup()

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}/api/chat"

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Wait until no conversation holds a slot; whether that happened within ``timeout``."""
        deadline = time.monotonic() + timeout
        while self.server.engine.slots.active and time.monotonic() < deadline:
            time.sleep(0.02)
        return not self.server.engine.slots.active

    def __enter__(self) -> RunningServer:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the server did not start")
        return self

    def __exit__(self, *exc) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(60)
        if self._thread.is_alive():
            raise RuntimeError("the server did not shut down within 60 s")


class EchoPipeline:
    """A stand-in model: each row replies with its own previous frame, halved.

    Every 5th frame it emits the text " f<n>" (n: the row's frame count). Any mixing of rows,
    missed reset or skipped frame shows up in the numbers.
    """

    sample_rate = SAMPLE_RATE
    frame_rate = 12.5
    frame_size = FRAME

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s

    def start(self, batch_size: int) -> None:
        self.previous = np.zeros((batch_size, self.frame_size), dtype=np.float32)
        self.count = np.zeros(batch_size, dtype=np.int64)

    def stop(self) -> None:
        pass

    def reset(self, row: int, params: SamplingParams) -> None:
        self.previous[row] = 0.0
        self.count[row] = 0

    def step(self, pcm: np.ndarray, active: np.ndarray) -> StepOutput:
        if self.delay_s:
            time.sleep(self.delay_s)
        has_reply = active & (self.count > 0)
        out = np.where(has_reply[:, None], 0.5 * self.previous, 0.0).astype(np.float32)
        text = [
            f" f{self.count[r] - 1}" if has_reply[r] and (self.count[r] - 1) % 5 == 0 else None
            for r in range(len(active))
        ]
        self.previous[active] = pcm[active]
        self.count[active] += 1
        return StepOutput(out, has_reply, text)


def chromium(fake_microphone_wav):
    """Headless Chromium (selenium) whose fake microphone plays ``fake_microphone_wav`` in a loop."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if binary is None or driver is None:
        pytest.fail("the browser test needs Debian's chromium and chromium-driver (apt install them)")
    options = Options()
    options.binary_location = binary
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={fake_microphone_wav}",
        "--autoplay-policy=no-user-gesture-required",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(driver))


LISTENING = re.compile(r"serving on http://127\.0\.0\.1:(\d+)")


def start_duplex_serve(checkpoint: Path, log: Path, *options: str) -> tuple[subprocess.Popen, int]:
    """`duplex serve --checkpoint CHECKPOINT OPTIONS` on 127.0.0.1 (free port), as a user starts it;
    returns the process and its port."""
    command = [
        sys.executable,
        "-m",
        "duplex.cli.app",
        "serve",
        "--checkpoint",
        str(checkpoint),
        "--port",
        "0",
    ]
    with log.open("w") as out:
        server = subprocess.Popen(
            [*command, *options],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    deadline = time.monotonic() + 60
    while not (found := LISTENING.search(log.read_text())):
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise AssertionError(f"duplex serve did not come up:\n{log.read_text()}")
        time.sleep(0.1)
    return server, int(found.group(1))
