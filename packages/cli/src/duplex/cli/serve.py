"""`duplex serve`: live conversations over the official websocket protocol."""

from __future__ import annotations

import logging

import typer

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
        help="Refuse clients that do not present this token.",
    ),
    device: str = typer.Option("cpu", help="torch device."),
    dtype: str = typer.Option(
        "stored", help="LM dtype: stored (as in the checkpoint), float32, bfloat16, float16."
    ),
    greedy: bool = typer.Option(False, help="Greedy decoding instead of sampling."),
    log_level: str = typer.Option("info", help="Logging level."),
) -> None:
    from duplex.stream.engine import DuplexEngine
    from duplex.stream.pipeline import MoshiPipeline
    from duplex.stream.server import DuplexServer, ServerConfig, serve_forever

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        pipeline = MoshiPipeline.from_checkpoint(
            checkpoint, device=device, dtype=_dtype(dtype), **({"use_sampling": False} if greedy else {})
        )
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=1) from None
    engine = DuplexEngine(pipeline, max_conversations=max_conversations)
    engine.warmup()
    server = DuplexServer(engine, ServerConfig(host=host, port=port, auth_token=auth_token))
    typer.echo(f"duplex: http://{host}:{port}/ ({max_conversations} conversations at once)")
    serve_forever(server)
