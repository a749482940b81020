"""`duplex data` commands."""

from __future__ import annotations

from pathlib import Path

import typer
from duplex.cli.errors import RuntimeProblem

app = typer.Typer(no_args_is_help=True)


@app.callback()
def _group() -> None:
    """Build and inspect datasets."""


@app.command("synth")
def synth(
    output: Path = typer.Argument(..., help="Folder to write the dataset into."),
    dialogues: int = typer.Option(8, "--dialogues", "-n", min=1, help="How many dialogues to synthesise."),
    seed: int = typer.Option(0, help="Seed of the word and timing draws."),
    tokenizer_vocab: int = typer.Option(
        128, help="Also train a sentencepiece tokenizer of this size on the text (0: none)."
    ),
) -> None:
    """Write a two-voice dialogue dataset (moshi-finetune format) spoken by espeak-ng."""
    from duplex.lm.data.synth import synthesize_dataset

    index = synthesize_dataset(output, dialogues, seed=seed, tokenizer_vocab_size=tokenizer_vocab or None)
    typer.echo(f"wrote {dialogues} dialogues: {index}")
    if tokenizer_vocab:
        typer.echo(f"tokenizer: {output / 'tokenizer.model'}")


@app.command("check")
def check(data: Path = typer.Argument(..., help="A dataset folder or its .jsonl index.")) -> None:
    """Validate a moshi-finetune dataset: files, stereo audio, alignments within the audio."""
    from duplex.lm.data import DatasetError, load_dataset

    try:
        dialogues = load_dataset(data)
    except DatasetError as error:
        raise RuntimeProblem(f"invalid dataset: {error}") from error
    hours = sum(d.audio.duration for d in dialogues) / 3600
    words = sum(len(d.words) for d in dialogues)
    typer.echo(f"ok: {len(dialogues)} files, {hours:.3f} h, {words} words")
