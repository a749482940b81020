"""`duplex data` commands."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from duplex.cli.errors import RuntimeProblem, usage_error

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


@app.command("speech")
def speech(
    output: Path = typer.Argument(..., help="Folder to write the clips and their data.jsonl index into."),
    clips: int = typer.Option(1000, "--clips", "-n", min=1, help="How many clips to make."),
    seconds: float = typer.Option(
        3.0, min=0.1, max=120, help="Speech per clip: whole sentences are added until it lasts this long."
    ),
    split: str = typer.Option(
        "train",
        help="train: training sentences and voices; heldout: only the sentences (5%, by hash) and voices "
        "training never uses, for validation and evaluation. Write each split to its own folder.",
    ),
    text: Path = typer.Option(
        None,
        help="Your own sentences: a UTF-8 text file, one sentence per line or prose. Default: the "
        "docstrings of Python's standard library (about 6,500 sentences).",
    ),
    seed: int = typer.Option(0, help="Seed of every draw (a clip depends only on the seed and its number)."),
    workers: int = typer.Option(1, min=1, help="Processes making clips (the same clips for any number)."),
) -> None:
    """Write speech clips for codec training: sentences in many voices and prosodies over a noise floor."""
    import time

    from duplex.demo.data.speech import SPLITS, SentenceSource, SpeechConfig, voices, write_speech_dataset
    from tqdm import tqdm

    if split not in SPLITS:
        raise usage_error(f"unknown split {split!r}: choose one of {', '.join(SPLITS)}", "--split")
    if output.exists() and not output.is_dir():
        raise RuntimeProblem(f"{output} is a file: pass a folder (new, or holding a dataset to replace)")
    source = SentenceSource.from_file(text) if text is not None else SentenceSource.stdlib()
    sentences = len(source.split(split))  # an empty split fails here, before any clip is made
    start = time.perf_counter()
    with tqdm(total=clips, unit="clip", disable=None, leave=False, desc="duplex data speech") as bar:
        index = write_speech_dataset(
            output,
            clips,
            seed=seed,
            split=split,
            config=SpeechConfig(seconds=seconds),
            source=source,
            workers=workers,
            on_clip=lambda _: bar.update(),
        )
    elapsed = time.perf_counter() - start
    minutes = sum(json.loads(line)["duration"] for line in index.read_text().splitlines()) / 60
    typer.echo(
        f"wrote {clips} {split} clips ({minutes:.1f} min of audio; {sentences} sentences and "
        f"{len(voices(split))} voices to draw from) in {elapsed:.1f} s ({clips / elapsed:.1f} clips/s): "
        f"{index}"
    )


@app.command("conversations")
def conversations(
    output: Path = typer.Argument(
        ..., help="Folder to write the conversations and their data.jsonl index into."
    ),
    count: int = typer.Option(1200, "--count", "-n", min=1, help="How many conversations to make."),
    split: str = typer.Option(
        "train",
        help="train: users in the training voices, 1-2 questions each, plus a tokenizer of the script; "
        "heldout: each question of the script in turn, in voices training never uses (the test set).",
    ),
    seed: int = typer.Option(
        0, help="Seed of every draw (a conversation depends only on the seed and its number)."
    ),
) -> None:
    """Write scripted conversations (moshi-finetune format): a user asks the demo's questions, the model
    gives each its one spoken answer, with pauses, overlaps and backchannels."""
    from duplex.demo.data.conversations import SCRIPT, write_conversations
    from duplex.demo.data.speech import SPLITS

    if split not in SPLITS:
        raise usage_error(f"unknown split {split!r}: choose one of {', '.join(SPLITS)}", "--split")
    if output.exists() and not output.is_dir():
        raise RuntimeProblem(f"{output} is a file: pass a folder (new, or holding a dataset to replace)")
    index = write_conversations(output, count, split=split, seed=seed)
    minutes = sum(json.loads(line)["duration"] for line in index.read_text().splitlines()) / 60
    typer.echo(
        f"wrote {count} {split} conversations ({minutes:.1f} min, {len(SCRIPT)} scripted questions): {index}"
    )


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
