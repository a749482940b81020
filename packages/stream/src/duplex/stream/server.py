"""The websocket server: /api/chat (official protocol), the web page, /metrics and /health.

Each connection takes one engine slot for its whole life and always frees it, however it ends.
What the server does with a client's messages:

* audio (kind 1): Ogg/Opus pages, decoded and pushed to the engine;
* control (kind 3), handshake (kind 0) and ping (kind 6): accepted and ignored, as the official
  server does;
* anything else (text frames, empty messages, unknown or server-only kinds, bytes that are not
  Ogg/Opus): an error message (kind 5) naming the problem, then a close. Messages over
  ``max_message_bytes`` are refused by the websocket layer at the frame header, before any of the
  payload is read, with code 1009 (message too big).

Admission, in order: the ``Origin`` of a browser must be this server's own or one of
``allowed_origins`` (else HTTP 403); with an auth token the request must carry it (else 401: as
``?auth_token=`` or ``?worker_auth_id=`` in the query, which the official web client can send, an
``Authorization: Bearer`` header or Kyutai's ``kyutai-api-key`` header); every query parameter the
official client sends must be in its range (:data:`QUERY_PARAMS`; else kind 5 naming it, then a
close); when the recent p95 step time exceeds ``overload_ratio`` times the frame budget the server
is overloaded (kind 5, close 1013), and when every slot is taken it is full (kind 5, close 1013).

Limits, each in :class:`ServerConfig` (``duplex serve`` flags) and exported in /metrics:

* at most ``max_connections`` open TCP connections (beyond: HTTP 503 and a close), never more than
  the file-descriptor limit allows; a request's headers must arrive within ``header_timeout_s``;
* per conversation: ``max_messages_per_s`` messages and ``max_bytes_per_s`` bytes (beyond, with a
  two-second burst: kind 5 and a close); the audio decoded, counted from each Opus packet's TOC
  byte before decoding, at most ``max_audio_rate`` times real time (beyond a ``audio_burst_s``
  burst, pages are dropped undecoded and counted), so decoding never holds the event loop long;
* a conversation without audio for ``idle_timeout_s`` is closed; a websocket ping every
  ``heartbeat_s`` closes dead peers.

Replies are queued per connection (at most ``max_queued_replies`` frames; beyond that the oldest
are dropped and counted), and a send that does not complete in ``send_timeout_s`` closes the
connection, so a slow reader only ever hurts itself. When a conversation's audio is being dropped,
it is told at most once a second with a metadata message (kind 4, ``{"dropping_audio": ...}``),
which the web page shows. On shutdown (SIGINT or SIGTERM with :func:`serve_forever`) every open
conversation is closed with code 1001 (going away) and the engine stopped; a handler still running
``shutdown_timeout_s`` later is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import hmac
import logging
import math
import secrets
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

import aiohttp
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from duplex.stream import protocol
from duplex.stream.engine import AsyncEngine, DuplexEngine, Reply
from duplex.stream.metrics import Counter, Gauge, Histogram, LabeledCounter, LabeledGauge, Metric, render
from duplex.stream.opus import OpusDecoder, OpusEncoder, OpusError
from duplex.stream.protocol import Kind, ProtocolError
from duplex.stream.slots import Conversation, SamplingParams, ServerFull
from pydantic import BaseModel, ConfigDict, Field, field_validator

log = logging.getLogger(__name__)

WEB_DIR = Path(__file__).parent / "web"
IGNORED_CLIENT_KINDS = frozenset({Kind.HANDSHAKE, Kind.CONTROL, Kind.PING})

# Close codes (RFC 6455).
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_POLICY_VIOLATION = 1008
CLOSE_INTERNAL_ERROR = 1011
CLOSE_TRY_AGAIN_LATER = 1013

BURST_S = 2.0  # the message and byte budgets allow this many seconds' worth at once
FD_RESERVE = 32  # file descriptors kept for everything but client connections
CLOSE_REASONS = ("header_timeout", "idle", "heartbeat", "message_rate", "byte_rate")
DROP_REPORT_PERIOD_S = 1.0


# -- the query string -----------------------------------------------------------------------------
@dataclass(frozen=True)
class QueryParam:
    """A query parameter of the official web client: integer or real, within ``[low, high]``."""

    integer: bool
    low: float
    high: float

    def describe(self) -> str:
        if self.integer:
            return f"an integer in {int(self.low)}..{int(self.high)}"
        return f"a number in {self.low:g}..{self.high:g}"


SEED_MAX = 2**32 - 1
QUERY_PARAMS: dict[str, QueryParam] = {
    "text_seed": QueryParam(True, 0, SEED_MAX),
    "audio_seed": QueryParam(True, 0, SEED_MAX),
    "text_temperature": QueryParam(False, 0.0, 10.0),
    "audio_temperature": QueryParam(False, 0.0, 10.0),
    "text_topk": QueryParam(True, 0, 100_000),
    "audio_topk": QueryParam(True, 0, 100_000),
    "pad_mult": QueryParam(False, -10.0, 10.0),
    "repetition_penalty": QueryParam(False, 0.0, 10.0),
    "repetition_penalty_context": QueryParam(True, 0, 100_000),
}
SECRET_PARAMS = ("auth_token", "worker_auth_id", "auth_id")  # auth_id: Kyutai's STT/TTS clients
MAX_PARAM_CHARS = 40  # any valid number is shorter; longer ones are refused before parsing
MAX_SECRET_CHARS = 1024


def parse_query_param(name: str, raw: str) -> float | int:
    """One numeric query parameter, checked against :data:`QUERY_PARAMS` (``ValueError`` naming it)."""
    spec = QUERY_PARAMS[name]
    wanted = f"give {spec.describe()}"
    if len(raw) > MAX_PARAM_CHARS:
        raise ValueError(f"query parameter {name} of {len(raw)} characters is not a valid number: {wanted}")
    try:
        value: float | int = int(raw)
    except ValueError:
        try:
            value = float(raw)
        except ValueError:
            kind = "int" if spec.integer else "number"
            raise ValueError(f"query parameter {name}={raw!r} is not a valid {kind}: {wanted}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"query parameter {name}={raw!r} is not finite: {wanted}")
    if spec.integer and not float(value).is_integer():
        raise ValueError(f"query parameter {name}={raw!r} is not a valid int: {wanted}")
    if not spec.low <= value <= spec.high:
        raise ValueError(f"query parameter {name}={raw} is out of range: {wanted}")
    return int(value) if spec.integer else float(value)


def validate_query(query: Mapping[str, str]) -> dict[str, float | int]:
    """Every known query parameter, parsed and range-checked; a ``ValueError`` names the first bad one.

    Parameters given twice are refused; unknown ones (prompts, newer clients' fields) are ignored.
    """
    getall = getattr(query, "getall", None)
    values: dict[str, float | int] = {}
    for name in (*QUERY_PARAMS, *SECRET_PARAMS):
        given = getall(name, []) if getall is not None else ([query[name]] if name in query else [])
        if len(given) > 1:
            raise ValueError(f"query parameter {name} is given {len(given)} times: give it once")
        if not given or given[0] == "":
            continue
        if name in SECRET_PARAMS:
            if len(given[0]) > MAX_SECRET_CHARS:
                raise ValueError(f"query parameter {name} is longer than {MAX_SECRET_CHARS} characters")
            continue
        values[name] = parse_query_param(name, given[0])
    return values


def sampling_from_query(query: Mapping[str, str], defaults: SamplingParams | None = None) -> SamplingParams:
    """Sampling parameters from the query string the official web client sends.

    Every parameter is validated (:func:`validate_query`: ``ValueError`` naming the parameter and
    its range). The seeds (``text_seed``, ``audio_seed``) give the conversation its own random
    generator. Temperatures, top-k and the client's other parameters (``pad_mult``, repetition
    penalty) are not per conversation: every slot of the batched engine samples with the engine's
    settings, so they are checked and then ignored.
    """
    defaults = defaults or SamplingParams()
    values = validate_query(query)
    text_seed, audio_seed = values.get("text_seed"), values.get("audio_seed")
    if text_seed is None and audio_seed is None:
        return defaults
    return SamplingParams(seed=int(text_seed or 0) * 1_000_003 + int(audio_seed or 0))


# -- configuration ---------------------------------------------------------------------------------
class ServerConfig(BaseModel):
    """Everything ``duplex serve`` can set; out-of-range values are refused when the config is built."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(8998, ge=0, le=65535)
    auth_token: str | None = None
    allowed_origins: tuple[str, ...] = ()  # besides the server's own; "*" allows any
    static_dir: Path | None = WEB_DIR
    max_message_bytes: int = Field(protocol.MAX_MESSAGE_BYTES, ge=1024, le=16 * 1024 * 1024)
    max_queued_replies: int = Field(50, ge=1)
    send_timeout_s: float = Field(5.0, gt=0)
    shutdown_timeout_s: float = Field(10.0, gt=0)
    max_connections: int = Field(256, ge=1)
    header_timeout_s: float = Field(10.0, gt=0)
    idle_timeout_s: float = Field(60.0, gt=0)
    heartbeat_s: float | None = Field(20.0, gt=0)
    max_messages_per_s: float = Field(100.0, gt=0)
    max_bytes_per_s: float = Field(128 * 1024, gt=0)
    max_audio_rate: float = Field(1.5, ge=1.0)
    audio_burst_s: float = Field(2.0, gt=0)
    overload_ratio: float | None = Field(1.0, gt=0)
    overload_window_s: float = Field(5.0, gt=0)

    @field_validator("auth_token")
    @classmethod
    def _token_not_empty(cls, token: str | None) -> str | None:
        if token is not None and not token.strip():
            raise ValueError(
                "the auth token is empty: give a non-empty --auth-token / DUPLEX_AUTH_TOKEN, "
                "or leave both unset to serve without auth"
            )
        return token

    @field_validator("allowed_origins")
    @classmethod
    def _normalise_origins(cls, origins: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(normalise_origin(origin) for origin in origins)

    @field_validator("static_dir")
    @classmethod
    def _static_has_index(cls, static_dir: Path | None) -> Path | None:
        if static_dir is not None and not (Path(static_dir) / "index.html").is_file():
            raise ValueError(
                f"static directory {static_dir} has no index.html: point it at a built web client"
            )
        return static_dir


def normalise_origin(origin: str) -> str:
    """``scheme://host[:port]`` in lower case (``*`` stays ``*``)."""
    origin = origin.strip().rstrip("/").lower()
    if origin == "*":
        return origin
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path:
        raise ValueError(f"allowed origin {origin!r} must look like https://host[:port] (or be *)")
    return f"{parts.scheme}://{parts.netloc}"


# -- budgets ---------------------------------------------------------------------------------------
@dataclass
class TokenBucket:
    """``rate`` tokens a second, at most ``capacity`` saved up (starts full)."""

    rate: float
    capacity: float
    tokens: float = -1.0
    stamp: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        if self.tokens < 0:
            self.tokens = self.capacity

    def take(self, amount: float = 1.0, now: float | None = None) -> bool:
        """Take ``amount`` tokens if there are enough; False (nothing taken) otherwise."""
        now = time.monotonic() if now is None else now
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < amount:
            return False
        self.tokens -= amount
        return True


@dataclass
class ConnectionBudget:
    """What one conversation may still send: messages, bytes and audio (in samples)."""

    messages: TokenBucket
    bytes: TokenBucket
    audio: TokenBucket
    audio_dropped: int = 0  # samples dropped for arriving faster than max_audio_rate x real time
    reported_drops: float = 0.0
    last_report: float = -math.inf

    @classmethod
    def from_config(cls, config: ServerConfig, sample_rate: int) -> ConnectionBudget:
        return cls(
            messages=TokenBucket(config.max_messages_per_s, config.max_messages_per_s * BURST_S),
            bytes=TokenBucket(
                config.max_bytes_per_s, max(config.max_bytes_per_s * BURST_S, config.max_message_bytes)
            ),
            audio=TokenBucket(config.max_audio_rate * sample_rate, config.audio_burst_s * sample_rate),
        )


# -- the access log --------------------------------------------------------------------------------
SECRET_KEY_WORDS = ("token", "auth", "key", "secret", "password")


def redact_query(path_qs: str) -> str:
    """``path?query`` with the value of every secret-looking parameter replaced by ``REDACTED``."""
    path, sep, query = path_qs.partition("?")
    if not sep:
        return path
    items = []
    for item in query.split("&"):
        key, eq, _value = item.partition("=")
        secret = eq and any(word in unquote(key).lower() for word in SECRET_KEY_WORDS)
        items.append(f"{key}=REDACTED" if secret else item)
    return f"{path}?{'&'.join(items)}"


class RedactingAccessLogger(AbstractAccessLogger):
    """One line per request, as aiohttp's default, but secrets in the query string are redacted."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info(
            '%s "%s %s HTTP/%d.%d" %d %d %.3fs',
            request.remote,
            request.method,
            redact_query(request.path_qs),
            request.version.major,
            request.version.minor,
            response.status,
            response.body_length,
            time,
        )

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)


# -- connection gate: cap and header timeout -------------------------------------------------------
def fd_connection_limit(wanted: int) -> int:
    """``wanted``, lowered to what the process's file-descriptor limit leaves for clients."""
    try:
        import resource

        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):
        return wanted
    if soft == resource.RLIM_INFINITY or soft - FD_RESERVE >= wanted:
        return wanted
    limit = max(1, soft - FD_RESERVE)
    log.warning(
        "max_connections %d lowered to %d by the file-descriptor limit (ulimit -n %d)", wanted, limit, soft
    )
    return limit


