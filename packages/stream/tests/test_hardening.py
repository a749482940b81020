"""The server on a network (issue 16): bounded inputs, fair scheduling, limits, graceful shutdown.

Every test here runs against the echo model (fast, deterministic) on 127.0.0.1, with every loop
bounded in count and time; each fails on the server as it was before these limits.
"""

import asyncio
import logging
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from duplex.stream import protocol
from duplex.stream.client import talk, with_query
from duplex.stream.engine import DuplexEngine
from duplex.stream.opus import OpusDecoder, OpusEncoder, OpusError, encode_file
from duplex.stream.protocol import Kind
from duplex.stream.server import ServerConfig, sampling_from_query
from duplex.stream.slots import SamplingParams
from stream_helpers import FRAME, SAMPLE_RATE, EchoPipeline, RunningServer

TESTS = Path(__file__).parent


def serve(pipeline=None, max_conversations=2, backlog=400, **config) -> RunningServer:
    engine = DuplexEngine(
        pipeline or EchoPipeline(), max_conversations=max_conversations, max_backlog_frames=backlog
    )
    return RunningServer(engine, **config)


def metric(text: str, series: str) -> float:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    raise KeyError(series)


async def fetch(url: str, headers=None) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as response:
        return response.status, await response.text()


async def refusal(url: str, **connect) -> tuple[str, int]:
    """Connect, expect an error message (kind 5) then a close: (the reason, the close code)."""
    async with aiohttp.ClientSession() as session, session.ws_connect(url, **connect) as ws:
        first = await ws.receive(timeout=10)
        assert first.type == aiohttp.WSMsgType.BINARY and first.data[0] == Kind.ERROR, first
        closing = await ws.receive(timeout=10)
        assert closing.type == aiohttp.WSMsgType.CLOSE, closing
        return first.data[1:].decode(), closing.data


async def raw_http(port: int, request: bytes, read_timeout: float = 5.0) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(65536), read_timeout)
    finally:
        writer.close()


