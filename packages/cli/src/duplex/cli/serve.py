"""`duplex serve`: live conversations over the official websocket protocol."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import typer
from duplex.cli.options import NUMERICS_HELP, QUANTIZE_HELP, numerics_option, quantize_option

_DTYPES = ("stored", "float32", "bfloat16", "float16")


def _dtype(name: str):
    import torch

    if name not in _DTYPES:
        raise typer.BadParameter(f"--dtype must be one of {', '.join(_DTYPES)}, got {name!r}")
    return None if name == "stored" else getattr(torch, name)


def serve(
    checkpoint: str | None = typer.Option(
        None,
        "--checkpoint",
        help="A checkpoint directory or Hugging Face repo id (default: the bundled tiny demo).",
    ),
    host: str = typer.Option("127.0.0.1", help="Interface to bind (0.0.0.0 to accept remote clients)."),
    port: int = typer.Option(8998, help="TCP port."),
    max_conversations: int = typer.Option(
        4, "--max-conversations", min=1, help="Conversations served at once."
    ),
    auth_token: str | None = typer.Option(
        None,
        "--auth-token",
        envvar="DUPLEX_AUTH_TOKEN",
        help="Refuse clients that do not present this token (?auth_token=, Bearer or kyutai-api-key).",
    ),
    allow_origin: list[str] = typer.Option(
        [],
        "--allow-origin",
        help="A web origin (https://host[:port], or *) that may open conversations besides this server's "
        "own pages; repeat for more.",
    ),
    static: Path | None = typer.Option(
        None,
        "--static",
        help="Serve the web client in this folder (with an index.html) at / in place of duplex's page.",
    ),
    max_connections: int = typer.Option(256, min=1, help="Open TCP connections at most (beyond: HTTP 503)."),
    header_timeout: float = typer.Option(10.0, min=0.01, help="Seconds a request's headers may take."),
    idle_timeout: float = typer.Option(
        60.0, min=0.01, help="Close a conversation after this long without audio."
    ),
    heartbeat: float = typer.Option(20.0, min=0.0, help="Websocket ping period in seconds (0: none)."),
    max_messages_per_second: float = typer.Option(
        100.0, min=0.01, help="Messages a conversation may send per second (beyond: closed)."
    ),
    max_audio_rate: float = typer.Option(
        1.5, min=1.0, help="Audio a conversation may send, in multiples of real time (beyond: dropped)."
    ),
    overload_ratio: float = typer.Option(
        1.0,
        min=0.0,
        help="Refuse new conversations while the recent p95 step time exceeds this many frame budgets "
        "(0: never).",
    ),
    device: str = typer.Option("cpu", help="torch device."),
    dtype: str = typer.Option(
        "stored", help="LM dtype: stored (as in the checkpoint), float32, bfloat16, float16."
    ),
    quantize: str = typer.Option("none", help=QUANTIZE_HELP),
    numerics: str = typer.Option("fast", "--numerics", help=NUMERICS_HELP),
    greedy: bool = typer.Option(False, help="Greedy decoding instead of sampling."),
    log_level: str = typer.Option("info", help="Logging level."),
) -> None:
    from duplex.stream.engine import DuplexEngine
    from duplex.stream.server import DuplexServer, ServerConfig, serve_forever
    from duplex.stream.serving import load_pipeline

    torch_dtype, weights = _dtype(dtype), quantize_option(quantize)
    numerics = numerics_option(numerics)
    config = _server_config(
        ServerConfig,
        host=host,
        port=port,
        auth_token=_auth_token(auth_token),
        allowed_origins=tuple(allow_origin),
        max_connections=max_connections,
        header_timeout_s=header_timeout,
        idle_timeout_s=idle_timeout,
        heartbeat_s=heartbeat or None,
        max_messages_per_s=max_messages_per_second,
        max_audio_rate=max_audio_rate,
        overload_ratio=overload_ratio or None,
        **({"static_dir": static} if static is not None else {}),
    )
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        pipeline = load_pipeline(
            checkpoint,
            device=device,
            dtype=torch_dtype,
            quantize=weights,
            numerics=numerics,
            **({"use_sampling": False} if greedy else {}),
        )
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=1) from None
    # An STT stream may send seconds of audio in one message (read with backpressure, never dropped).
    backlog = {"max_backlog_frames": 256} if pipeline.kind == "asr" else {}
    engine = DuplexEngine(pipeline, max_conversations=max_conversations, **backlog)
    engine.warmup()
    server = DuplexServer(engine, config)
    endpoint = {"chat": "/", "asr": "/api/asr-streaming", "tts": "/api/tts_streaming"}[pipeline.kind]
    typer.echo(f"duplex: http://{host}:{port}{endpoint} ({max_conversations} conversations at once)")
    serve_forever(server)


def _auth_token(token: str | None) -> str | None:
    """The token; an empty one (flag or environment) is a mistake, not "no auth"."""
    if token is None and os.environ.get("DUPLEX_AUTH_TOKEN") is not None:
        token = os.environ["DUPLEX_AUTH_TOKEN"]  # click reads an empty variable as unset
    if token is not None and not token.strip():
        raise typer.BadParameter(
            "the auth token is empty: give a non-empty token, or unset DUPLEX_AUTH_TOKEN and drop "
            "--auth-token to serve without auth",
            param_hint="'--auth-token' / DUPLEX_AUTH_TOKEN",
        )
    return token


_FLAGS = {
    "static_dir": "--static",
    "allowed_origins": "--allow-origin",
    "auth_token": "--auth-token",
    "header_timeout_s": "--header-timeout",
    "idle_timeout_s": "--idle-timeout",
    "heartbeat_s": "--heartbeat",
}


def _server_config(config_class, **fields):
    """The server's config, checked before the model loads; a bad value is a usage error."""
    from pydantic import ValidationError

    try:
        return config_class(**fields)
    except ValidationError as error:
        first = error.errors()[0]
        field = str(first.get("loc", ("",))[0])
        message = str(first.get("msg", "?")).removeprefix("Value error, ")
        flag = _FLAGS.get(field, "--" + field.replace("_", "-"))
        raise typer.BadParameter(message, param_hint=f"'{flag}'") from None
