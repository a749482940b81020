"""The `duplex` typer application: one module per command group, wired here."""

from __future__ import annotations

import typer
from duplex.cli import asr, client, codec, data, info, loadtest, run, serve, train, translate, tts
from duplex.cli.errors import DuplexGroup, port_checked, set_debug, url_checked

app = typer.Typer(
    name="duplex",
    help="duplex: full-duplex spoken dialogue with Moshi-family models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=DuplexGroup,  # the error contract: one `error: ...` line, exit 2 (usage) or 1 (runtime)
)


@app.callback()
def _options(
    debug: bool = typer.Option(
        False, "--debug", envvar="DUPLEX_DEBUG", help="Show the traceback of an error, not just its line."
    ),
) -> None:
    set_debug(debug)


app.add_typer(codec.app, name="codec", help="Encode and decode audio with the Mimi codec.")
app.add_typer(train.app, name="train", help="Train a codec or a language model.")
app.add_typer(data.app, name="data", help="Build and inspect datasets.")
app.command("run", help="Stream a wav file through the full duplex pipeline.")(run.run)
app.command("serve", help="Serve live conversations over the official websocket protocol.")(
    port_checked(serve.serve)
)
app.command("client", help="Talk to a server from a wav file.")(url_checked(client.client))
app.command("asr", help="Transcribe audio files with a speech recognition (STT) model.")(asr.asr)
app.command("tts", help="Speak a text with a text-to-speech (TTS) model.")(tts.tts)
app.command("translate", help="Translate speech to speech with a Hibiki model.")(translate.translate)
app.command("info", help="Versions, device and every registered component.")(info.info)
app.command("loadtest", help="Many real-time conversations against a server.")(url_checked(loadtest.loadtest))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
