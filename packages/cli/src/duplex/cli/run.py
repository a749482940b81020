"""`duplex run`: stream a wav file through the full duplex pipeline, offline."""

from __future__ import annotations

from pathlib import Path

import typer
from duplex.cli.errors import RuntimeProblem
from duplex.cli.options import NUMERICS_HELP, QUANTIZE_HELP, numerics_option, quantize_option

SAMPLE_RATE = 24_000  # Mimi's rate: the input is read (and checked) at it before the model loads
_DTYPES = ("stored", "float32", "bfloat16", "float16")


def _dtype(name: str):
    import torch

    if name not in _DTYPES:
        raise typer.BadParameter(f"--dtype must be one of {', '.join(_DTYPES)}, got {name!r}")
    return None if name == "stored" else getattr(torch, name)


def run(
    input_wav: Path | None = typer.Argument(
        None,
        help="The user's side of the call (default: a greeting by espeak-ng, cached in ~/.cache/duplex).",
    ),
    output_wav: Path = typer.Argument(
        Path("reply.wav"), help="Where to write the reply (and OUT.json), relative to the current folder."
    ),
    checkpoint: str | None = typer.Option(
        None,
        "--checkpoint",
        help="A checkpoint directory or Hugging Face repo id (default: the bundled tiny demo).",
    ),
    device: str = typer.Option("cpu", help="torch device."),
    dtype: str = typer.Option(
        "stored", help="LM dtype: stored (as in the checkpoint), float32, bfloat16, float16."
    ),
    quantize: str = typer.Option("none", help=QUANTIZE_HELP),
    numerics: str = typer.Option("fast", "--numerics", help=NUMERICS_HELP),
    greedy: bool = typer.Option(False, help="Greedy decoding instead of sampling."),
    seed: int = typer.Option(42424242, help="Sampling seed."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    from duplex.stream.audio import load_mono
    from duplex.stream.offline import run_conversation, write_outputs
    from duplex.stream.registry import PIPELINES
    from duplex.stream.serving import DIALOGUE
    from duplex.stream.slots import SamplingParams
    from tqdm import tqdm

    torch_dtype = _dtype(dtype)
    weights = quantize_option(quantize)
    numerics = numerics_option(numerics)
    try:
        # The input first: a mistake there is found in a second, not after loading the model.
        input_wav = input_wav if input_wav is not None else _example_wav()
        pcm = load_mono(input_wav, SAMPLE_RATE)
        pipeline = PIPELINES.get(DIALOGUE).from_checkpoint(
            checkpoint,
            device=device,
            dtype=torch_dtype,
            quantize=weights,
            numerics=numerics,
            **({"use_sampling": False} if greedy else {}),
        )
        if pipeline.sample_rate != SAMPLE_RATE:
            pcm = load_mono(input_wav, pipeline.sample_rate)
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        raise RuntimeProblem(str(error)) from error
    with tqdm(total=None, unit="frame", disable=not progress, desc="duplex run") as bar:

        def advance(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        result = run_conversation(pipeline, pcm, SamplingParams(seed=seed), on_frame=advance)
    transcript = write_outputs(result, output_wav)
    budget = 1000.0 / pipeline.frame_rate
    steady = result.step_times[1:] or result.step_times  # the first step warms up (kernels, caches)
    mean_ms = 1000.0 * sum(steady) / max(len(steady), 1)
    typer.echo(f"reply: {output_wav} ({len(result.reply) / result.sample_rate:.2f} s)")
    typer.echo(f"transcript: {transcript}")
    typer.echo(f"text: {result.text}")
    typer.echo(speed_verdict(mean_ms, budget, device))


def _example_wav() -> Path:
    """The default input, spoken by espeak-ng once into the cache (next to the demo checkpoint), so
    that running from any folder writes nothing there but the reply."""
    from duplex.demo.checkpoints import cache_root, example_wav

    return example_wav(cache_root() / "hello.wav")


def speed_verdict(mean_ms: float, budget_ms: float, device: str) -> str:
    """The summary line of the step time: the real-time factor, whether a live call keeps up, and
    what would help when it does not."""
    factor = mean_ms / budget_ms
    line = f"mean step: {mean_ms:.1f} ms for each {budget_ms:.0f} ms frame, real-time factor {factor:.2f}"
    if factor <= 1.0:
        return f"{line}: kept up, a live call (duplex serve) would run in real time here"
    if str(device).startswith("cpu"):
        helps = "a GPU (--device cuda), a smaller model, or a less loaded machine"
    else:
        helps = "--dtype bfloat16, a faster GPU, or fewer conversations at once"
    return f"{line}: {factor:.1f}x slower than real time, a live call would fall behind; would help: {helps}"
