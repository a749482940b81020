"""`duplex loadtest` against a local server, and `duplex serve`'s checks of its network options."""

import asyncio
import re
import socket
import threading

import pytest
from duplex.cli.app import app
from duplex.demo.checkpoints import build_tiny_checkpoint
from typer.testing import CliRunner


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return build_tiny_checkpoint(tmp_path_factory.mktemp("demo") / "tiny")


class ServerThread:
    """`duplex serve`'s server for the tiny demo, on 127.0.0.1 (free port), in a thread."""

    def __init__(self, checkpoint, **config) -> None:
        from duplex.stream.engine import DuplexEngine
        from duplex.stream.pipeline import MoshiPipeline
        from duplex.stream.server import DuplexServer, ServerConfig

        engine = DuplexEngine(MoshiPipeline.from_checkpoint(checkpoint), max_conversations=2)
        engine.warmup()
        self.server = DuplexServer(engine, ServerConfig(port=0, **config))
        self.ready = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        from duplex.stream.server import bound_port, start_server

        self.loop, self.stop = asyncio.get_running_loop(), asyncio.Event()
        runner = await start_server(self.server)
        self.port = bound_port(runner)
        self.ready.set()
        try:
            await self.stop.wait()
        finally:
            await runner.cleanup()

    def __enter__(self):
        self.thread.start()
        assert self.ready.wait(30), "the server did not start"
        return self

    def __exit__(self, *exc) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(30)


def test_loadtest_prints_completeness_latencies_and_drops(checkpoint):
    with ServerThread(checkpoint, auth_token="tok") as server:
        url = f"ws://127.0.0.1:{server.port}/api/chat"
        result = CliRunner().invoke(
            app,
            ["loadtest", "--url", url, "--conversations", "2", "--seconds", "2.4", "--auth-token", "tok"],
            catch_exceptions=False,
        )
    assert result.exit_code == 0, result.output
    out = result.output
    rows = [line for line in out.splitlines() if re.match(r"\s+\d+\s", line)]
    assert len(rows) == 2 and all("100.0%" in row for row in rows), out  # every reply complete
    assert "conversations: 2/2 served, 2.4 s each, mean reply completeness 100.0%" in out
    assert re.search(r"handshake: p50 \d+ ms, p99 \d+ ms", out)
    assert re.search(r"reply latency \(server\): p50 \d+ ms, p99 \d+ ms", out)
    assert "frames dropped: backlog 0, audio_rate 0, slow_reader 0" in out


def test_loadtest_reports_a_refused_server_and_bounds_its_size():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens there
    result = CliRunner().invoke(
        app,
        ["loadtest", "--url", f"ws://127.0.0.1:{port}/api/chat", "--conversations", "1", "--seconds", "0.5"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0 and "conversations: 0/1 served" in result.output, result.output
    too_many = CliRunner().invoke(app, ["loadtest", "--conversations", "1000"])
    assert too_many.exit_code == 2 and "--conversations" in too_many.output


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--auth-token", ""], {}, "the auth token is empty"),
        ([], {"DUPLEX_AUTH_TOKEN": ""}, "the auth token is empty"),
        (["--static", "."], {}, "has no index.html"),
        (["--allow-origin", "evil"], {}, "must look like https://host[:port]"),
    ],
)
def test_serve_refuses_an_empty_token_and_bad_network_options_before_loading(args, env, message, tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    result = CliRunner().invoke(app, ["serve", "--port", port, *args], env=env)
    assert result.exit_code == 2, result.output
    assert message in result.output