class _Refusal(asyncio.Protocol):
    """The protocol of a connection over the cap: a 503 and a close, nothing read."""

    BODY = b"too many open connections; try again later\n"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nConnection: close\r\n"
            + f"Content-Length: {len(self.BODY)}\r\n\r\n".encode()
            + self.BODY
        )
        transport.close()


class _GatedHandler(web.RequestHandler):
    """aiohttp's connection handler, counted by the gate and closed if no request arrives in time."""

    def __init__(self, gate: ConnectionGate, manager: web.Server, **kwargs) -> None:
        super().__init__(manager, **kwargs)
        self.gate = gate
        self.requested = False
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        loop = asyncio.get_running_loop()
        self._header_timer = loop.call_later(self.gate.header_timeout_s, self._header_timeout)

    def request_started(self) -> None:
        self.requested = True
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if not self.requested:
            self.gate.header_timeouts.inc()
            self.force_close()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        self.gate.open -= 1
        super().connection_lost(exc)


class ConnectionGate:
    """The protocol factory of the listening socket: a capped number of connections, each with a
    deadline for its first request's headers."""

    def __init__(self, config: ServerConfig, header_timeouts: Counter, rejected: Counter) -> None:
        self.max_connections = fd_connection_limit(config.max_connections)
        self.header_timeout_s = config.header_timeout_s
        self.header_timeouts = header_timeouts
        self.rejected = rejected
        self.open = 0
        self.server: web.Server | None = None
        self.handler_kwargs = {
            "keepalive_timeout": 2 * config.header_timeout_s,
            "access_log_class": RedactingAccessLogger,
        }

    def __call__(self) -> asyncio.BaseProtocol:
        assert self.server is not None, "the gate serves once the runner is set up"
        if self.open >= self.max_connections:
            self.rejected.inc()
            return _Refusal()
        self.open += 1
        return _GatedHandler(self, self.server, loop=asyncio.get_running_loop(), **self.handler_kwargs)


