"""`duplex run`: stream a wav file through the full duplex pipeline, offline."""

from __future__ import annotations

from pathlib import Path

import typer

_DTYPES = ("stored", "float32", "bfloat16", "float16")


def _dtype(name: str):
    import torch

    if name not in _DTYPES:
        raise typer.BadParameter(f"--dtype must be one of {', '.join(_DTYPES)}, got {name!r}")
    return None if name == "stored" else getattr(torch, name)


def run(
    input_wav: Path | None = typer.Argument(
        None, help="The user's side of the call (default: examples/hello.wav, spoken by espeak-ng)."
    ),
    output_wav: Path = typer.Argument(Path("reply.wav"), help="Where to write the reply (and OUT.json)."),
    checkpoint: str | None = typer.Option(
        None,
        "--checkpoint",
        help="A checkpoint directory or Hugging Face repo id (default: the bundled tiny demo).",
    ),
    device: str = typer.Option("cpu", help="torch device."),
    dtype: str = typer.Option(
        "stored", help="LM dtype: stored (as in the checkpoint), float32, bfloat16, float16."
    ),
    greedy: bool = typer.Option(False, help="Greedy decoding instead of sampling."),
    seed: int = typer.Option(42424242, help="Sampling seed."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    from duplex.stream.audio import load_mono
    from duplex.stream.demo import example_wav
    from duplex.stream.offline import run_conversation, write_outputs
    from duplex.stream.pipeline import MoshiPipeline
    from duplex.stream.slots import SamplingParams
    from tqdm import tqdm

    if input_wav is None:
        input_wav = example_wav()
    try:
        pipeline = MoshiPipeline.from_checkpoint(
            checkpoint, device=device, dtype=_dtype(dtype), **({"use_sampling": False} if greedy else {})
        )
        pcm = load_mono(input_wav, pipeline.sample_rate)
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=1) from None
    with tqdm(total=None, unit="frame", disable=not progress, desc="duplex run") as bar:

        def advance(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        result = run_conversation(pipeline, pcm, SamplingParams(seed=seed), on_frame=advance)
    transcript = write_outputs(result, output_wav)
    budget = 1000.0 / pipeline.frame_rate
    mean_ms = 1000.0 * sum(result.step_times) / max(len(result.step_times), 1)
    typer.echo(f"reply: {output_wav} ({len(result.reply) / result.sample_rate:.2f} s)")
    typer.echo(f"transcript: {transcript}")
    typer.echo(f"text: {result.text}")
    typer.echo(f"mean step: {mean_ms:.1f} ms (budget {budget:.0f} ms)")
