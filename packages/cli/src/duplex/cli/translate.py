"""`duplex translate`: speech-to-speech translation of a file with a Hibiki model
(docs/architecture.md §5.4). The input is read as mono 24 kHz (resampled, channels averaged); the
translated speech goes to OUT.wav and its text to OUT.txt, both only once the run succeeded."""

from __future__ import annotations

from pathlib import Path

import typer
from duplex.cli.errors import RuntimeProblem, usage_error
from duplex.cli.options import NUMERICS_HELP, QUANTIZE_HELP, numerics_option, quantize_option

DEFAULT_CHECKPOINT = "kyutai/hibiki-2b-pytorch-bf16"


def translate(
    input_wav: Path = typer.Argument(..., help="The speech to translate (any rate, mono or not)."),
    output_wav: Path = typer.Argument(
        Path("translation.wav"), help="Where to write the translation (and OUT.txt)."
    ),
    checkpoint: str = typer.Option(
        DEFAULT_CHECKPOINT,
        "--checkpoint",
        "-c",
        help="A Hibiki checkpoint directory or Hugging Face repo id.",
    ),
    cfg: float = typer.Option(1.0, "--cfg", help="Guidance away from a poor translation (1: none)."),
    temperature: float | None = typer.Option(None, "--temperature", "-t", help="Default: the checkpoint's."),
    seed: int = typer.Option(42, "--seed", help="Sampling seed."),
    device: str = typer.Option("cpu", help="torch device."),
    quantize: str = typer.Option("none", help=QUANTIZE_HELP),
    numerics: str = typer.Option("fast", "--numerics", help=NUMERICS_HELP),
) -> None:
    from duplex.lm.translator import Translator
    from duplex.stream.audio import load_mono, save_wav

    if not 0.0 < cfg <= 10.0:
        raise usage_error(f"must be in (0, 10], got {cfg}", "--cfg")
    if temperature is not None and not 0.0 <= temperature <= 5.0:
        raise usage_error(f"must be in [0, 5], got {temperature}", "--temperature")
    weights = quantize_option(quantize)
    numerics = numerics_option(numerics)
    try:
        pcm = load_mono(input_wav, 24_000)
        translator = Translator.from_checkpoint(
            checkpoint,
            device=device,
            quantize=weights,
            numerics=numerics,
            cfg=cfg,
            temperature=temperature,
            seed=seed,
        )
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        raise RuntimeProblem(str(error)) from error
    result = translator.translate(pcm)
    if not result.finished:
        typer.echo("warning: the model did not end its translation; it was cut at the length limit", err=True)
    partial = output_wav.with_name(output_wav.name + ".partial.wav")
    save_wav(partial, result.audio, result.sample_rate)
    output_wav.with_suffix(".txt").write_text(result.text + "\n")
    partial.replace(output_wav)
    typer.echo(f"translation: {output_wav} ({len(result.audio) / result.sample_rate:.2f} s)")
    typer.echo(f"text: {result.text}")
