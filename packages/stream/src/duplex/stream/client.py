"""A file client: streams a wav to a server at real-time pace and records the reply and the text."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from urllib.parse import urlencode, urlsplit, urlunsplit

import aiohttp
import numpy as np
from duplex.stream import protocol
from duplex.stream.opus import SAMPLE_RATE, OpusDecoder, OpusEncoder
from duplex.stream.protocol import Kind

FRAME_SIZE = 1920  # 80 ms at 24 kHz: one model frame per message, as the reference client sends


class ServerRefused(RuntimeError):
    """The server sent an error message (kind 5) instead of serving the conversation."""


@dataclass
class TextPiece:
    time: float  # seconds since the first audio was sent
    text: str


@dataclass
class TalkResult:
    """What a client heard: the reply audio (24 kHz mono) and the text pieces, with timings."""

    reply: np.ndarray
    text: list[TextPiece] = field(default_factory=list)
    frames_sent: int = 0
    handshake_after: float | None = None  # seconds from connecting to the handshake

    @property
    def transcript(self) -> str:
        return "".join(piece.text for piece in self.text)


def with_query(url: str, **params) -> str:
    parts = urlsplit(url)
    extra = urlencode({k: v for k, v in params.items() if v is not None})
    query = "&".join(q for q in (parts.query, extra) if q)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


async def talk(
    url: str,
    pcm: np.ndarray,
    realtime: bool = True,
    idle_timeout_s: float = 3.0,
    handshake_timeout_s: float = 10.0,
    final_grace_s: float = 0.3,
    on_text=None,
) -> TalkResult:
    """Send ``pcm`` (mono float32, 24 kHz) and collect the reply until it is complete.

    The reply is complete when it is as long as the audio sent minus the model's one-frame
    start-up, or when the server has been silent for ``idle_timeout_s`` after the last frame.
    """
    pad = (-len(pcm)) % FRAME_SIZE
    pcm = np.concatenate([np.asarray(pcm, dtype=np.float32), np.zeros(pad, dtype=np.float32)])
    frames = len(pcm) // FRAME_SIZE
    expected = max(frames - 1, 0) * FRAME_SIZE
    decoder = OpusDecoder(SAMPLE_RATE)
    result = TalkResult(reply=np.zeros(0, dtype=np.float32))
    chunks: list[np.ndarray] = []
    received = 0
    started = time.monotonic()
    last_message = time.monotonic()
    sending_done = asyncio.Event()

    async with aiohttp.ClientSession() as session:
        try:
            connecting = session.ws_connect(url, max_msg_size=0)
            ws = await connecting
        except aiohttp.WSServerHandshakeError as error:
            raise ServerRefused(f"HTTP {error.status}: {error.message}") from None
        async with ws:
            first = await ws.receive(timeout=handshake_timeout_s)
            if first.type != aiohttp.WSMsgType.BINARY or not first.data:
                raise ServerRefused(f"expected the handshake, got {first.type.name}")
            if first.data[0] == Kind.ERROR:
                raise ServerRefused(first.data[1:].decode("utf-8", "replace"))
            if first.data[0] != Kind.HANDSHAKE:
                raise ServerRefused(f"expected the handshake, got message kind {first.data[0]}")
            result.handshake_after = time.monotonic() - started
            t0 = time.monotonic()

            async def send() -> None:
                encoder = OpusEncoder(SAMPLE_RATE)
                for index in range(frames):
                    if realtime:
                        await asyncio.sleep(
                            max(0.0, t0 + index * FRAME_SIZE / SAMPLE_RATE - time.monotonic())
                        )
                    pages = encoder.encode(pcm[index * FRAME_SIZE : (index + 1) * FRAME_SIZE])
                    if pages:
                        await ws.send_bytes(protocol.audio(pages))
                    result.frames_sent += 1
                sending_done.set()

            sender = asyncio.create_task(send())
            try:
                while True:
                    if received >= expected:
                        # The reply is complete; the text of its last frame follows its audio.
                        remaining = final_grace_s - (time.monotonic() - last_message)
                    else:
                        timeout = idle_timeout_s if sending_done.is_set() else max(idle_timeout_s, 30.0)
                        remaining = timeout - (time.monotonic() - last_message)
                    if remaining <= 0:
                        break
                    try:
                        message = await ws.receive(timeout=remaining)
                    except TimeoutError:
                        continue
                    if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                        break
                    if message.type == aiohttp.WSMsgType.ERROR:
                        raise ConnectionError(f"websocket error: {ws.exception()}")
                    if message.type != aiohttp.WSMsgType.BINARY or not message.data:
                        continue
                    last_message = time.monotonic()
                    kind, payload = message.data[0], message.data[1:]
                    if kind == Kind.AUDIO:
                        chunk = decoder.decode(payload)
                        chunks.append(chunk)
                        received += len(chunk)
                    elif kind == Kind.TEXT:
                        piece = TextPiece(time.monotonic() - t0, payload.decode("utf-8", "replace"))
                        result.text.append(piece)
                        if on_text is not None:
                            on_text(piece)
                    elif kind == Kind.ERROR:
                        raise ServerRefused(payload.decode("utf-8", "replace"))
                await sender
            finally:
                sender.cancel()
    result.reply = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
    return result
