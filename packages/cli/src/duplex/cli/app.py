"""The `duplex` typer application: one module per command group, wired here."""

from __future__ import annotations

import typer
from duplex.cli import client, codec, data, info, run, serve, train

app = typer.Typer(
    name="duplex",
    help="duplex: full-duplex spoken dialogue with Moshi-family models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(codec.app, name="codec", help="Encode and decode audio with the Mimi codec.")
app.add_typer(train.app, name="train", help="Train a codec or a language model.")
app.add_typer(data.app, name="data", help="Build and inspect datasets.")
app.command("run", help="Stream a wav file through the full duplex pipeline.")(run.run)
app.command("serve", help="Serve live conversations over the official websocket protocol.")(serve.serve)
app.command("client", help="Talk to a server from a wav file.")(client.client)
app.command("info", help="Versions, device and every registered component.")(info.info)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
