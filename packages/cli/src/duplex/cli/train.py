"""`duplex train` commands: codec and LM training with Lightning."""

from __future__ import annotations

from pathlib import Path

import typer
from duplex.cli.errors import RuntimeProblem, usage_error

app = typer.Typer(no_args_is_help=True)

PRESET_PREFIX = "preset:"  # duplex.lm.training.run.PRESET_PREFIX, without importing lightning to check it

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


# --max-steps when not given: what a CPU does in minutes for the tiny presets, a real run otherwise.
DEFAULT_MAX_STEPS = {("codec", "tiny"): 150, ("lm", "tiny"): 300}
FULL_SIZE_MAX_STEPS = 1000
CPU_PRESETS = ("tiny", "small", "demo")  # sized for a CPU: no warning
KEEP_HELP = "How many step-N.ckpt files to keep, the newest (0: all); last.ckpt is kept besides."
MAX_STEPS_HELP = (
    "Training steps (batches; generator steps for the codec). Default: 150 (codec) / 300 (LM) with "
    "--preset tiny, sized for a CPU; 1000 otherwise."
)


def _max_steps(kind: str, preset: str, max_steps: int | None, accelerator: str) -> int:
    """``max_steps`` or the preset's default; warns when a full-size preset would train on a CPU."""
    import torch

    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    if on_cpu and preset not in CPU_PRESETS:
        typer.echo(
            f"warning: the full-size {preset!r} preset on a CPU takes seconds to minutes per step; "
            "use --preset tiny to try things out, or a GPU for a real run",
            err=True,
        )
    if max_steps is not None:
        return max_steps
    return DEFAULT_MAX_STEPS.get((kind, preset), FULL_SIZE_MAX_STEPS)


def _check_data(data: Path, option: str = "--data") -> None:
    if not data.exists():
        raise RuntimeProblem(
            f"{'training' if option == '--data' else 'validation'} data {data} does not exist: pass "
            f"{option} a dataset folder or its .jsonl index (`duplex data synth DIR` writes a small one)"
        )


def _check_strategy(strategy: str) -> None:
    from duplex.codec.training.trainer import STRATEGIES

    if strategy not in STRATEGIES:
        raise usage_error(
            f"unknown strategy {strategy!r}; choose one of: {', '.join(STRATEGIES)}", "--strategy"
        )


def _from_preset(config_class, preset: str, **overrides):  # noqa: ANN001, ANN202
    if preset not in config_class.preset_names():
        known = ", ".join(config_class.preset_names())
        raise usage_error(f"unknown training preset {preset!r}; known presets: {known}", "--preset")
    return config_class.from_preset(preset, **overrides)


def _read_config_file(path: Path) -> dict:
    """The settings of a training config file (JSON, or YAML for ``.yaml`` / ``.yml``): a mapping of
    training config fields, nested as the config is (``codec: {seanet: {n_filters: 16}}``)."""
    if not path.is_file():
        raise RuntimeProblem(f"config file {path} does not exist: pass --config a JSON or YAML file")
    kind = "YAML" if path.suffix.lower() in (".yaml", ".yml") else "JSON"
    text = path.read_text()
    try:
        if kind == "YAML":
            import yaml

            settings = yaml.safe_load(text)
        else:
            import json

            settings = json.loads(text)
    except Exception as error:  # json's JSONDecodeError (a ValueError) or a yaml.YAMLError
        if not (isinstance(error, ValueError) or type(error).__module__.startswith("yaml")):
            raise
        mark, problem = getattr(error, "problem_mark", None), getattr(error, "problem", None)
        if mark is not None and problem:  # yaml's "MarkedYAMLError": the problem and where
            where = f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
        else:
            where = " ".join(str(error).split())
        raise RuntimeProblem(f"config file {path} is not valid {kind}: {where}") from None
    if settings is None:
        settings = {}
    if not isinstance(settings, dict):
        raise RuntimeProblem(
            f"config file {path} must hold a mapping of training config fields, "
            f"not a {type(settings).__name__}"
        )
    return settings


def _config_from(config_class, preset: str, config_file: Path | None, **overrides):  # noqa: ANN001, ANN202
    """The preset, with the config file's settings merged in, then the command-line overrides."""
    if config_file is None:
        return _from_preset(config_class, preset, **overrides)
    _from_preset(config_class, preset)  # an unknown preset is a usage error
    settings = _read_config_file(config_file)
    try:
        return config_class.from_preset_with(preset, settings, **overrides)
    except ValueError as error:  # pydantic's ValidationError: one line naming the fields at fault
        error.add_note(f"from {config_file}")
        raise


def _adversarial_schedule(adversarial: bool | None, start_step: int | None) -> dict:
    """The codec config overrides of ``--adversarial/--no-adversarial`` and ``--adversarial-start-step``."""
    if start_step is not None:
        if adversarial is False:
            raise usage_error(
                "--adversarial-start-step switches the discriminator on at that step: drop --no-adversarial",
                "--adversarial-start-step",
            )
        return {"adversarial": True, "adversarial_start_step": start_step}
    if adversarial is None:
        return {}
    return {"adversarial": True} if adversarial else {"adversarial": False, "adversarial_start_step": 0}


