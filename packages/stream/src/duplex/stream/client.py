"""A file client: streams a wav to a server at real-time pace and records the reply and the text."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from urllib.parse import urlencode, urlsplit, urlunsplit

import aiohttp
import numpy as np
from duplex.stream import protocol
from duplex.stream.metrics import bucket_quantile
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


# -- load test -------------------------------------------------------------------------------------
MAX_LOAD_CONVERSATIONS = 256
MAX_LOAD_SECONDS = 600.0
DROP_SERIES = ("backlog", "audio_rate", "slow_reader")


@dataclass
class ConversationLoad:
    """What one load-test conversation heard."""

    index: int
    expected_samples: int
    reply_samples: int = 0
    handshake_s: float | None = None
    error: str | None = None

    @property
    def completeness(self) -> float:
        return self.reply_samples / self.expected_samples if self.expected_samples else 0.0


@dataclass
class LoadReport:
    conversations: list[ConversationLoad]
    seconds: float
    handshake_p50: float | None
    handshake_p99: float | None
    reply_latency_p50: float | None  # as the server measures it: user frame in -> reply frame out
    reply_latency_p99: float | None
    frames_dropped: dict[str, float]  # per reason, during the test (from the server's /metrics)

    def lines(self) -> list[str]:
        """The report as printed by ``duplex loadtest``."""

        def ms(value: float | None) -> str:
            return "n/a" if value is None else f"{value * 1e3:.0f} ms"

        out = ["conversation  handshake  reply  completeness  error"]
        for c in self.conversations:
            out.append(
                f"{c.index:>12}  {ms(c.handshake_s):>9}  {c.reply_samples / SAMPLE_RATE:>4.1f}s"
                f"  {c.completeness:>11.1%}  {c.error or ''}"
            )
        served = [c for c in self.conversations if c.error is None]
        mean = sum(c.completeness for c in served) / len(served) if served else 0.0
        dropped = ", ".join(f"{reason} {value:g}" for reason, value in self.frames_dropped.items()) or "n/a"
        out += [
            f"conversations: {len(served)}/{len(self.conversations)} served, {self.seconds:g} s each, "
            f"mean reply completeness {mean:.1%}",
            f"handshake: p50 {ms(self.handshake_p50)}, p99 {ms(self.handshake_p99)}",
            f"reply latency (server): p50 {ms(self.reply_latency_p50)}, p99 {ms(self.reply_latency_p99)}",
            f"frames dropped: {dropped}",
        ]
        return out


def metrics_url(chat_url: str, auth_token: str | None = None) -> str:
    """The /metrics address of the server behind a ``ws://HOST:PORT/api/chat`` address."""
    parts = urlsplit(chat_url)
    scheme = "https" if parts.scheme in ("wss", "https") else "http"
    return with_query(urlunsplit((scheme, parts.netloc, "/metrics", "", "")), auth_token=auth_token)


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text: ``{series (name with its labels): value}``."""
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            values[series] = float(value)
    return values


def _histogram_delta(before: dict[str, float], after: dict[str, float], name: str):
    prefix = f'{name}_bucket{{le="'
    bounds, cumulative = [], []
    for series, value in after.items():
        if series.startswith(prefix):
            bound = series[len(prefix) : -2]
            bounds.append(float("inf") if bound == "+Inf" else float(bound))
            cumulative.append(value - before.get(series, 0.0))
    order = sorted(range(len(bounds)), key=bounds.__getitem__)
    bounds = [bounds[i] for i in order]
    cumulative = [cumulative[i] for i in order]
    counts = [c - (cumulative[i - 1] if i else 0.0) for i, c in enumerate(cumulative)]
    return [b for b in bounds if b != float("inf")], counts


def _quantile(values: list[float], q: float) -> float | None:
    return float(np.quantile(values, q)) if values else None


async def _fetch_metrics(session: aiohttp.ClientSession, url: str) -> dict[str, float]:
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=10)) as response:
            if response.status != 200:
                return {}
            return parse_metrics(await response.text())
    except (aiohttp.ClientError, TimeoutError):
        return {}


def loop_to(pcm: np.ndarray, seconds: float) -> np.ndarray:
    """``pcm`` repeated (or cut) to ``seconds`` of audio."""
    samples = int(round(seconds * SAMPLE_RATE))
    pcm = np.asarray(pcm, dtype=np.float32)
    if len(pcm) == 0:
        raise ValueError("the load-test input holds no audio")
    return np.tile(pcm, -(-samples // len(pcm)))[:samples]


def babble(seconds: float, seed: int = 0) -> np.ndarray:
    """A speech-like test signal: a gliding, pulsing tone with a little noise."""
    t = np.arange(int(round(seconds * SAMPLE_RATE))) / SAMPLE_RATE
    pitch = 140 + 60 * np.sin(2 * np.pi * 0.4 * t)
    tone = 0.3 * np.sin(2 * np.pi * np.cumsum(pitch) / SAMPLE_RATE)
    envelope = 0.5 + 0.5 * np.clip(np.sin(2 * np.pi * 3.0 * t), 0, None)
    noise = np.random.default_rng(seed).standard_normal(len(t))
    return (tone * envelope + 0.02 * noise).astype(np.float32)


async def load_test(
    url: str,
    conversations: int,
    seconds: float,
    pcm: np.ndarray | None = None,
    auth_token: str | None = None,
    stagger_s: float = 0.02,
) -> LoadReport:
    """``conversations`` real-time clients at once, each sending ``seconds`` of audio (``pcm`` looped,
    default :func:`babble`). Bounded: at most 256 conversations of at most 600 s, and the whole test
    gives up ``seconds + 30`` s after it starts."""
    if not 1 <= conversations <= MAX_LOAD_CONVERSATIONS:
        raise ValueError(f"--conversations must be in 1..{MAX_LOAD_CONVERSATIONS}, got {conversations}")
    if not 0 < seconds <= MAX_LOAD_SECONDS:
        raise ValueError(f"--seconds must be in (0, {MAX_LOAD_SECONDS:g}], got {seconds:g}")
    audio = loop_to(babble(seconds) if pcm is None else pcm, seconds)
    frames = -(-len(audio) // FRAME_SIZE)
    chat = with_query(url, auth_token=auth_token)
    results = [ConversationLoad(i, max(frames - 1, 0) * FRAME_SIZE) for i in range(conversations)]

    async def one(result: ConversationLoad) -> None:
        await asyncio.sleep(result.index * stagger_s)
        try:
            heard = await talk(chat, audio, realtime=True, idle_timeout_s=3.0)
        except (ServerRefused, OSError, TimeoutError, aiohttp.ClientError) as error:
            result.error = str(error) or type(error).__name__
            return
        result.reply_samples, result.handshake_s = len(heard.reply), heard.handshake_after

    async with aiohttp.ClientSession() as session:
        before = await _fetch_metrics(session, metrics_url(url, auth_token))
        tasks = [asyncio.create_task(one(result)) for result in results]
        done, pending = await asyncio.wait(tasks, timeout=seconds + 30 + conversations * stagger_s)
        for task in pending:
            task.cancel()
        for result, task in zip(results, tasks, strict=True):
            if task in pending:
                result.error = "gave up: no complete reply in time"
        await asyncio.gather(*pending, return_exceptions=True)
        after = await _fetch_metrics(session, metrics_url(url, auth_token))

    handshakes = [r.handshake_s for r in results if r.handshake_s is not None]
    p50 = p99 = None
    if after:
        bounds, counts = _histogram_delta(before, after, "duplex_reply_latency_seconds")
        if bounds:
            p50, p99 = bucket_quantile(0.5, bounds, counts), bucket_quantile(0.99, bounds, counts)
    dropped = {}
    for reason in DROP_SERIES:
        series = f'duplex_dropped_frames_total{{reason="{reason}"}}'
        if series in after:
            dropped[reason] = round(after[series] - before.get(series, 0.0), 2)
    return LoadReport(
        results, seconds, _quantile(handshakes, 0.5), _quantile(handshakes, 0.99), p50, p99, dropped
    )
