"""`duplex run`."""

from __future__ import annotations

import typer


def run() -> None:
    typer.echo("duplex run is not available yet", err=True)
    raise typer.Exit(code=2)