def _check_init(init: str, codec: Path | None, tokenizer: Path | None) -> None:
    if not init.startswith(PRESET_PREFIX):
        return
    from duplex.lm.config import LMConfig

    name = init.removeprefix(PRESET_PREFIX)
    if name not in LMConfig.preset_names():
        known = ", ".join(PRESET_PREFIX + n for n in LMConfig.preset_names())
        raise usage_error(f"unknown LM preset {name!r} in {init!r}; known: {known}", "--init")
    missing = [option for option, value in (("--codec", codec), ("--tokenizer", tokenizer)) if value is None]
    if missing:
        raise usage_error(
            f"{init} starts from random weights, so it needs the codec and the tokenizer to train with: "
            f"pass {' and '.join(missing)} (Mimi weights, a SentencePiece model)",
            "--init",
        )


@app.command("codec")
def codec(
    data: Path = typer.Option(..., help="Folder of audio files or of a moshi-finetune dataset."),
    output: Path = typer.Option(..., help="Run folder: checkpoints, logs, the exported mimi.safetensors."),
    validation_data: Path = typer.Option(
        None,
        help="Validate on this folder (read like --data) instead of on segments of --data: held-out "
        "sentences and voices (`duplex data speech DIR --split heldout`) measure generalisation.",
    ),
    overfit: int = typer.Option(
        None,
        min=1,
        help="Train and validate on the same N segments of --data: whether the model and losses can "
        "reach a quality at all, whatever the amount of speech (not with --validation-data).",
    ),
    max_steps: int = typer.Option(None, min=1, help=MAX_STEPS_HELP),
    preset: str = typer.Option(
        "mimi",
        help="Training preset: mimi (the official size, 79 M parameters), small (about 4 M, trains on a CPU) "
        "or tiny (for tests).",
    ),
    config_file: Path = typer.Option(
        None,
        "--config",
        help="JSON or YAML file of training config fields merged into the preset's, nested as the config "
        "is: model size (codec: {seanet: {n_filters: 16}}), loss weights (mel_weight, waveform_weight, "
        "...), the discriminator (adversarial, adversarial_start_step, adversarial_weight, ...). Options "
        "given on the command line take precedence.",
    ),
    adversarial: bool = typer.Option(
        None,
        "--adversarial/--no-adversarial",
        help="Train with the discriminator (adversarial and feature losses) or without (then a config "
        "file's adversarial_start_step is moot). Default: the config file's, else the preset's (on for "
        "mimi and tiny, off for small).",
    ),
    adversarial_start_step: int = typer.Option(
        None,
        min=0,
        help="Reconstruction only before step N, the discriminator from step N on (implies --adversarial). "
        "Resuming a run trained without one keeps its codec and optimizer state, with a fresh discriminator.",
    ),
    keep_checkpoints: int = typer.Option(3, min=0, help=KEEP_HELP),
    init: str = typer.Option(None, help="Start from these Mimi weights instead of random ones."),
    checkpoint_every: int = typer.Option(50, min=1, help="Write a checkpoint every N steps."),
    batch_size: int = typer.Option(None, min=1, help="Override the preset's batch size."),
    segment_seconds: float = typer.Option(None, help="Override the preset's segment length."),
    strategy: str = typer.Option("auto", help=STRATEGY_HELP),
    devices: str = typer.Option("1", help="Devices (processes) to use, or 'auto'."),
    accelerator: str = typer.Option("auto", help="cpu, gpu or auto."),
    precision: str = typer.Option(None, help="Lightning precision (default: bf16-mixed on GPU, 32 on CPU)."),
    seed: int = typer.Option(None, help="Random seed (default: the config file's, or 0)."),
) -> None:
    """Train a Mimi codec; rerunning the same command resumes from the last checkpoint."""
    _check_data(data)
    if validation_data is not None:
        _check_data(validation_data, "--validation-data")
        if overfit is not None:
            raise usage_error(
                "--overfit validates on the segments it trains on: leave out --validation-data", "--overfit"
            )
    _check_strategy(strategy)
    from duplex.codec.training.config import CodecTrainingConfig
    from duplex.codec.training.run import train_codec

    overrides = {}
    if seed is not None:
        overrides["seed"] = seed
    overrides.update(_adversarial_schedule(adversarial, adversarial_start_step))
    if init:
        overrides["init"] = init
    if batch_size:
        overrides["batch_size"] = batch_size
    if segment_seconds:
        overrides["segment_seconds"] = segment_seconds
    config = _config_from(CodecTrainingConfig, preset, config_file, **overrides)
    train_codec(
        data,
        output,
        config,
        max_steps=_max_steps("codec", preset, max_steps, accelerator),
        keep_checkpoints=keep_checkpoints,
        checkpoint_every=checkpoint_every,
        strategy=strategy,
        devices=_devices(devices),
        accelerator=accelerator,
        precision=_precision(precision),
        validation_data=validation_data,
        overfit_segments=overfit,
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
    max_steps: int = typer.Option(None, min=1, help=MAX_STEPS_HELP),
    preset: str = typer.Option(
        "moshi",
        help="Training preset: moshi (the official recipe), demo (the bundled demo's, on a CPU) or tiny.",
    ),
    keep_checkpoints: int = typer.Option(3, min=0, help=KEEP_HELP),
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
    _check_init(init, codec, tokenizer)
    _check_data(data)
    _check_strategy(strategy)
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
    config = _from_preset(LMTrainingConfig, preset, **overrides)
    train_lm(
        data,
        output,
        init,
        config,
        max_steps=_max_steps("lm", preset, max_steps, accelerator),
        keep_checkpoints=keep_checkpoints,
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
