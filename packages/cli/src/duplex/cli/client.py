"""`duplex client`."""

from __future__ import annotations

import typer


def client() -> None:
    typer.echo("duplex client is not available yet", err=True)
    raise typer.Exit(code=2)
