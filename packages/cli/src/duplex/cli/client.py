"""`duplex client`: talk to a server from a wav file and record the reply."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import typer


def client(
    url: str = typer.Option("ws://127.0.0.1:8998/api/chat", help="The server's websocket address."),
    input_wav: Path = typer.Option(..., "--input", help="What to say (any rate; sent as 24 kHz mono)."),
    output_wav: Path = typer.Option(
        Path("reply.wav"), "--output", help="Where to write the reply (and .json)."
    ),
    auth_token: str | None = typer.Option(None, "--auth-token", envvar="DUPLEX_AUTH_TOKEN"),
    realtime: bool = typer.Option(
        True,
        help="Send at real-time pace (--no-realtime: as fast as possible; a server drops audio that comes "
        "faster than about 1.5x real time beyond a short burst).",
    ),
) -> None:
    from duplex.stream.audio import load_mono, save_wav
    from duplex.stream.client import SAMPLE_RATE, ServerRefused, talk, with_query

    try:
        pcm = load_mono(input_wav, SAMPLE_RATE)
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=1) from None
    if auth_token:
        url = with_query(url, auth_token=auth_token)
    try:
        result = asyncio.run(
            talk(url, pcm, realtime=realtime, on_text=lambda p: typer.echo(p.text, nl=False))
        )
    except ServerRefused as error:
        typer.echo(f"\nthe server refused: {error}", err=True)
        raise typer.Exit(code=2) from None
    except (OSError, TimeoutError) as error:
        typer.echo(f"\ncannot talk to {url}: {error}", err=True)
        raise typer.Exit(code=1) from None
    typer.echo("")
    save_wav(output_wav, result.reply, SAMPLE_RATE)
    transcript = output_wav.with_suffix(".json")
    pieces = [{"time": round(p.time, 4), "text": p.text} for p in result.text]
    transcript.write_text(
        json.dumps({"text": result.transcript, "pieces": pieces}, indent=2, ensure_ascii=False) + "\n"
    )
    typer.echo(f"reply: {output_wav} ({len(result.reply) / SAMPLE_RATE:.2f} s), transcript: {transcript}")
