"""`duplex asr`: speech recognition of audio files with a Kyutai STT model (docs/architecture.md §5.2).

Every file is read as mono at 24 kHz (other rates are resampled, several channels averaged), and
all the files run as rows of one batch. The words come out with their start and end times, as
plain text, JSON or SubRip subtitles, on stdout or in files.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from duplex.cli.errors import RuntimeProblem, usage_error
from duplex.cli.options import NUMERICS_HELP, QUANTIZE_HELP, numerics_option, quantize_option

DEFAULT_CHECKPOINT = "kyutai/stt-1b-en_fr"
FORMATS = ("txt", "json", "srt")
SUBTITLE_WORDS = 8  # at most this many words per subtitle
SUBTITLE_GAP = 1.0  # a pause this long (seconds) starts a new subtitle


def asr(
    inputs: list[Path] = typer.Argument(..., help="Audio files (wav, flac, ogg...); any rate, mono or not."),
    checkpoint: str = typer.Option(
        DEFAULT_CHECKPOINT, "--checkpoint", "-c", help="An STT checkpoint directory or Hugging Face repo id."
    ),
    output_format: str = typer.Option("txt", "--format", "-f", help="txt, json or srt."),
    output: Path | None = typer.Option(
        None,
        "--output",
        "-o",
        help="Where to write: a file (one input) or a folder (one file per input); default: stdout.",
    ),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Files transcribed at once."),
    device: str = typer.Option("cpu", help="torch device."),
    quantize: str = typer.Option("none", help=QUANTIZE_HELP),
    numerics: str = typer.Option("fast", "--numerics", help=NUMERICS_HELP),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    from duplex.lm.transcriber import Transcriber
    from duplex.stream.audio import load_mono
    from tqdm import tqdm

    if output_format not in FORMATS:
        raise usage_error(f"must be one of {', '.join(FORMATS)}, got {output_format!r}", "--format")
    if output is not None and len(inputs) > 1 and output.exists() and not output.is_dir():
        raise usage_error(f"{output} is a file; with {len(inputs)} inputs, give a folder", "--output")
    weights = quantize_option(quantize)
    numerics = numerics_option(numerics)
    try:
        # The inputs first: a mistake there is found in a second, not after loading the model.
        audios = [load_mono(path, 24_000) for path in inputs]
        transcriber = Transcriber.from_checkpoint(
            checkpoint, device=device, quantize=weights, numerics=numerics
        )
        if transcriber.sample_rate != 24_000:
            audios = [load_mono(path, transcriber.sample_rate) for path in inputs]
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        raise RuntimeProblem(str(error)) from error
    total = sum(transcriber.steps_for(len(audio)) for audio in audios)
    with tqdm(total=total, unit="step", disable=not progress, desc="duplex asr") as bar:
        results = transcriber.transcribe(audios, batch_size=batch_size, on_step=bar.update)
    rendered = [
        render(words, path, len(audio) / transcriber.sample_rate, output_format)
        for path, audio, words in zip(inputs, audios, results, strict=True)
    ]
    _write(rendered, inputs, output, output_format)


def render(words: list, path: Path, duration: float, output_format: str) -> str:
    text = " ".join(word.text for word in words)
    if output_format == "txt":
        return text + "\n"
    if output_format == "json":
        document = {
            "file": str(path),
            "duration": round(duration, 3),
            "text": text,
            "words": [word.to_dict() for word in words],
        }
        return json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    return subtitles(words)


def subtitles(words: list) -> str:
    """SubRip cues of up to ``SUBTITLE_WORDS`` words, split at pauses of ``SUBTITLE_GAP``."""
    cues: list[list] = []
    for word in words:
        if not cues or len(cues[-1]) >= SUBTITLE_WORDS or word.start - cues[-1][-1].end >= SUBTITLE_GAP:
            cues.append([])
        cues[-1].append(word)
    blocks = []
    for number, cue in enumerate(cues, 1):
        timing = f"{_srt_time(cue[0].start)} --> {_srt_time(max(cue[-1].end, cue[0].start))}"
        blocks.append(f"{number}\n{timing}\n{' '.join(w.text for w in cue)}\n")
    return "\n".join(blocks)


def _srt_time(seconds: float) -> str:
    millis = round(seconds * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d},{millis:03d}"


def _write(rendered: list[str], inputs: list[Path], output: Path | None, output_format: str) -> None:
    if output is None:
        if len(inputs) == 1:
            typer.echo(rendered[0], nl=False)
        elif output_format == "json":  # one JSON document: the list of the files' documents
            documents = [json.loads(text) for text in rendered]
            typer.echo(json.dumps(documents, indent=2, ensure_ascii=False))
        else:
            for path, text in zip(inputs, rendered, strict=True):
                typer.echo(
                    f"{path}: {text}" if output_format == "txt" else f"==> {path} <==\n{text}", nl=False
                )
        return
    if len(inputs) == 1 and not output.is_dir():
        targets = [output]
    else:
        output.mkdir(parents=True, exist_ok=True)
        targets = [output / f"{path.stem}.{output_format}" for path in inputs]
    for target, text in zip(targets, rendered, strict=True):
        partial = target.with_name(target.name + ".partial")  # never a half-written file
        partial.write_text(text)
        partial.replace(target)
        typer.echo(f"wrote {target}", err=True)
