"""`duplex loadtest`: many real-time conversations against a running server, and how they fared."""

from __future__ import annotations

import asyncio
from pathlib import Path

import typer


def loadtest(
    url: str = typer.Option("ws://127.0.0.1:8998/api/chat", help="The server's websocket address."),
    conversations: int = typer.Option(4, min=1, max=256, help="Conversations at once."),
    seconds: float = typer.Option(
        10.0, min=0.1, max=600.0, help="Audio each conversation sends, in seconds."
    ),
    input_wav: Path | None = typer.Option(
        None, "--input", help="What each conversation says, looped (default: a speech-like test signal)."
    ),
    auth_token: str | None = typer.Option(None, "--auth-token", envvar="DUPLEX_AUTH_TOKEN"),
    min_completeness: float = typer.Option(
        0.0, min=0.0, max=1.0, help="Exit 1 when a conversation's reply is less complete than this."
    ),
) -> None:
    """Print per-conversation reply completeness, handshake and reply-latency p50/p99, frames dropped."""
    from duplex.stream.audio import load_mono
    from duplex.stream.client import SAMPLE_RATE, load_test

    pcm = load_mono(input_wav, SAMPLE_RATE) if input_wav is not None else None
    typer.echo(f"loadtest: {conversations} conversations of {seconds:g} s against {url}")
    report = asyncio.run(load_test(url, conversations, seconds, pcm=pcm, auth_token=auth_token or None))
    for line in report.lines():
        typer.echo(line)
    worst = min((c.completeness if c.error is None else 0.0) for c in report.conversations)
    if worst < min_completeness:
        typer.echo(
            f"error: a reply was {worst:.1%} complete, below --min-completeness {min_completeness:.0%}",
            err=True,
        )
        raise typer.Exit(code=1)
