"""`duplex codec` commands."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True)


@app.callback()
def _group() -> None:
    """Encode and decode audio with the Mimi codec."""