def tone(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


# -- 1. query parameters, and rows that fail ---------------------------------------------------------
@pytest.mark.parametrize(
    ("query", "named"),
    [
        (
            {"text_seed": "99999999999999999999"},
            "text_seed=99999999999999999999 is out of range: give an integer in 0..4294967295",
        ),
        ({"audio_topk": "1.5e400"}, "audio_topk='1.5e400' is not finite: give an integer in 0..100000"),
        ({"text_temperature": "nan"}, "text_temperature='nan' is not finite: give a number in 0..10"),
        ({"repetition_penalty_context": "2.5"}, "repetition_penalty_context='2.5' is not a valid int"),
        ({"pad_mult": "1" * 50}, "pad_mult of 50 characters is not a valid number"),
    ],
)
def test_each_query_parameter_is_checked_against_its_range(query, named):
    with pytest.raises(ValueError, match="query parameter " + named.replace("(", r"\(").replace(".", r"\.")):
        sampling_from_query(query)


def test_bad_query_parameters_get_a_kind_5_naming_them_then_a_close():
    async def scenario(server):
        seen = []
        for params in (
            {"text_seed": "99999999999999999999"},
            {"audio_topk": "1.5e400"},
            {"audio_seed": "-1"},
        ):
            reason, code = await refusal(with_query(server.ws, **params))
            seen.append((reason, code))
        # Given twice (aiohttp's MultiDict keeps both).
        seen.append(await refusal(server.ws + "?text_seed=1&text_seed=2"))
        clean = await talk(with_query(server.ws, text_seed=7, audio_seed=8, audio_topk=250), tone(0.8))
        return seen, clean

    with serve() as server:
        seen, clean = asyncio.run(scenario(server))
    (seed, code), (topk, _), (negative, _), (twice, _) = seen
    assert "text_seed" in seed and "0..4294967295" in seed and code == 1008
    assert "audio_topk" in topk and "0..100000" in topk
    assert "audio_seed=-1 is out of range" in negative
    assert "text_seed is given 2 times" in twice
    assert len(clean.reply) == (10 - 1) * FRAME


class FailingPipeline(EchoPipeline):
    """The echo model, but resetting a row for ``bad_seed`` raises, and so does stepping a row whose
    audio starts with the value ``poison``."""

    def __init__(self, bad_seed: int | None = None, poison: float | None = None) -> None:
        super().__init__()
        self.bad_seed, self.poison = bad_seed, poison

    def reset(self, row: int, params: SamplingParams) -> None:
        if params.seed == self.bad_seed:
            raise OverflowError(f"seed {params.seed} does not fit")
        super().reset(row, params)

    def step(self, pcm, active):
        if self.poison is not None and np.any(pcm[active, 0] == self.poison):
            raise FloatingPointError("poisoned frame")
        return super().step(pcm, active)


def test_a_row_whose_reset_or_step_fails_is_evicted_and_the_others_keep_stepping(caplog):
    engine = DuplexEngine(FailingPipeline(bad_seed=666, poison=0.25), max_conversations=3)
    good, bad = engine.join(SamplingParams(seed=1)), engine.join(SamplingParams(seed=666))
    replies = []
    for _ in range(20):
        engine.push(good, np.full(FRAME, 0.1, np.float32))
        engine.push(bad, np.full(FRAME, 0.1, np.float32))
        replies += engine.step()
    assert engine.steps == 20 and len(replies) == 19  # the good row stepped every time
    assert {r.conversation.id for r in replies} == {good.id}
    assert bad.closed and "could not start this conversation: seed 666 does not fit" in bad.failure
    assert list(engine.evicted) == [bad] and engine.slots.active == 1
    # A step that fails evicts the rows in it, once; the engine steps on for newcomers.
    engine.evicted.clear()
    poisoned = engine.join(SamplingParams(seed=2))
    engine.push(poisoned, np.full(FRAME, 0.25, np.float32))
    engine.push(good, np.full(FRAME, 0.1, np.float32))
    assert engine.step() == []
    assert poisoned.failure.startswith("the engine step failed: poisoned frame") and good.closed
    newcomer = engine.join(SamplingParams(seed=3))
    for _ in range(3):
        engine.push(newcomer, np.full(FRAME, 0.1, np.float32))
        engine.step()
    assert newcomer.frames_stepped == 3 and not newcomer.closed
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 2  # one per failure, not one per step


def test_the_server_tells_an_evicted_conversation_and_serves_the_others():
    bad_seed = 13 * 1_000_003  # ?text_seed=13
    speech = tone(2.0)

    async def scenario(server):
        clean = asyncio.create_task(talk(server.ws, speech))
        await asyncio.sleep(0.2)
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(with_query(server.ws, text_seed=13)) as ws,
        ):
            assert (await ws.receive(timeout=10)).data == protocol.handshake()
            await ws.send_bytes(protocol.audio(encode_file(tone(0.4))))
            message = await ws.receive(timeout=10)
            closing = await ws.receive(timeout=10)
        return message, closing, await clean

    with serve(FailingPipeline(bad_seed=bad_seed)) as server:
        message, closing, clean = asyncio.run(scenario(server))
        _, metrics = asyncio.run(fetch(server.http + "/metrics"))
    assert (
        message.data[0] == Kind.ERROR
        and "conversation stopped: the engine could not start" in message.data.decode()
    )
    assert closing.type == aiohttp.WSMsgType.CLOSE and closing.data == 1011
    assert len(clean.reply) == (25 - 1) * FRAME  # the neighbour heard all of its reply
    assert metric(metrics, "duplex_conversations_evicted_total") == 1


