"""`duplex serve`."""

from __future__ import annotations

import typer


def serve() -> None:
    typer.echo("duplex serve is not available yet", err=True)
    raise typer.Exit(code=2)
