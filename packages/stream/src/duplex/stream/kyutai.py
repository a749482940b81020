"""Kyutai's streaming speech protocol (their moshi-server's STT and TTS endpoints), over MessagePack.

Every message is a binary websocket frame holding a MessagePack map with a ``"type"`` key
(docs/architecture.md §6.3). Kyutai's own client scripts speak it, so they work against duplex
unchanged. Authentication is the server's: header ``kyutai-api-key`` or query ``auth_id``.

``/api/asr-streaming`` (speech recognition), client to server:

* ``{"type": "Audio", "pcm": [float, ...]}``: 24 kHz mono float32 samples, any length;
* ``{"type": "Marker", "id": int}``: echoed once the audio sent before it has been transcribed
  (so the client must keep sending audio, usually silence, for the model's delay);
* ``{"type": "OggOpus", "data": bytes}``: Ogg/Opus pages instead of PCM;
* ``{"type": "Init"}``: accepted, ignored.

Server to client: ``{"type": "Ready"}`` first; ``{"type": "Word", "text", "start_time"}`` and
``{"type": "EndWord", "stop_time"}`` as words complete (at the next word's start, or after a
second without new pieces); ``{"type": "Step", "step_idx", "prs",
"buffered_pcm"}`` every step (``prs``: the pause probabilities of the semantic VAD heads);
``{"type": "Marker", "id"}``; ``{"type": "Error", "message"}`` before the server closes.

A stream reads audio only as fast as the engine steps it: past a few seconds of backlog the server
stops reading the socket (the client is slowed down by TCP, nothing is dropped), and a stream
with no audio waiting is simply left out of the batched step, so a fast or slow client changes
nothing for the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import aiohttp
import msgpack
import numpy as np
from aiohttp import web
from duplex.lm.words import WordReader
from duplex.stream.engine import Reply
from duplex.stream.opus import OpusDecoder, OpusError
from duplex.stream.protocol import ProtocolError
from duplex.stream.slots import SamplingParams, ServerFull

if TYPE_CHECKING:
    from duplex.stream.server import DuplexServer

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 1024 * 1024  # Kyutai's clients send up to a second of float PCM (120 kB) at once
BACKLOG_S = 2.0  # audio a stream may have waiting before its socket is no longer read
WORD_CLOSE_S = 1.0  # a word whose pieces stopped this long ago is sent (live streams have no end)
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_TRY_AGAIN_LATER = 1013


def pack(message: dict[str, Any]) -> bytes:
    return msgpack.packb(message, use_bin_type=True, use_single_float=True)


def unpack(data: bytes) -> dict[str, Any]:
    """A client message, checked: a map with a string ``type``."""
    try:
        message = msgpack.unpackb(data, raw=False)
    except (ValueError, msgpack.UnpackException) as error:
        raise ProtocolError(f"not a MessagePack message: {error}") from error
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ProtocolError('every message must be a MessagePack map with a string "type"')
    return message


def pcm_of(message: dict[str, Any]) -> np.ndarray:
    pcm = message.get("pcm")
    if not isinstance(pcm, list | tuple) or not all(isinstance(x, float | int) for x in pcm):
        raise ProtocolError('an Audio message needs "pcm": a list of float samples (24 kHz mono)')
    audio = np.asarray(pcm, dtype=np.float32)
    if not np.isfinite(audio).all():
        raise ProtocolError("Audio samples must be finite numbers")
    return audio


async def _serve_socket(server: DuplexServer, request: web.Request, session, max_message_bytes: int):  # noqa: ANN001, ANN202
    """Admit the request, open its websocket and run ``session(server, ws, request)`` on it."""
    server.admit_request(request)
    ws = web.WebSocketResponse(
        max_msg_size=max_message_bytes, heartbeat=server.config.heartbeat_s, compress=False
    )
    await ws.prepare(request)
    server.open_sockets.add(ws)
    try:
        await session(server, ws, request)
    finally:
        server.open_sockets.discard(ws)
    return ws


async def _join(server: DuplexServer, ws: web.WebSocketResponse, seed: int | None):  # noqa: ANN202
    """Take an engine slot for this socket: (the conversation, its replies, the eviction reasons),
    or None after telling the client that the server is full."""
    replies: asyncio.Queue[Reply | None] = asyncio.Queue()
    evicted: list[str] = []

    def on_evicted(reason: str) -> None:
        server.evictions.inc()
        evicted.append(reason)
        replies.put_nowait(None)

    try:
        conversation = server.runner.join(SamplingParams(seed=seed), replies.put_nowait, on_evicted)
    except ServerFull as error:
        server.rejected_full.inc()
        await _send_error(server, ws, f"server is full: {error}; try again later", CLOSE_TRY_AGAIN_LATER)
        return None
    server.connections.inc()
    return conversation, replies, evicted


async def _leave(server: DuplexServer, ws: web.WebSocketResponse, conversation, evicted: list[str]) -> None:  # noqa: ANN001
    server.runner.leave(conversation)
    if evicted:
        await _send_error(server, ws, f"stream stopped: {evicted[0]}", 1011)
    elif not ws.closed:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ws.close(), server.config.send_timeout_s)


async def asr_streaming(server: DuplexServer, request: web.Request) -> web.StreamResponse:
    """The ``/api/asr-streaming`` websocket: one stream of the batched STT engine."""
    limit = max(server.config.max_message_bytes, MAX_MESSAGE_BYTES)
    return await _serve_socket(server, request, _transcribe, limit)


async def _send_error(server: DuplexServer, ws: web.WebSocketResponse, message: str, code: int) -> None:
    timeout = server.config.send_timeout_s
    with contextlib.suppress(Exception):
        await asyncio.wait_for(ws.send_bytes(pack({"type": "Error", "message": message})), timeout)
        await asyncio.wait_for(ws.close(code=code, message=message[:120].encode()), timeout)


async def _transcribe(server: DuplexServer, ws: web.WebSocketResponse, _request: web.Request) -> None:
    pipeline = server.engine.pipeline
    frame_size, frame_rate = server.engine.frame_size, pipeline.frame_rate
    joined = await _join(server, ws, seed=0)
    if joined is None:
        return
    conversation, replies, evicted = joined
    stream = _AsrStream(
        reader=WordReader(pipeline.tokenizer, frame_rate, pipeline.audio_delay, close_after=WORD_CLOSE_S),
        delay_frames=math.ceil(pipeline.audio_delay * frame_rate),
        frame_size=frame_size,
    )
    sender = asyncio.create_task(_send_transcript(server, ws, replies, stream))
    try:
        await ws.send_bytes(pack({"type": "Ready"}))
        await _receive_audio(server, ws, conversation, stream)
    except (ConnectionError, aiohttp.ClientError):
        pass
    finally:
        replies.put_nowait(None)
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(sender, server.config.send_timeout_s)
        await _leave(server, ws, conversation, evicted)


class _AsrStream:
    """What one STT connection tracks: audio in, markers waiting, the word read-out."""

    def __init__(self, reader: WordReader, delay_frames: int, frame_size: int) -> None:
        self.reader = reader
        self.delay_frames = delay_frames
        self.frame_size = frame_size
        self.samples_in = 0
        self.markers: list[tuple[int, int]] = []  # (last frame before the marker, id)

    def add_marker(self, marker_id: int) -> None:
        last_frame = math.ceil(self.samples_in / self.frame_size) - 1
        self.markers.append((last_frame + self.delay_frames, marker_id))

    def due_markers(self, frame_index: int) -> list[int]:
        due = [marker_id for frame, marker_id in self.markers if frame <= frame_index]
        self.markers = [(frame, marker_id) for frame, marker_id in self.markers if frame > frame_index]
        return due


async def _receive_audio(
    server: DuplexServer, ws: web.WebSocketResponse, conversation, stream: _AsrStream
) -> None:  # noqa: ANN001
    config = server.config
    decoder: OpusDecoder | None = None
    backlog_frames = BACKLOG_S * server.engine.pipeline.frame_rate
    last_audio = time.monotonic()
    while True:
        while len(conversation.frames) >= backlog_frames and not conversation.closed:
            await asyncio.sleep(server.engine.frame_period / 2)  # let the engine catch up: backpressure
        remaining = last_audio + config.idle_timeout_s - time.monotonic()
        if remaining <= 0:
            server.closed_by_limit.labels("idle").inc()
            await _send_error(server, ws, f"no audio for {config.idle_timeout_s:g} s: closing", 1000)
            return
        try:
            message = await ws.receive(timeout=remaining)
        except TimeoutError:
            continue
        if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
            return
        if message.type == aiohttp.WSMsgType.ERROR:
            return
        try:
            if message.type != aiohttp.WSMsgType.BINARY:
                raise ProtocolError(f"messages are binary MessagePack maps, got a {message.type.name} frame")
            parsed = unpack(message.data)
            kind = parsed["type"]
            if kind == "Audio":
                pcm = pcm_of(parsed)
            elif kind == "OggOpus":
                decoder = decoder or OpusDecoder(server.engine.sample_rate)
                data = parsed.get("data")
                if not isinstance(data, bytes):
                    raise ProtocolError('an OggOpus message needs "data": bytes of Ogg pages')
                pcm = decoder.decode(data)
            elif kind == "Marker":
                if not isinstance(parsed.get("id"), int):
                    raise ProtocolError('a Marker message needs an integer "id"')
                stream.add_marker(parsed["id"])
                continue
            elif kind == "Init":
                continue
            else:
                raise ProtocolError(
                    f"unknown message type {kind!r} (expected Audio, OggOpus, Marker or Init)"
                )
        except (ProtocolError, OpusError) as error:
            server.protocol_errors.inc()
            await _send_error(server, ws, str(error), CLOSE_UNSUPPORTED_DATA)
            return
        if len(pcm):
            last_audio = time.monotonic()
            stream.samples_in += len(pcm)
            server.runner.push(conversation, pcm)


async def _send_transcript(
    server: DuplexServer, ws: web.WebSocketResponse, replies: asyncio.Queue[Reply | None], stream: _AsrStream
) -> None:
    timeout = server.config.send_timeout_s
    try:
        while (reply := await replies.get()) is not None:
            messages = []
            for word in stream.reader.push(int(reply.tokens[0])):
                messages.append({"type": "Word", "text": word.text, "start_time": word.start})
                messages.append({"type": "EndWord", "stop_time": word.end})
            prs = [] if reply.extra is None else [float(p) for p in reply.extra]
            messages.append({"type": "Step", "step_idx": reply.frame_index, "prs": prs, "buffered_pcm": 0})
            due = stream.due_markers(reply.frame_index)
            if due:  # the audio before the marker is transcribed: its last word ends here
                for word in stream.reader.finish():
                    messages.append({"type": "Word", "text": word.text, "start_time": word.start})
                    messages.append({"type": "EndWord", "stop_time": word.end})
            messages += [{"type": "Marker", "id": i} for i in due]
            for message in messages:
                await asyncio.wait_for(ws.send_bytes(pack(message)), timeout)
            server.reply_latency.observe(time.monotonic() - reply.user_frame_arrived_at)
    except (TimeoutError, ConnectionError, aiohttp.ClientError, RuntimeError) as error:
        log.info("closing an STT connection that stopped reading: %r", error)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ws.close(code=1008), timeout)


# -- text-to-speech --------------------------------------------------------------------------------
TTS_FORMATS = ("PcmMessagePack",)
TICKS_AHEAD = 2  # steps a TTS stream may have waiting in the engine


def tts_query(query, synth, cfg: float, temperature: float) -> dict[str, Any]:  # noqa: ANN001
    """The stream's settings from Kyutai's query parameters (``voice``, ``voices``, ``seed``,
    ``cfg_alpha``, ``temperature``, ``max_seq_len``, ``format``), checked."""
    fmt = query.get("format", "OggOpus")
    if fmt not in TTS_FORMATS:
        raise ValueError(
            f"format={fmt}: this server sends {', '.join(TTS_FORMATS)} (pass format=PcmMessagePack)"
        )
    if "temperature" in query and float(query["temperature"]) != temperature:
        raise ValueError(
            f"temperature is the server's ({temperature:g}): start duplex serve with --temperature"
        )
    stream_cfg = float(query.get("cfg_alpha", cfg))
    if stream_cfg != cfg and synth.cfg_values is None:
        raise ValueError(f"cfg_alpha is the server's ({cfg:g}) for this model: start duplex serve with --cfg")
    voices = [v for v in query.get("voices", query.get("voice", "")).split(",") if v]
    seed = int(query["seed"]) if "seed" in query else None
    max_steps = int(query.get("max_seq_len", 10**9))
    if max_steps < 1:
        raise ValueError(f"max_seq_len must be >= 1, got {max_steps}")
    return {
        "conditions": synth.conditions(voices or synth.default_voices(), stream_cfg),
        "seed": seed,
        "max_steps": max_steps,
    }


async def tts_streaming(server: DuplexServer, request: web.Request) -> web.StreamResponse:
    """The ``/api/tts_streaming`` websocket: one speech stream of the batched TTS engine."""
    return await _serve_socket(server, request, _speak, server.config.max_message_bytes)


async def _speak(server: DuplexServer, ws: web.WebSocketResponse, request: web.Request) -> None:
    pipeline = server.engine.pipeline
    try:
        settings = tts_query(request.query, pipeline.synth, pipeline.cfg, pipeline.temperature)
    except (ValueError, OSError) as error:
        server.protocol_errors.inc()
        await _send_error(server, ws, f"bad query string: {error}", 1008)
        return
    joined = await _join(server, ws, settings["seed"])
    if joined is None:
        return
    conversation, replies, evicted = joined
    pipeline.open_row(conversation.slot, **settings)
    tick = np.zeros(server.engine.frame_size, dtype=np.float32)
    ticks = _Ticks(lambda: server.runner.push(conversation, tick))
    receiver = asyncio.create_task(_receive_text(server, ws, pipeline, conversation.slot, ticks))
    try:
        await ws.send_bytes(pack({"type": "Ready"}))
        for _ in range(TICKS_AHEAD):
            ticks.push()
        await _send_speech(server, ws, replies, ticks, conversation.slot, receiver)
    except (ConnectionError, aiohttp.ClientError, TimeoutError):
        pass
    finally:
        receiver.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await receiver
        await _leave(server, ws, conversation, evicted)


class _Ticks:
    """A TTS stream's requests for a step. A step that found too little text to read ahead parks
    its tick; the next text message (or the client's leaving) sends the parked ticks again. Both
    sides run on the event loop, so parking and releasing never interleave."""

    def __init__(self, push: Callable[[], None]) -> None:
        self.push, self.parked = push, 0

    def park(self) -> None:
        self.parked += 1

    def release(self) -> None:
        for _ in range(self.parked):
            self.push()
        self.parked = 0


async def _send_speech(
    server: DuplexServer, ws, replies, ticks: _Ticks, row: int, receiver: asyncio.Task
) -> None:  # noqa: ANN001, E501
    timeout = server.config.send_timeout_s
    pipeline = server.engine.pipeline
    while (reply := await replies.get()) is not None:
        step = reply.extra
        if step.waiting:  # not stepped: step again once the text it lacked has come
            if pipeline.has_queued_text(row):  # it came after the step began
                ticks.push()
            elif receiver.done():  # and none will come
                return
            else:
                ticks.park()
            continue
        if step.pcm is not None:
            message = {"type": "Audio", "pcm": [float(x) for x in step.pcm]}
            await asyncio.wait_for(ws.send_bytes(pack(message)), timeout)
        for word in step.words:
            message = {"type": "Text", "text": word.text, "start_s": word.start, "stop_s": word.end}
            await asyncio.wait_for(ws.send_bytes(pack(message)), timeout)
        if step.finished:
            return
        ticks.push()  # the next step, now that this one is sent (a slow reader slows its own stream)


async def _receive_text(server: DuplexServer, ws, pipeline, row: int, ticks: _Ticks) -> None:  # noqa: ANN001
    """Hand the client's text to ``row`` as it comes, releasing the parked ticks after each message
    and when the client stops sending."""
    config = server.config
    try:
        while True:
            try:
                message = await ws.receive(timeout=config.idle_timeout_s)
            except TimeoutError:
                server.closed_by_limit.labels("idle").inc()
                await _send_error(server, ws, f"no text for {config.idle_timeout_s:g} s: closing", 1000)
                return
            if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
                return
            if message.type == aiohttp.WSMsgType.ERROR:
                return
            try:
                _take_text_message(pipeline, row, message)
            except ProtocolError as error:
                server.protocol_errors.inc()
                await _send_error(server, ws, str(error), CLOSE_UNSUPPORTED_DATA)
                return
            ticks.release()
    finally:
        ticks.release()


def _take_text_message(pipeline, row: int, message: aiohttp.WSMessage) -> None:  # noqa: ANN001
    if message.type == aiohttp.WSMsgType.TEXT:  # a plain text frame is text to say
        pipeline.add_text(row, message.data)
        return
    if message.data == b"\0":  # the binary end of text
        pipeline.close_text(row)
        return
    parsed = unpack(message.data)
    kind = parsed["type"]
    if kind == "Text":
        if not isinstance(parsed.get("text"), str):
            raise ProtocolError('a Text message needs "text": a string')
        pipeline.add_text(row, parsed["text"])
    elif kind == "Eos":
        pipeline.close_text(row)
    elif kind == "Voice":
        raise ProtocolError("Voice messages are not supported: choose the voice with ?voice=NAME")
    else:
        raise ProtocolError(f"unknown message type {kind!r} (expected Text or Eos)")
