"""The websocket server: /api/chat (official protocol), the web page, /metrics and /health.

Each connection takes one engine slot for its whole life and always frees it, however it ends.
What the server does with a client's messages:

* audio (kind 1): Ogg/Opus pages, decoded and pushed to the engine;
* control (kind 3), handshake (kind 0) and ping (kind 6): accepted and ignored, as the official
  server does;
* anything else (text frames, empty messages, unknown or server-only kinds, bytes that are not
  Ogg/Opus): an error message (kind 5) naming the problem, then a close. Messages over
  ``max_message_bytes`` are closed by the websocket layer with code 1009 (message too big).

Connections beyond ``max_conversations`` get an error message saying the server is full, then a
close with code 1013 (try again later). With an auth token, /api/chat and /metrics answer 401 to
requests without it (as ``?auth_token=`` or ``?worker_auth_id=`` in the query, which the official
web client can send, or an ``Authorization: Bearer`` header).

Replies are queued per connection (at most ``max_queued_replies`` frames; beyond that the oldest
are dropped and counted), and a send that does not complete in ``send_timeout_s`` closes the
connection, so a slow reader only ever hurts itself. On shutdown every open conversation is closed
with code 1001 (going away); a handler still running ``shutdown_timeout_s`` later is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import logging
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web
from duplex.stream import protocol
from duplex.stream.engine import AsyncEngine, DuplexEngine, Reply
from duplex.stream.metrics import Counter, Gauge, Histogram, render
from duplex.stream.opus import OpusDecoder, OpusEncoder, OpusError
from duplex.stream.protocol import Kind, ProtocolError
from duplex.stream.slots import SamplingParams, ServerFull

log = logging.getLogger(__name__)

WEB_DIR = Path(__file__).parent / "web"
IGNORED_CLIENT_KINDS = frozenset({Kind.HANDSHAKE, Kind.CONTROL, Kind.PING})

# Close codes (RFC 6455).
CLOSE_GOING_AWAY = 1001
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_POLICY_VIOLATION = 1008
CLOSE_TRY_AGAIN_LATER = 1013


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8998
    auth_token: str | None = None
    max_message_bytes: int = protocol.MAX_MESSAGE_BYTES
    max_queued_replies: int = 50
    send_timeout_s: float = 5.0
    shutdown_timeout_s: float = 10.0
    static_dir: Path | None = WEB_DIR


def sampling_from_query(query: Mapping[str, str], defaults: SamplingParams | None = None) -> SamplingParams:
    """Sampling parameters from the query string the official web client sends.

    The seeds (``text_seed``, ``audio_seed``) give the conversation its own random generator; a
    seed that is not an integer raises ``ValueError`` naming the parameter. Temperatures and top-k
    (``text_temperature``, ``text_topk``, ``audio_temperature``, ``audio_topk``) are not per
    conversation: every slot of the batched engine samples with the engine's settings, so these,
    like the client's other parameters (``pad_mult``, repetition penalty, ...), are ignored.
    """
    defaults = defaults or SamplingParams()

    def seed_of(name: str) -> int | None:
        raw = query.get(name)
        if raw is None or raw == "":
            return None
        try:
            return int(float(raw)) if "." in raw else int(raw)
        except ValueError:
            raise ValueError(f"query parameter {name}={raw!r} is not a valid int") from None

    text_seed = seed_of("text_seed")
    audio_seed = seed_of("audio_seed")
    if text_seed is None and audio_seed is None:
        return defaults
    return SamplingParams(seed=(text_seed or 0) * 1_000_003 + (audio_seed or 0))


class DuplexServer:
    def __init__(self, engine: DuplexEngine, config: ServerConfig | None = None) -> None:
        self.config = config or ServerConfig()
        self.engine = engine
        self.runner = AsyncEngine(engine)
        self._open_sockets: set[web.WebSocketResponse] = set()
        self.reply_latency = Histogram(
            "duplex_reply_latency_seconds",
            "Time from a user frame's arrival to its reply frame leaving the server.",
        )
        self.connections = Counter("duplex_connections_total", "Websocket connections accepted.")
        self.rejected_full = Counter("duplex_connections_rejected_full_total", "Connections refused: full.")
        self.rejected_auth = Counter("duplex_connections_rejected_auth_total", "Requests refused: no token.")
        self.protocol_errors = Counter("duplex_protocol_errors_total", "Connections closed for bad input.")
        self.replies_dropped = Counter(
            "duplex_reply_frames_dropped_total", "Reply frames dropped because a client read too slowly."
        )
        slots = engine.slots
        self._metrics = [
            Gauge("duplex_active_conversations", "Conversations now holding a slot.", lambda: slots.active),
            Gauge("duplex_max_conversations", "Slots in the engine.", lambda: slots.num_slots),
            engine.step_seconds,
            self.reply_latency,
            Gauge(
                "duplex_frames_late_total",
                "User frames that arrived late.",
                lambda: slots.total_late,
                "counter",
            ),
            Gauge(
                "duplex_frames_dropped_total",
                "User frames dropped because a client sent faster than real time.",
                lambda: slots.total_dropped,
                "counter",
            ),
            self.replies_dropped,
            self.connections,
            self.rejected_full,
            self.rejected_auth,
            self.protocol_errors,
        ]

    # -- app ------------------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.config.max_message_bytes)
        app.router.add_get("/api/chat", self.chat)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/health", self.health)
        if self.config.static_dir is not None:
            app.router.add_get("/", self.index)
            app.router.add_static("/", self.config.static_dir, show_index=False)
        app.on_startup.append(self._on_startup)
        app.on_shutdown.append(self._on_shutdown)
        app.on_cleanup.append(self._on_cleanup)
        return app

    async def _on_startup(self, _app: web.Application) -> None:
        self.runner.start()

    async def _on_shutdown(self, _app: web.Application) -> None:
        closing = [
            asyncio.wait_for(
                ws.close(code=CLOSE_GOING_AWAY, message=b"server shutting down"), self.config.send_timeout_s
            )
            for ws in list(self._open_sockets)
        ]
        await asyncio.gather(*closing, return_exceptions=True)

    async def _on_cleanup(self, _app: web.Application) -> None:
        await self.runner.stop()

    def _authorized(self, request: web.Request) -> bool:
        token = self.config.auth_token
        if token is None:
            return True
        given = request.query.get("auth_token") or request.query.get("worker_auth_id") or ""
        header = request.headers.get("Authorization", "")
        if header.startswith("Bearer "):
            given = given or header.removeprefix("Bearer ")
        return hmac.compare_digest(given.encode(), token.encode())

    # -- plain endpoints ------------------------------------------------------------------------
    async def index(self, _request: web.Request) -> web.FileResponse:
        assert self.config.static_dir is not None
        return web.FileResponse(self.config.static_dir / "index.html")

    async def health(self, _request: web.Request) -> web.Response:
        slots = self.engine.slots
        return web.json_response(
            {"status": "ok", "active_conversations": slots.active, "max_conversations": slots.num_slots}
        )

    async def metrics(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            self.rejected_auth.inc()
            raise web.HTTPUnauthorized(text="missing or wrong auth token")
        return web.Response(text=render(self._metrics), content_type="text/plain", charset="utf-8")

    # -- the conversation websocket ---------------------------------------------------------------
    async def chat(self, request: web.Request) -> web.StreamResponse:
        if not self._authorized(request):
            self.rejected_auth.inc()
            raise web.HTTPUnauthorized(text="missing or wrong auth token")
        ws = web.WebSocketResponse(max_msg_size=self.config.max_message_bytes, autoping=True)
        await ws.prepare(request)
        self._open_sockets.add(ws)
        try:
            return await self._converse(ws, request)
        finally:
            self._open_sockets.discard(ws)

    async def _converse(self, ws: web.WebSocketResponse, request: web.Request) -> web.WebSocketResponse:
        try:
            params = sampling_from_query(request.query)
        except ValueError as exc:
            await self._refuse(ws, f"bad query string: {exc}", CLOSE_POLICY_VIOLATION)
            return ws
        if params.seed is None:  # every conversation samples from its own generator
            params = dataclasses.replace(params, seed=secrets.randbelow(2**31))

        replies: asyncio.Queue[Reply] = asyncio.Queue()

        def on_reply(reply: Reply) -> None:
            if replies.qsize() >= self.config.max_queued_replies:
                replies.get_nowait()
                self.replies_dropped.inc()
            replies.put_nowait(reply)

        try:
            conversation = self.runner.join(params, on_reply)
        except ServerFull as exc:
            self.rejected_full.inc()
            await self._refuse(ws, f"server is full: {exc}; try again later", CLOSE_TRY_AGAIN_LATER)
            return ws
        self.connections.inc()
        log.info("conversation %d joined slot %d", conversation.id, conversation.slot)
        sender = asyncio.create_task(self._send_replies(ws, replies))
        try:
            await ws.send_bytes(protocol.handshake())
            await self._receive(ws, conversation)
        except (ConnectionError, aiohttp.ClientError):
            pass  # the client went away; the slot is freed below
        finally:
            self.runner.leave(conversation)
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sender
            if not ws.closed:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(ws.close(), self.config.send_timeout_s)
            log.info("conversation %d left slot %d", conversation.id, conversation.slot)
        return ws

    async def _refuse(self, ws: web.WebSocketResponse, reason: str, code: int) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ws.send_bytes(protocol.error(reason)), self.config.send_timeout_s)
            await asyncio.wait_for(
                ws.close(code=code, message=reason[:120].encode()), self.config.send_timeout_s
            )

    async def _receive(self, ws: web.WebSocketResponse, conversation) -> None:
        decoder = OpusDecoder(self.engine.sample_rate)
        async for message in ws:
            if message.type in (aiohttp.WSMsgType.ERROR, aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                break
            try:
                if message.type != aiohttp.WSMsgType.BINARY:
                    raise ProtocolError(f"only binary messages are accepted, got a {message.type.name} frame")
                parsed = protocol.decode(message.data, self.config.max_message_bytes)
                if parsed.kind == Kind.AUDIO:
                    pcm = decoder.decode(parsed.payload)
                    if len(pcm):
                        self.runner.push(conversation, pcm)
                elif parsed.kind not in IGNORED_CLIENT_KINDS:
                    raise ProtocolError(f"clients may not send {parsed.kind.name.lower()} messages")
            except (ProtocolError, OpusError) as exc:
                self.protocol_errors.inc()
                log.info("conversation %d: %s", conversation.id, exc)
                await self._refuse(ws, str(exc), CLOSE_UNSUPPORTED_DATA)
                return

    async def _send_replies(self, ws: web.WebSocketResponse, replies: asyncio.Queue[Reply]) -> None:
        encoder = OpusEncoder(self.engine.sample_rate)
        timeout = self.config.send_timeout_s
        try:
            while True:
                reply = await replies.get()
                pages = encoder.encode(reply.pcm)
                if pages:
                    await asyncio.wait_for(ws.send_bytes(protocol.audio(pages)), timeout)
                if reply.text:
                    await asyncio.wait_for(ws.send_bytes(protocol.text(reply.text)), timeout)
                self.reply_latency.observe(time.monotonic() - reply.user_frame_arrived_at)
        except (TimeoutError, ConnectionError, aiohttp.ClientError, RuntimeError) as exc:
            log.info("closing a connection that stopped reading: %r", exc)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(code=CLOSE_POLICY_VIOLATION), timeout)


async def start_server(server: DuplexServer) -> web.AppRunner:
    """Start listening; returns the runner (``await runner.cleanup()`` to stop)."""
    runner = web.AppRunner(
        server.app(), handle_signals=False, shutdown_timeout=server.config.shutdown_timeout_s
    )
    await runner.setup()
    site = web.TCPSite(runner, server.config.host, server.config.port)
    await site.start()
    return runner


def bound_port(runner: web.AppRunner) -> int:
    """The port the first site listens on (useful with port 0)."""
    for site in runner.sites:
        server = getattr(site, "_server", None)
        if server is not None and server.sockets:
            return server.sockets[0].getsockname()[1]
    raise RuntimeError("the server is not listening")


def serve_forever(server: DuplexServer) -> None:
    async def main() -> None:
        runner = await start_server(server)
        log.info("serving on http://%s:%d", server.config.host, bound_port(runner))
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