@web.middleware
async def _mark_request_started(request: web.Request, handler):
    connection = request.protocol
    if isinstance(connection, _GatedHandler):
        connection.request_started()
    return await handler(request)


class DuplexRunner(web.AppRunner):
    """An AppRunner that listens through a :class:`ConnectionGate` (``await runner.cleanup()`` stops)."""

    def __init__(self, server: DuplexServer) -> None:
        self.gate = server.gate
        super().__init__(
            server.app(),
            handle_signals=False,
            shutdown_timeout=server.config.shutdown_timeout_s,
            **self.gate.handler_kwargs,
        )
        self.listener: asyncio.Server | None = None

    async def listen(self, host: str, port: int) -> None:
        assert self.server is not None, "call setup() first"
        self.gate.server = self.server
        loop = asyncio.get_running_loop()
        self.listener = await loop.create_server(self.gate, host, port, reuse_address=True, backlog=128)

    @property
    def port(self) -> int:
        if self.listener is None or not self.listener.sockets:
            raise RuntimeError("the server is not listening")
        return self.listener.sockets[0].getsockname()[1]

    async def cleanup(self) -> None:
        if self.listener is not None:
            self.listener.close()
        await super().cleanup()


# -- the server ------------------------------------------------------------------------------------
class DuplexServer:
    def __init__(self, engine: DuplexEngine, config: ServerConfig | None = None) -> None:
        self.config = config or ServerConfig()
        self.engine = engine
        self.runner = AsyncEngine(engine)
        self.open_sockets: set[web.WebSocketResponse] = set()
        self._tasks: set[asyncio.Task] = set()
        self.reply_latency = Histogram(
            "duplex_reply_latency_seconds",
            "Time from a user frame's arrival to its reply frame leaving the server.",
        )
        self.connections = Counter("duplex_connections_total", "Websocket connections accepted.")
        self.rejected_full = Counter("duplex_connections_rejected_full_total", "Connections refused: full.")
        self.rejected_auth = Counter("duplex_connections_rejected_auth_total", "Requests refused: no token.")
        self.rejected_origin = Counter(
            "duplex_connections_rejected_origin_total", "Websocket requests refused: origin not allowed."
        )
        self.rejected_overload = Counter(
            "duplex_connections_rejected_overload_total",
            "Conversations refused because the recent p95 step time exceeded the frame budget.",
        )
        self.rejected_cap = Counter(
            "duplex_connections_rejected_cap_total", "TCP connections refused: max_connections reached."
        )
        self.protocol_errors = Counter("duplex_protocol_errors_total", "Connections closed for bad input.")
        self.evictions = Counter("duplex_conversations_evicted_total", "Conversations the engine evicted.")
        self.replies_dropped = Counter(
            "duplex_reply_frames_dropped_total", "Reply frames dropped because a client read too slowly."
        )
        self.audio_rate_dropped = Counter(
            "duplex_audio_rate_dropped_frames_total",
            "User audio (in frames) dropped for arriving faster than max_audio_rate x real time.",
        )
        self.closed_by_limit = LabeledCounter(
            "duplex_connections_closed_total",
            "Connections the server closed, by limit.",
            "reason",
            CLOSE_REASONS,
        )
        self.gate = ConnectionGate(
            self.config, self.closed_by_limit.labels("header_timeout"), self.rejected_cap
        )
        slots = engine.slots
        config = self.config
        self._metrics: list[Metric] = [
            Gauge("duplex_active_conversations", "Conversations now holding a slot.", lambda: slots.active),
            Gauge("duplex_max_conversations", "Slots in the engine.", lambda: slots.num_slots),
            engine.step_seconds,
            Gauge(
                "duplex_step_seconds_recent_p95",
                "p95 step time over the admission window (0: too few steps).",
                lambda: engine.recent_step_p95(config.overload_window_s) or 0.0,
            ),
            Gauge("duplex_frame_budget_seconds", "One frame period.", lambda: engine.frame_period),
            Gauge(
                "duplex_overloaded", "1 while new conversations are refused as overloaded.", self._overloaded
            ),
            self.reply_latency,
            Gauge(
                "duplex_frames_late_total",
                "User frames that arrived late.",
                lambda: slots.total_late,
                "counter",
            ),
            Gauge(
                "duplex_frames_dropped_total",
                "User frames dropped because a client sent faster than the engine stepped it.",
                lambda: slots.total_dropped,
                "counter",
            ),
            LabeledGauge(
                "duplex_dropped_frames_total",
                "Frames dropped, by reason: backlog (user frames beyond the slot's backlog: client too "
                "fast or server too slow), audio_rate (user audio beyond max_audio_rate x real time), "
                "slow_reader (reply frames a client did not read in time).",
                "reason",
                {
                    "backlog": lambda: slots.total_dropped,
                    "audio_rate": lambda: self.audio_rate_dropped.value,
                    "slow_reader": lambda: self.replies_dropped.value,
                },
                "counter",
            ),
            self.replies_dropped,
            self.audio_rate_dropped,
            self.connections,
            self.rejected_full,
            self.rejected_auth,
            self.rejected_origin,
            self.rejected_overload,
            self.rejected_cap,
            self.protocol_errors,
            self.evictions,
            self.closed_by_limit,
            Gauge("duplex_open_connections", "Open TCP connections.", lambda: self.gate.open),
            Gauge(
                "duplex_max_connections",
                "TCP connections allowed at once.",
                lambda: self.gate.max_connections,
            ),
            Gauge(
                "duplex_header_timeout_seconds",
                "Deadline for a request's headers.",
                lambda: config.header_timeout_s,
            ),
            Gauge(
                "duplex_idle_timeout_seconds",
                "A conversation without audio is closed after this.",
                lambda: config.idle_timeout_s,
            ),
            Gauge(
                "duplex_heartbeat_seconds",
                "Websocket ping period (0: off).",
                lambda: config.heartbeat_s or 0.0,
            ),
            Gauge(
                "duplex_max_messages_per_second",
                "Messages a conversation may send per second.",
                lambda: config.max_messages_per_s,
            ),
            Gauge(
                "duplex_max_audio_rate",
                "Audio a conversation may send, in multiples of real time.",
                lambda: config.max_audio_rate,
            ),
        ]

    # -- app ------------------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(
            client_max_size=self.config.max_message_bytes, middlewares=[_mark_request_started]
        )
        # A pipeline may bring its own websocket endpoints (path -> handler(server, request)), as the
        # STT and TTS pipelines do; a dialogue pipeline is served at /api/chat with the web page.
        endpoints = getattr(self.engine.pipeline, "endpoints", None)
        if endpoints is None:
            app.router.add_get("/api/chat", self.chat)
        for path, handler in (endpoints or {}).items():
            app.router.add_get(path, functools.partial(handler, self))
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/health", self.health)
        if self.config.static_dir is not None and endpoints is None:
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
            for ws in list(self.open_sockets)
        ]
        await asyncio.gather(*closing, return_exceptions=True)

    async def _on_cleanup(self, _app: web.Application) -> None:
        await self.runner.stop()

    # -- admission ------------------------------------------------------------------------------
    def authorized(self, request: web.Request) -> bool:
        token = self.config.auth_token
        if token is None:
            return True
        expected = token.encode("utf-8", "surrogateescape")
        candidates = [request.query.get(name, "") for name in SECRET_PARAMS]
        header = request.headers.get("Authorization", "")
        if header.startswith("Bearer "):
            candidates.append(header.removeprefix("Bearer "))
        candidates.append(request.headers.get("kyutai-api-key", ""))
        # Every candidate is compared, so the time taken does not tell which one was there.
        matches = [
            hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected)
            for given in candidates
            if given
        ]
        return any(matches)

    def origin_allowed(self, request: web.Request) -> bool:
        origin = request.headers.get("Origin")
        if origin is None:  # not a browser: nothing to protect against
            return True
        allowed = self.config.allowed_origins
        if "*" in allowed:
            return True
        try:
            origin = normalise_origin(origin)
        except ValueError:
            return False
        return urlsplit(origin).netloc == request.host.lower() or origin in allowed

    def _overloaded(self) -> bool:
        ratio = self.config.overload_ratio
        if ratio is None:
            return False
        p95 = self.engine.recent_step_p95(self.config.overload_window_s)
        return p95 is not None and p95 > ratio * self.engine.frame_period

    # -- plain endpoints ------------------------------------------------------------------------
    async def index(self, _request: web.Request) -> web.FileResponse:
        assert self.config.static_dir is not None
        return web.FileResponse(self.config.static_dir / "index.html")

    async def health(self, _request: web.Request) -> web.Response:
        slots = self.engine.slots
        return web.json_response(
            {
                "status": "ok",
                "active_conversations": slots.active,
                "max_conversations": slots.num_slots,
                "overloaded": self._overloaded(),
            }
        )

    async def metrics(self, request: web.Request) -> web.Response:
        if not self.authorized(request):
            self.rejected_auth.inc()
            raise web.HTTPUnauthorized(text="missing or wrong auth token")
        return web.Response(text=render(self._metrics), content_type="text/plain", charset="utf-8")

    # -- the conversation websocket ---------------------------------------------------------------
    def admit_request(self, request: web.Request) -> None:
        """Refuse a websocket request from a foreign page (403) or without the token (401)."""
        if not self.origin_allowed(request):
            self.rejected_origin.inc()
            raise web.HTTPForbidden(
                text="this page's origin may not open conversations: serve the page from this server "
                "or allow its origin (duplex serve --allow-origin)"
            )
        if not self.authorized(request):
            self.rejected_auth.inc()
            raise web.HTTPUnauthorized(text="missing or wrong auth token")

    async def chat(self, request: web.Request) -> web.StreamResponse:
        self.admit_request(request)
        ws = web.WebSocketResponse(
            max_msg_size=self.config.max_message_bytes,
            autoping=False,  # pings are answered here, so they count against the message budget
            heartbeat=self.config.heartbeat_s,
            compress=False,
        )
        await ws.prepare(request)
        self.open_sockets.add(ws)
        try:
            return await self._converse(ws, request)
        finally:
            self.open_sockets.discard(ws)

    async def _converse(self, ws: web.WebSocketResponse, request: web.Request) -> web.WebSocketResponse:
        try:
            params = sampling_from_query(request.query)
        except ValueError as exc:
            await self._refuse(ws, f"bad query string: {exc}", CLOSE_POLICY_VIOLATION)
            return ws
        if params.seed is None:  # every conversation samples from its own generator
            params = SamplingParams(seed=secrets.randbelow(2**31))
        if self._overloaded():
            self.rejected_overload.inc()
            p95 = self.engine.recent_step_p95(self.config.overload_window_s) or 0.0
            budget = self.engine.frame_period
            await self._refuse(
                ws,
                f"server overloaded: recent p95 step time {p95 * 1e3:.0f} ms exceeds the "
                f"{budget * 1e3:.0f} ms frame budget; try again later",
                CLOSE_TRY_AGAIN_LATER,
            )
            return ws

        replies: asyncio.Queue[Reply] = asyncio.Queue()
        evicted: list[str] = []

        def on_reply(reply: Reply) -> None:
            if replies.qsize() >= self.config.max_queued_replies:
                replies.get_nowait()
                self.replies_dropped.inc()
            replies.put_nowait(reply)

        def on_evicted(reason: str) -> None:
            self.evictions.inc()
            evicted.append(reason)
            task = asyncio.get_running_loop().create_task(
                self._refuse(ws, f"conversation stopped: {reason}", CLOSE_INTERNAL_ERROR)
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        try:
            conversation = self.runner.join(params, on_reply, on_evicted)
        except ServerFull as exc:
            self.rejected_full.inc()
            await self._refuse(ws, f"server is full: {exc}; try again later", CLOSE_TRY_AGAIN_LATER)
            return ws
        self.connections.inc()
        log.info("conversation %d joined slot %d", conversation.id, conversation.slot)
        budget = ConnectionBudget.from_config(self.config, self.engine.sample_rate)
        sender = asyncio.create_task(
            self._send_replies(ws, replies, lambda: self._drop_report(conversation, budget))
        )
        try:
            await ws.send_bytes(protocol.handshake())
            await self._receive(ws, conversation, budget)
        except (ConnectionError, aiohttp.ClientError):
            pass  # the client went away; the slot is freed below
        finally:
            self.runner.leave(conversation)
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sender
            if not ws.closed and not evicted:
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

    async def _limit(
        self, ws: web.WebSocketResponse, conversation: Conversation, reason: str, text: str
    ) -> None:
        self.closed_by_limit.labels(reason).inc()
        log.info("conversation %d: %s", conversation.id, text)
        code = CLOSE_NORMAL if reason == "idle" else CLOSE_POLICY_VIOLATION
        await self._refuse(ws, text, code)

    async def _receive(
        self, ws: web.WebSocketResponse, conversation: Conversation, budget: ConnectionBudget
    ) -> None:
        config = self.config
        decoder = OpusDecoder(self.engine.sample_rate)
        last_audio = time.monotonic()
        while True:
            remaining = last_audio + config.idle_timeout_s - time.monotonic()
            if remaining <= 0:
                idle = config.idle_timeout_s
                text = f"no audio for {idle:g} s: closing the idle conversation; reconnect to talk"
                await self._limit(ws, conversation, "idle", text)
                return
            try:
                message = await ws.receive(timeout=remaining)
            except TimeoutError:
                continue
            if message.type in (
                aiohttp.WSMsgType.ERROR,
                aiohttp.WSMsgType.CLOSE,
                aiohttp.WSMsgType.CLOSED,
                aiohttp.WSMsgType.CLOSING,
            ):
                if isinstance(ws.exception(), TimeoutError):
                    self.closed_by_limit.labels("heartbeat").inc()
                return
            size = len(message.data) if isinstance(message.data, bytes | str) else 0
            if not budget.messages.take():
                text = (
                    f"more than {config.max_messages_per_s:g} messages a second: closing; "
                    "send one message per Ogg page, at real-time pace"
                )
                await self._limit(ws, conversation, "message_rate", text)
                return
            if not budget.bytes.take(size):
                text = (
                    f"more than {config.max_bytes_per_s:g} bytes a second: closing; "
                    "send Opus audio at real-time pace"
                )
                await self._limit(ws, conversation, "byte_rate", text)
                return
            if message.type == aiohttp.WSMsgType.PING:
                await ws.pong(message.data)
                continue
            if message.type == aiohttp.WSMsgType.PONG:
                continue
            try:
                if message.type != aiohttp.WSMsgType.BINARY:
                    raise ProtocolError(f"only binary messages are accepted, got a {message.type.name} frame")
                parsed = protocol.decode(message.data, config.max_message_bytes)
                if parsed.kind == Kind.AUDIO:
                    last_audio = time.monotonic()
                    pcm = self._decode_within_budget(decoder, parsed.payload, budget)
                    if len(pcm):
                        self.runner.push(conversation, pcm)
                elif parsed.kind not in IGNORED_CLIENT_KINDS:
                    raise ProtocolError(f"clients may not send {parsed.kind.name.lower()} messages")
            except (ProtocolError, OpusError) as exc:
                self.protocol_errors.inc()
                log.info("conversation %d: %s", conversation.id, exc)
                await self._refuse(ws, str(exc), CLOSE_UNSUPPORTED_DATA)
                return

    def _decode_within_budget(self, decoder: OpusDecoder, payload: bytes, budget: ConnectionBudget):
        """Decode the pages the audio budget allows; the others are dropped undecoded and counted."""
        kept = []
        for page in decoder.pages(payload):
            if page.samples == 0 or budget.audio.take(page.samples):
                kept.append(page)
            else:
                budget.audio_dropped += page.samples
                self.audio_rate_dropped.inc(page.samples / self.engine.frame_size)
        return decoder.decode_pages(kept)

    def _drop_report(self, conversation: Conversation, budget: ConnectionBudget) -> bytes | None:
        """A metadata message when this conversation's audio is being dropped (at most once a second)."""
        frame = self.engine.frame_size
        dropped = {
            "backlog": conversation.frames_dropped,
            "audio_rate": round(budget.audio_dropped / frame, 2),
        }
        total = sum(dropped.values())
        now = time.monotonic()
        if total <= budget.reported_drops or now - budget.last_report < DROP_REPORT_PERIOD_S:
            return None
        budget.reported_drops, budget.last_report = total, now
        return protocol.metadata(
            {"dropping_audio": True, "frames_dropped": dropped, "overloaded": self._overloaded()}
        )

    async def _send_replies(
        self,
        ws: web.WebSocketResponse,
        replies: asyncio.Queue[Reply],
        report: Callable[[], bytes | None] | None = None,
    ) -> None:
        encoder = OpusEncoder(self.engine.sample_rate)
        timeout = self.config.send_timeout_s
        try:
            while True:
                reply = await _next_reply(replies, DROP_REPORT_PERIOD_S if report is not None else None)
                if report is not None and (note := report()) is not None:
                    await asyncio.wait_for(ws.send_bytes(note), timeout)
                if reply is None:
                    continue
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


async def _next_reply(replies: asyncio.Queue[Reply], wait_s: float | None) -> Reply | None:
    """The next reply, or None after ``wait_s`` seconds without one."""
    if wait_s is None:
        return await replies.get()
    try:
        return await asyncio.wait_for(replies.get(), wait_s)
    except TimeoutError:
        return None


async def start_server(server: DuplexServer) -> DuplexRunner:
    """Start listening; returns the runner (``await runner.cleanup()`` to stop)."""
    runner = DuplexRunner(server)
    await runner.setup()
    await runner.listen(server.config.host, server.config.port)
    return runner


def bound_port(runner: web.AppRunner) -> int:
    """The port the server listens on (useful with port 0)."""
    if isinstance(runner, DuplexRunner):
        return runner.port
    for site in runner.sites:
        server = getattr(site, "_server", None)
        if server is not None and server.sockets:
            return server.sockets[0].getsockname()[1]
    raise RuntimeError("the server is not listening")


_OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


class AcceptErrorReporter:
    """The event loop's exception handler: an ``accept()`` that fails for lack of file descriptors
    (asyncio retries it a second later) becomes one warning line per ``interval_s``, counted, not a
    traceback per attempt; anything else goes to the default handler."""

    def __init__(self, interval_s: float = 10.0) -> None:
        self.interval_s = interval_s
        self.failures = 0
        self._last_report = float("-inf")

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict) -> None:
        error = context.get("exception")
        if isinstance(error, OSError) and error.errno in (
            errno.EMFILE,
            errno.ENFILE,
            errno.ENOBUFS,
            errno.ENOMEM,
        ):
            self.failures += 1
            now = time.monotonic()
            if now - self._last_report >= self.interval_s:
                self._last_report = now
                log.warning(
                    "out of file descriptors (%s): %d refused connections so far; raise `ulimit -n` or lower "
                    "--max-connections",
                    error.strerror,
                    self.failures,
                )
            return
        loop.default_exception_handler(context)


def serve_forever(server: DuplexServer, on_listening: Callable[[int], None] | None = None) -> None:
    """Serve until SIGINT or SIGTERM; both close every conversation with 1001 and stop the engine."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(AcceptErrorReporter())
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        runner = await start_server(server)
        port = bound_port(runner)
        log.info("serving on http://%s:%d", server.config.host, port)
        if on_listening is not None:
            on_listening(port)
        try:
            await stop.wait()
            log.info("shutting down: closing %d conversations", len(server.open_sockets))
        finally:
            await runner.cleanup()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    asyncio.run(main())
