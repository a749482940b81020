"""`duplex train` commands: codec and LM training with Lightning."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True)

STRATEGY_HELP = "Lightning strategy: auto, ddp, ddp_spawn, ddp_find_unused_parameters_true, fsdp, deepspeed."


@app.callback()
def _group() -> None:
    """Train a codec or a language model."""


def _precision(precision: str | None) -> str:
    if precision:
        return precision
    import torch

    return "bf16-mixed" if torch.cuda.is_available() else "32-true"


def _devices(devices: str) -> int | str:
    return int(devices) if devices.isdigit() else devices


@app.command("codec")
def codec(
    data: Path = typer.Option(..., help="Folder of audio files or of a moshi-finetune dataset."),
    output: Path = typer.Option(..., help="Run folder: checkpoints, logs, the exported mimi.safetensors."),
    max_steps: int = typer.Option(1000, min=1, help="Training steps (batches)."),
    preset: str = typer.Option("mimi", help="Training preset: mimi (the official size) or tiny."),
    init: str = typer.Option(None, help="Start from these Mimi weights instead of random ones."),
    checkpoint_every: int = typer.Option(50, min=1, help="Write a checkpoint every N steps."),
    batch_size: int = typer.Option(None, min=1, help="Override the preset's batch size."),
    segment_seconds: float = typer.Option(None, help="Override the preset's segment length."),
    strategy: str = typer.Option("auto", help=STRATEGY_HELP),
    devices: str = typer.Option("1", help="Devices (processes) to use, or 'auto'."),
    accelerator: str = typer.Option("auto", help="cpu, gpu or auto."),
    precision: str = typer.Option(None, help="Lightning precision (default: bf16-mixed on GPU, 32 on CPU)."),
    seed: int = typer.Option(0),
) -> None:
    """Train a Mimi codec; rerunning the same command resumes from the last checkpoint."""
    from duplex.codec.training.config import CodecTrainingConfig
    from duplex.codec.training.run import train_codec

    overrides = {"seed": seed}
    if init:
        overrides["init"] = init
    if batch_size:
        overrides["batch_size"] = batch_size
    if segment_seconds:
        overrides["segment_seconds"] = segment_seconds
    config = CodecTrainingConfig.from_preset(preset, **overrides)
    train_codec(
        data,
        output,
        config,
        max_steps=max_steps,
        checkpoint_every=checkpoint_every,
        strategy=strategy,
        devices=_devices(devices),
        accelerator=accelerator,
        precision=_precision(precision),
    )
    typer.echo(f"codec written to {output / 'mimi.safetensors'}")


@app.command("lm")
def lm(
    data: Path = typer.Option(..., help="A moshi-finetune dataset (folder or .jsonl)."),
    init: str = typer.Option(..., help="Checkpoint to start from (folder or HF repo), or preset:NAME."),
    output: Path = typer.Option(
        ..., help="Run folder: checkpoints, logs, token cache, exported checkpoint/."
    ),
    lora: bool = typer.Option(False, "--lora", help="Train LoRA adapters only (saved as lora.safetensors)."),
    max_steps: int = typer.Option(1000, min=1, help="Training steps (batches)."),
    preset: str = typer.Option("moshi", help="Training preset: moshi (the official recipe) or tiny."),
    codec: Path = typer.Option(None, help="Mimi weights (default: the checkpoint's)."),
    tokenizer: Path = typer.Option(None, help="SentencePiece model (default: the checkpoint's)."),
    checkpoint_every: int = typer.Option(50, min=1, help="Write a checkpoint every N steps."),
    batch_size: int = typer.Option(None, min=1, help="Override the preset's batch size."),
    segment_frames: int = typer.Option(None, min=2, help="Override the preset's segment length (frames)."),
    lora_rank: int = typer.Option(None, min=1, help="Override the preset's LoRA rank."),
    strategy: str = typer.Option("auto", help=STRATEGY_HELP),
    devices: str = typer.Option("1", help="Devices (processes) to use, or 'auto'."),
    accelerator: str = typer.Option("auto", help="cpu, gpu or auto."),
    precision: str = typer.Option(None, help="Lightning precision (default: bf16-mixed on GPU, 32 on CPU)."),
    seed: int = typer.Option(0),
) -> None:
    """Train or fine-tune the LM; rerunning the same command resumes from the last checkpoint."""
    from duplex.lm.training.config import LMTrainingConfig
    from duplex.lm.training.run import train_lm

    overrides: dict = {"seed": seed}
    for key, value in (
        ("batch_size", batch_size),
        ("segment_frames", segment_frames),
        ("lora_rank", lora_rank),
    ):
        if value:
            overrides[key] = value
    config = LMTrainingConfig.from_preset(preset, **overrides)
    train_lm(
        data,
        output,
        init,
        config,
        max_steps=max_steps,
        lora=lora,
        codec=codec,
        tokenizer=tokenizer,
        checkpoint_every=checkpoint_every,
        strategy=strategy,
        devices=_devices(devices),
        accelerator=accelerator,
        precision=_precision(precision),
    )
    typer.echo(f"checkpoint written to {output / 'checkpoint'}")
