"""The websocket server with the tiny demo model: replies, concurrency, admission, bad clients, auth."""

import asyncio
import time

import aiohttp
import numpy as np
import pytest
from duplex.stream import protocol
from duplex.stream.client import ServerRefused, talk, with_query
from duplex.stream.engine import DuplexEngine
from duplex.stream.offline import run_conversation
from duplex.stream.opus import OpusDecoder, encode_file
from duplex.stream.protocol import Kind
from stream_helpers import FRAME, RunningServer, make_pipeline

# Generous: a CI machine busy with other tests may step slower than real time for a while.
BACKLOG = 400


@pytest.fixture(scope="module")
def pipeline(demo_checkpoint):
    return make_pipeline(demo_checkpoint, use_sampling=False)


def serve(pipeline, max_conversations=1, **config) -> RunningServer:
    engine = DuplexEngine(pipeline, max_conversations=max_conversations, max_backlog_frames=BACKLOG)
    return RunningServer(engine, **config)


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise KeyError(name)


async def fetch(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.text()


def test_a_client_hears_a_full_length_reply_equal_to_the_offline_run(pipeline, speech):
    with serve(pipeline) as server:
        result = asyncio.run(talk(server.ws, speech))
        _, metrics = asyncio.run(fetch(server.http + "/metrics"))
    frames = -(-len(speech) // FRAME)
    assert result.frames_sent == frames
    assert len(result.reply) == (frames - 1) * FRAME
    assert np.abs(result.reply).max() > 0.01

    # The server heard the Opus-decoded audio: the offline run on that audio says the same words.
    padded = np.concatenate([speech, np.zeros(frames * FRAME - len(speech), np.float32)])
    heard = OpusDecoder().decode(encode_file(padded))
    offline = run_conversation(pipeline, heard)
    offline_text = "".join(piece.text for piece in offline.pieces if piece.frame < frames - 1)
    assert result.transcript == offline_text and result.transcript.strip()
    # The same reply through a lossy codec (that drops the random decoder's constant offset).
    sent = offline.reply[: len(result.reply)]
    rms = np.std(result.reply) / np.std(sent)
    assert 0.5 < rms < 2.0, rms
    assert metric(metrics, "duplex_connections_total") == 1
    assert metric(metrics, "duplex_reply_latency_seconds_count") == frames - 1
    assert metric(metrics, "duplex_active_conversations") == 0


def test_four_clients_at_real_time_pace_are_admitted_at_once_and_share_steps(pipeline, speech):
    async def four(server):
        started = time.monotonic()
        results = await asyncio.gather(*[talk(server.ws, speech * (0.5 + i / 4)) for i in range(4)])
        return started, results

    with serve(pipeline, max_conversations=4) as server:
        started, results = asyncio.run(four(server))
        _, metrics = asyncio.run(fetch(server.http + "/metrics"))
    frames = -(-len(speech) // FRAME)
    for result in results:
        assert result.handshake_after is not None and result.handshake_after < 2.0  # nobody queued
        assert len(result.reply) == (frames - 1) * FRAME
        assert result.transcript.strip()
    # Batched: the 4 x `frames` user frames took about `frames` steps, not 4 x as many.
    steps = metric(metrics, "duplex_step_seconds_count")
    assert frames <= steps <= 2 * frames
    assert metric(metrics, "duplex_frames_dropped_total") == 0


def test_a_connection_past_the_limit_gets_an_error_then_a_clean_close(pipeline):
    async def scenario(server):
        async with aiohttp.ClientSession() as session:
            first = await session.ws_connect(server.ws)
            assert (await first.receive(timeout=10)).data == protocol.handshake()
            second = await session.ws_connect(server.ws)
            refusal = await second.receive(timeout=10)
            assert refusal.type == aiohttp.WSMsgType.BINARY and refusal.data[0] == Kind.ERROR
            assert "server is full" in refusal.data[1:].decode()
            closing = await second.receive(timeout=10)
            assert closing.type == aiohttp.WSMsgType.CLOSE and closing.data == 1013
            await first.close()
            for _ in range(100):  # the slot is free again once the first has gone
                status, body = await fetch(server.http + "/health")
                if '"active_conversations": 0' in body:
                    break
                await asyncio.sleep(0.05)
            third = await session.ws_connect(server.ws)
            assert (await third.receive(timeout=10)).data == protocol.handshake()
            await third.close()

    with serve(pipeline, max_conversations=1) as server:
        asyncio.run(scenario(server))
        with pytest.raises(ServerRefused, match="server is full"):

            async def full():
                async with aiohttp.ClientSession() as session:
                    holder = await session.ws_connect(server.ws)
                    await holder.receive(timeout=10)
                    await talk(server.ws, np.zeros(FRAME * 3, np.float32))

            asyncio.run(full())


BAD_MESSAGES = [
    ("text frame", "only binary messages"),
    (b"", "empty message"),
    (b"\x2a", "unknown message kind 42"),
    (b"\x01" + b"definitely not ogg" * 3, "invalid Ogg/Opus"),
    (b"\x02hello", "clients may not send text"),
    (b"\x03\x09", "control message must carry one byte"),
]


def test_malformed_messages_and_abrupt_disconnects_never_disturb_the_others(pipeline, speech):
    async def misbehave(server) -> list[str]:
        reasons = []
        async with aiohttp.ClientSession() as session:
            for message, expected in BAD_MESSAGES:
                ws = await session.ws_connect(server.ws)
                await ws.receive(timeout=10)
                if isinstance(message, str):
                    await ws.send_str(message)
                else:
                    await ws.send_bytes(message)
                reply = await ws.receive(timeout=10)
                assert reply.data[0] == Kind.ERROR, (message, reply)
                reasons.append(reply.data[1:].decode())
                assert expected in reasons[-1]
                assert (await ws.receive(timeout=10)).type == aiohttp.WSMsgType.CLOSE
                await ws.close()
            # Huge: the websocket layer closes with 1009 (message too big).
            ws = await session.ws_connect(server.ws)
            await ws.receive(timeout=10)
            await ws.send_bytes(b"\x01" + bytes(protocol.MAX_MESSAGE_BYTES + 10))
            closing = await ws.receive(timeout=10)
            assert closing.type == aiohttp.WSMsgType.CLOSE and closing.data == 1009
            await ws.close()
            # Abrupt: half a conversation, then the TCP connection just goes away.
            for _ in range(3):
                ws = await session.ws_connect(server.ws)
                await ws.receive(timeout=10)
                await ws.send_bytes(protocol.audio(encode_file(speech[: 10 * FRAME])))
                await asyncio.sleep(0.3)
                ws._response.connection.transport.abort()
        return reasons

    async def everything(server):
        # A well-behaved client talks while the others misbehave around it.
        clean = asyncio.create_task(talk(server.ws, speech))
        await misbehave(server)
        first = await clean
        for _ in range(100):
            status, body = await fetch(server.http + "/health")
            if '"active_conversations": 0' in body:
                break
            await asyncio.sleep(0.05)
        assert status == 200 and '"active_conversations": 0' in body
        second = await talk(server.ws, speech)  # and the next one is served as usual
        return first, second

    with serve(pipeline, max_conversations=2) as server:
        first, second = asyncio.run(everything(server))
        _, metrics = asyncio.run(fetch(server.http + "/metrics"))
    frames = -(-len(speech) // FRAME)
    assert len(first.reply) == len(second.reply) == (frames - 1) * FRAME
    assert first.transcript == second.transcript  # greedy: the neighbours changed nothing
    assert metric(metrics, "duplex_protocol_errors_total") == len(BAD_MESSAGES)


def test_with_an_auth_token_clients_without_it_are_refused(pipeline):
    async def scenario(server):
        async with aiohttp.ClientSession() as session:
            for url in (server.ws, with_query(server.ws, auth_token="wrong")):
                with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                    await session.ws_connect(url)
                assert refused.value.status == 401
            for url, headers in (
                (with_query(server.ws, auth_token="s3cret"), None),
                (with_query(server.ws, worker_auth_id="s3cret"), None),  # the official client's field
                (server.ws, {"Authorization": "Bearer s3cret"}),
            ):
                ws = await session.ws_connect(url, headers=headers)
                assert (await ws.receive(timeout=10)).data == protocol.handshake()
                await ws.close()
        assert (await fetch(server.http + "/metrics"))[0] == 401
        assert (await fetch(server.http + "/metrics?auth_token=s3cret"))[0] == 200
        assert (await fetch(server.http + "/health"))[0] == 200

    with serve(pipeline, auth_token="s3cret") as server:
        asyncio.run(scenario(server))


def test_metrics_health_page_and_query_string(pipeline):
    async def scenario(server):
        status, page = await fetch(server.http + "/")
        assert status == 200 and "<script" in page and "app.js" in page
        for asset in ("app.js", "ogg.js", "capture-worklet.js"):
            assert (await fetch(f"{server.http}/{asset}"))[0] == 200
        status, health = await fetch(server.http + "/health")
        assert status == 200 and '"status": "ok"' in health and '"max_conversations": 3' in health
        status, metrics = await fetch(server.http + "/metrics")
        for name in (
            "duplex_active_conversations",
            "duplex_step_seconds_bucket",
            "duplex_reply_latency_seconds_bucket",
            "duplex_frames_late_total",
            "duplex_frames_dropped_total",
        ):
            assert f"\n{name}" in metrics
        assert "# TYPE duplex_step_seconds histogram" in metrics
        # The official web client's query string is accepted; nonsense in it is refused clearly.
        official = with_query(
            server.ws,
            text_temperature=0.7,
            text_topk=25,
            audio_temperature=0.8,
            audio_topk=250,
            pad_mult=0,
            text_seed=123,
            audio_seed=456,
            repetition_penalty_context=64,
            repetition_penalty=1.0,
        )
        async with aiohttp.ClientSession() as session:
            ws = await session.ws_connect(official)
            assert (await ws.receive(timeout=10)).data == protocol.handshake()
            await ws.close()
            ws = await session.ws_connect(with_query(server.ws, text_seed="many"))
            refusal = await ws.receive(timeout=10)
            assert refusal.data[0] == Kind.ERROR and "text_seed" in refusal.data.decode()

    with serve(pipeline, max_conversations=3) as server:
        asyncio.run(scenario(server))


def test_query_string_gives_only_the_seed():
    from duplex.stream.server import sampling_from_query
    from duplex.stream.slots import SamplingParams

    official = {"text_temperature": "0.7", "text_topk": "25", "audio_temperature": "0.8", "pad_mult": "0"}
    assert sampling_from_query(official) == SamplingParams()
    assert sampling_from_query({**official, "text_seed": "2", "audio_seed": "5"}).seed == 2 * 1_000_003 + 5
    assert sampling_from_query({"audio_seed": "5.0"}, SamplingParams(seed=9)).seed == 5
    assert sampling_from_query({}, SamplingParams(seed=9)).seed == 9
    with pytest.raises(ValueError, match="audio_seed='x' is not a valid int"):
        sampling_from_query({"audio_seed": "x"})


def test_a_client_that_stops_reading_is_closed_without_holding_anyone_up():
    from duplex.stream.engine import Reply
    from duplex.stream.server import DuplexServer, ServerConfig
    from duplex.stream.slots import Conversation, SamplingParams
    from stream_helpers import EchoPipeline

    class StuckSocket:
        """A websocket whose peer never reads: every send blocks forever."""

        closed_with = None

        async def send_bytes(self, data):
            await asyncio.Event().wait()

        async def close(self, code=1000, message=b""):
            self.closed_with = code

    async def scenario():
        server = DuplexServer(DuplexEngine(EchoPipeline(), 1), ServerConfig(send_timeout_s=0.2))
        replies: asyncio.Queue = asyncio.Queue()
        conversation = Conversation(0, SamplingParams(), 1)
        replies.put_nowait(Reply(conversation, np.zeros(FRAME, np.float32), "hi", 1, time.monotonic()))
        socket = StuckSocket()
        started = time.monotonic()
        await asyncio.wait_for(server._send_replies(socket, replies), 5)
        return socket.closed_with, time.monotonic() - started

    code, elapsed = asyncio.run(scenario())
    assert code == 1008 and elapsed < 2


def test_shutdown_closes_open_conversations_promptly_and_stops_the_engine():
    from stream_helpers import EchoPipeline

    class RecordingPipeline(EchoPipeline):
        stopped = False

        def stop(self) -> None:
            self.stopped = True

    pipeline = RecordingPipeline()
    server = serve(pipeline, max_conversations=2).__enter__()

    async def scenario():
        async with aiohttp.ClientSession() as session:
            talking = await session.ws_connect(server.ws)
            silent = await session.ws_connect(server.ws)  # connected, never reads again
            assert (await talking.receive(timeout=10)).data == protocol.handshake()
            await talking.send_bytes(protocol.audio(encode_file(np.zeros(4 * FRAME, np.float32))))
            started = time.monotonic()
            stopping = asyncio.create_task(asyncio.to_thread(server.__exit__))
            while (message := await talking.receive(timeout=30)).type == aiohttp.WSMsgType.BINARY:
                pass
            await stopping
            del silent
            return message, time.monotonic() - started

    message, elapsed = asyncio.run(scenario())
    assert message.type == aiohttp.WSMsgType.CLOSE and message.data == 1001, message
    assert elapsed < 10, elapsed
    assert pipeline.stopped