# -- 5. SIGTERM ----------------------------------------------------------------------------------------
SERVER_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    from stream_helpers import EchoPipeline
    from duplex.stream.engine import DuplexEngine
    from duplex.stream.server import DuplexServer, ServerConfig, serve_forever

    class Pipeline(EchoPipeline):
        def stop(self):
            print("pipeline stopped", flush=True)

    server = DuplexServer(DuplexEngine(Pipeline(), 2), ServerConfig(port=0))
    serve_forever(server, on_listening=lambda port: print("port", port, flush=True))
    print("exited cleanly", flush=True)
    """
)


def start_script_server(script: str) -> tuple[subprocess.Popen, int]:
    """A server process running ``script`` (which prints ``port N`` once listening), and its port."""
    process = subprocess.Popen(
        [sys.executable, "-c", script.format(tests=str(TESTS))],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    line = process.stdout.readline()
    if not line.startswith("port "):
        process.kill()
        raise AssertionError((line, process.communicate()[1]))
    return process, int(line.split()[1])


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_close_conversations_with_1001_and_stop_the_engine(sig):
    process, port = start_script_server(SERVER_SCRIPT)
    try:

        async def scenario():
            async with aiohttp.ClientSession() as session:
                ws = await session.ws_connect(f"ws://127.0.0.1:{port}/api/chat")
                assert (await ws.receive(timeout=10)).data == protocol.handshake()
                await ws.send_bytes(protocol.audio(encode_file(tone(0.4))))
                process.send_signal(sig)
                started = time.monotonic()
                while (message := await ws.receive(timeout=10)).type == aiohttp.WSMsgType.BINARY:
                    pass
                return message, time.monotonic() - started

        message, elapsed = asyncio.run(scenario())
        out, err = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert message.type == aiohttp.WSMsgType.CLOSE and message.data == 1001, message
    assert elapsed < 5
    assert process.returncode == 0, err
    assert "pipeline stopped" in out and "exited cleanly" in out
    assert "Traceback" not in err


# -- 6. auth, origin, static ---------------------------------------------------------------------------
def test_auth_edge_cases_headers_and_a_redacted_access_log(caplog):
    caplog.set_level(logging.INFO, logger="aiohttp.access")

    async def scenario(server):
        raw = await raw_http(
            server.port,
            b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer \xff\xfe\xc3\x28\r\n"
            b"Connection: close\r\n\r\n",
        )
        status = int(raw.split(b" ", 2)[1])
        async with aiohttp.ClientSession() as session:
            for headers in ({"kyutai-api-key": "s3cret"}, {"Authorization": "Bearer s3cret"}):
                ws = await session.ws_connect(server.ws, headers=headers)
                assert (await ws.receive(timeout=10)).data == protocol.handshake()
                await ws.close()
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await session.ws_connect(server.ws, headers={"kyutai-api-key": "wrong"})
            assert refused.value.status == 401
        assert (await fetch(server.http + "/metrics?auth_token=s3cret&x=1"))[0] == 200
        return status

    with serve(auth_token="s3cret") as server:
        status = asyncio.run(scenario(server))
    assert status == 401  # not 500
    access = "\n".join(r.getMessage() for r in caplog.records if r.name == "aiohttp.access")
    assert "/metrics?auth_token=REDACTED&x=1" in access
    assert "s3cret" not in caplog.text


def test_an_empty_auth_token_is_a_clear_error_not_disabled_auth():
    for empty in ("", "  "):
        with pytest.raises(ValueError, match="the auth token is empty: give a non-empty --auth-token"):
            ServerConfig(auth_token=empty)


def test_the_origin_must_be_the_servers_own_or_allowed():
    async def scenario(server):
        own = {"Origin": server.http}
        async with aiohttp.ClientSession() as session:
            ws = await session.ws_connect(server.ws, headers=own)
            assert (await ws.receive(timeout=10)).data == protocol.handshake()
            await ws.close()
            ws = await session.ws_connect(server.ws, headers={"Origin": "https://friend.example"})
            assert (await ws.receive(timeout=10)).data == protocol.handshake()
            await ws.close()
            statuses = []
            for origin in ("https://evil.example", "null", "http://127.0.0.1:1"):
                with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                    await session.ws_connect(server.ws, headers={"Origin": origin})
                statuses.append(refused.value.status)
        _, metrics = await fetch(server.http + "/metrics")
        return statuses, metrics

    with serve(allowed_origins=("https://Friend.example/",)) as server:
        statuses, metrics = asyncio.run(scenario(server))
    assert statuses == [403, 403, 403]
    assert metric(metrics, "duplex_connections_rejected_origin_total") == 3


def test_static_serves_another_web_client_in_place_of_ours(tmp_path):
    (tmp_path / "assets").mkdir()
    (tmp_path / "index.html").write_text("<html><script src='/assets/client-1.js'></script>kyutai</html>")
    (tmp_path / "assets" / "client-1.js").write_text("console.log('official client')")
    with pytest.raises(ValueError, match="has no index.html: point it at a built web client"):
        ServerConfig(static_dir=tmp_path / "assets")

    async def scenario(server):
        return [await fetch(server.http + path) for path in ("/", "/assets/client-1.js", "/app.js")]

    with serve(static_dir=tmp_path) as server:
        (index, page), (asset, script), (ours, _) = asyncio.run(scenario(server))
    assert index == 200 and "kyutai" in page
    assert asset == 200 and "official client" in script
    assert ours == 404  # our page is not served


# -- 2. per-connection budgets ---------------------------------------------------------------------------
def test_a_message_flood_closes_only_the_flooder_and_the_others_reply_in_full():
    speech = tone(2.0)

    async def flood(server) -> tuple[str, float, int]:
        async with aiohttp.ClientSession() as session, session.ws_connect(server.ws) as ws:
            await ws.receive(timeout=10)
            started, sent, reason = time.monotonic(), 0, ""

            async def send() -> None:  # kind-6 pings and websocket pings, as fast as it goes
                nonlocal sent
                while sent < 20_000 and time.monotonic() - started < 5 and not ws.closed:
                    try:
                        await ws.send_bytes(bytes([Kind.PING]))
                        await ws.ping()
                    except (ConnectionError, aiohttp.ClientError):
                        return
                    sent += 2
                    if sent % 100 == 0:
                        await asyncio.sleep(0)

            sender = asyncio.create_task(send())
            while (message := await ws.receive(timeout=5)).type == aiohttp.WSMsgType.BINARY:
                if message.data[0] == Kind.ERROR:
                    reason = message.data[1:].decode()
            closed_after = time.monotonic() - started
            await sender
            return reason, closed_after, sent

    async def scenario(server):
        clean = asyncio.create_task(talk(server.ws, speech))
        await asyncio.sleep(0.3)
        flooded = await flood(server)
        return flooded, await clean

    with serve() as server:
        (reason, elapsed, sent), clean = asyncio.run(scenario(server))
        _, metrics = asyncio.run(fetch(server.http + "/metrics"))
    assert "more than 100 messages a second: closing" in reason
    assert sent < 20_000 and elapsed < 5
    assert len(clean.reply) == (25 - 1) * FRAME  # complete, not 15-35 %
    assert metric(metrics, 'duplex_connections_closed_total{reason="message_rate"}') == 1


def test_audio_faster_than_real_time_is_dropped_from_its_own_slot_and_counted():
    async def scenario(server):
        async with aiohttp.ClientSession() as session, session.ws_connect(server.ws) as ws:
            await ws.receive(timeout=10)
            encoder = OpusEncoder(SAMPLE_RATE)
            audio = tone(10.0)
            started = time.monotonic()
            for start in range(0, len(audio), 8 * FRAME):  # 10 s of audio as fast as it goes
                await ws.send_bytes(protocol.audio(encoder.encode(audio[start : start + 8 * FRAME])))
            elapsed = time.monotonic() - started
            await asyncio.sleep(0.3)
            conversation = server.server.engine.slots.conversations()[0]
            return conversation.frames_in, elapsed

    with serve(backlog=1000) as server:
        frames_in, elapsed = asyncio.run(scenario(server))
        _, metrics = asyncio.run(fetch(server.http + "/metrics"))
    # The 2 s burst, plus 1.5x real time for the moment the sending took: far from the 10 s sent.
    allowed = 12.5 * (2.0 + 1.5 * elapsed)
    assert 25 <= frames_in <= allowed + 2, (frames_in, elapsed)
    dropped = metric(metrics, 'duplex_dropped_frames_total{reason="audio_rate"}')
    assert abs(dropped - (125 - frames_in)) <= 2, (dropped, frames_in)


def ogg_page(serial: int, sequence: int, packets: list[bytes], granule: int = 0) -> bytes:
    lacing = bytes(len(p) for p in packets)
    header = struct.pack("<4sBBqIIIB", b"OggS", 0, 0, granule, serial, sequence, 0, len(lacing))
    return header + lacing + b"".join(packets)


def test_an_empty_opus_packet_is_refused_not_decoded_to_five_seconds():
    head = encode_file(np.zeros(960, np.float32))
    serial = struct.unpack_from("<I", head, 14)[0]
    headers = head[: 47 + 55]  # OpusHead and OpusTags pages
    empty = ogg_page(serial, 2, [b""], granule=240_000)
    assert len(empty) == 28
    decoder = OpusDecoder()
    assert len(decoder.decode(headers)) == 0
    with pytest.raises(OpusError, match="empty Opus packet"):
        decoder.decode(empty)
    # A TOC byte alone holds 20 ms: what the page claims is all it may decode to.
    toc_only = OpusDecoder()
    toc_only.decode(headers)
    assert len(toc_only.decode(ogg_page(serial, 2, [b"\xf8"] * 3))) == 3 * 480

    async def scenario(server):
        return await refusal_after_handshake(server.ws, protocol.audio(headers + empty))

    with serve() as server:
        reason = asyncio.run(scenario(server))
    assert "empty Opus packet" in reason


async def refusal_after_handshake(url: str, message: bytes) -> str:
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
        assert (await ws.receive(timeout=10)).data == protocol.handshake()
        await ws.send_bytes(message)
        reply = await ws.receive(timeout=10)
        assert reply.data[0] == Kind.ERROR, reply
        return reply.data[1:].decode()


# -- 4. connections: cap, header timeout, idle timeout, heartbeat -----------------------------------------
def test_connection_cap_and_header_timeout():
    async def scenario(server):
        port = server.port
        idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
        for _, writer in idle:
            writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # headers that never end
        await asyncio.sleep(0.05)
        over = await raw_http(port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        started = time.monotonic()
        closed = [await asyncio.wait_for(reader.read(), 5) for reader, _ in idle]  # the server hangs up
        waited = time.monotonic() - started
        for _, writer in idle:
            writer.close()
        await asyncio.sleep(0.05)
        status, metrics = await fetch(server.http + "/metrics")
        return over, closed, waited, metrics

    with serve(max_connections=3, header_timeout_s=0.5) as server:
        over, closed, waited, metrics = asyncio.run(scenario(server))
    assert over.startswith(b"HTTP/1.1 503") and b"too many open connections" in over
    assert closed == [b"", b"", b""] and waited < 1.5
    assert metric(metrics, "duplex_connections_rejected_cap_total") == 1
    assert metric(metrics, 'duplex_connections_closed_total{reason="header_timeout"}') == 3
    assert metric(metrics, "duplex_max_connections") == 3
    assert metric(metrics, "duplex_header_timeout_seconds") == 0.5


def test_idle_conversations_are_closed():
    async def scenario(server):
        async with aiohttp.ClientSession() as session, session.ws_connect(server.ws) as idle:
            assert (await idle.receive(timeout=10)).data == protocol.handshake()
            for _ in range(3):  # pings do not count as activity
                await idle.send_bytes(bytes([Kind.PING]))
                await asyncio.sleep(0.1)
            message = await idle.receive(timeout=5)
            closing = await idle.receive(timeout=5)
        _, metrics = await fetch(server.http + "/metrics")
        return message, closing, metrics

    with serve(idle_timeout_s=0.6, heartbeat_s=None) as server:
        message, closing, metrics = asyncio.run(scenario(server))
        server.wait_idle()
        assert server.server.engine.slots.active == 0
    assert message.data[0] == Kind.ERROR and "no audio for 0.6 s" in message.data.decode()
    assert closing.type == aiohttp.WSMsgType.CLOSE and closing.data == 1000
    assert metric(metrics, 'duplex_connections_closed_total{reason="idle"}') == 1
    assert metric(metrics, "duplex_idle_timeout_seconds") == 0.6


def test_a_peer_that_does_not_answer_the_heartbeat_is_closed():
    async def scenario(server):
        async with aiohttp.ClientSession() as session:
            dead = await session.ws_connect(server.ws, autoping=False)  # never answers a ping
            await dead.receive(timeout=10)
            started = time.monotonic()
            while (got := await dead.receive(timeout=5)).type == aiohttp.WSMsgType.PING:
                pass
            closed_after = time.monotonic() - started
            await dead.close()
        await asyncio.sleep(0.05)
        _, metrics = await fetch(server.http + "/metrics")
        return got, closed_after, metrics

    with serve(idle_timeout_s=30, heartbeat_s=0.3) as server:
        got, closed_after, metrics = asyncio.run(scenario(server))
        server.wait_idle()
        assert server.server.engine.slots.active == 0
    assert got.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), got
    assert closed_after < 2.0
    assert metric(metrics, 'duplex_connections_closed_total{reason="heartbeat"}') == 1
    assert metric(metrics, "duplex_heartbeat_seconds") == 0.3


# -- 3. oversized frames ---------------------------------------------------------------------------------
def rss_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_an_oversized_frame_is_refused_at_its_header():
    async def scenario(server):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(
            b"GET /api/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        response = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert response.startswith(b"HTTP/1.1 101")
        await asyncio.wait_for(reader.readexactly(3), 5)  # the handshake message: 0x82 0x01 0x00
        before = rss_bytes()
        started = time.monotonic()
        # A binary frame announcing 400 MB, then at most 4 MB of it: refused after the 14-byte header.
        writer.write(bytes([0x82, 0xFF]) + struct.pack(">Q", 400 * 2**20) + b"mask")
        closing, sent = b"", 0
        while not closing and sent < 4 * 2**20:
            try:
                closing = await asyncio.wait_for(reader.read(64), 0.02)
                break
            except TimeoutError:
                pass
            try:
                writer.write(bytes(64 * 1024))
                await writer.drain()
            except ConnectionError:
                break
            sent += 64 * 1024
        if not closing:
            closing = await asyncio.wait_for(reader.read(64), 1.0)
        elapsed = time.monotonic() - started
        growth = rss_bytes() - before
        writer.close()
        return closing, elapsed, growth, sent

    with serve() as server:
        closing, elapsed, growth, sent = asyncio.run(scenario(server))
    assert closing[0] == 0x88 and struct.unpack(">H", closing[2:4])[0] == 1009, closing  # close: too big
    assert sent < 4 * 2**20 and elapsed < 2.0
    assert growth < 32 * 2**20, growth


# -- 7. overload -----------------------------------------------------------------------------------------
def test_overload_refuses_newcomers_counts_drops_and_tells_the_talker():
    async def scenario(server):
        async with aiohttp.ClientSession() as session, session.ws_connect(server.ws) as ws:
            assert (await ws.receive(timeout=10)).data == protocol.handshake()
            encoder, notes = OpusEncoder(SAMPLE_RATE), []
            audio = tone(3.2)
            started = time.monotonic()
            for index in range(len(audio) // FRAME):  # real time, while each step takes 1.5 frames
                await asyncio.sleep(max(0.0, started + index * FRAME / SAMPLE_RATE - time.monotonic()))
                await ws.send_bytes(
                    protocol.audio(encoder.encode(audio[index * FRAME : (index + 1) * FRAME]))
                )
                while True:
                    try:
                        message = await ws.receive(timeout=0.001)
                    except TimeoutError:
                        break
                    if message.type == aiohttp.WSMsgType.BINARY and message.data[0] == Kind.METADATA:
                        notes.append(message.data[1:].decode())
            newcomer = await refusal(server.ws)
            _, health = await fetch(server.http + "/health")
            _, metrics = await fetch(server.http + "/metrics")
            return notes, newcomer, health, metrics

    with serve(EchoPipeline(delay_s=0.12), backlog=4, overload_ratio=1.0) as server:
        notes, (reason, code), health, metrics = asyncio.run(scenario(server))
    assert reason.startswith("server overloaded: recent p95 step time") and "80 ms frame budget" in reason
    assert code == 1013 and '"overloaded": true' in health
    assert metric(metrics, "duplex_connections_rejected_overload_total") == 1
    assert metric(metrics, 'duplex_dropped_frames_total{reason="backlog"}') > 0
    assert metric(metrics, "duplex_overloaded") == 1
    assert notes and '"dropping_audio": true' in notes[-1] and '"backlog"' in notes[-1]


LOW_FD_SERVER_SCRIPT = textwrap.dedent(
    """
    import resource, sys
    resource.setrlimit(resource.RLIMIT_NOFILE, (96, 96))
    sys.path.insert(0, {tests!r})
    from stream_helpers import EchoPipeline
    from duplex.stream.engine import DuplexEngine
    from duplex.stream.server import DuplexServer, ServerConfig, serve_forever

    config = ServerConfig(port=0, header_timeout_s=1.0)
    server = DuplexServer(DuplexEngine(EchoPipeline(), 2), config)
    serve_forever(server, on_listening=lambda port: print("port", port, flush=True))
    """
)


def test_idle_sockets_under_a_low_descriptor_limit_neither_lock_out_clients_nor_flood_the_log():
    """``ulimit -n 96`` and 150 idle connections: the cap (lowered to the limit) answers the surplus
    at once, the header timeout frees the rest, then a client gets through (the unpatched server
    stayed unreachable and logged a traceback per refused accept); the log stays short."""
    process, port = start_script_server(LOW_FD_SERVER_SCRIPT)
    try:

        async def scenario() -> tuple[int, float]:
            idle = []
            for _ in range(150):  # open and say nothing
                try:
                    idle.append(await asyncio.open_connection("127.0.0.1", port))
                except OSError:
                    break
            started = time.monotonic()
            status = 0
            while time.monotonic() - started < 15 and status != 200:
                try:
                    status, _ = await asyncio.wait_for(fetch(f"http://127.0.0.1:{port}/health"), 2)
                except (TimeoutError, aiohttp.ClientError, OSError):
                    await asyncio.sleep(0.1)
            for _, writer in idle:
                writer.close()
            return status, time.monotonic() - started

        status, elapsed = asyncio.run(scenario())
    finally:
        process.send_signal(signal.SIGINT)
        try:
            _, err = process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            _, err = process.communicate()
    assert status == 200 and elapsed < 10, (status, elapsed, err[-3000:])  # the header timeout is 1 s
    assert "lowered to" in err  # the cap follows the descriptor limit
    assert err.count("Traceback") == 0 and len(err.splitlines()) < 60, err[-3000:]
