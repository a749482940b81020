"""Codec training configuration, with named presets."""

from __future__ import annotations

from typing import Any

from duplex.codec.config import MimiConfig
from duplex.codec.presets import PresetConfig
from pydantic import Field, model_validator


class CodecTrainingConfig(PresetConfig):
    """Everything a codec training run needs besides its data and output folder."""

    codec: MimiConfig = Field(default_factory=MimiConfig)
    init: str | None = None  # start from these weights (a Mimi checkpoint) instead of random ones
    segment_seconds: float = Field(0.96, gt=0)
    batch_size: int = Field(8, ge=1)
    learning_rate: float = Field(3e-4, gt=0)
    discriminator_learning_rate: float = Field(3e-4, gt=0)
    betas: tuple[float, float] = (0.5, 0.9)
    # Both learning rates rise linearly over warmup_steps, then decay along a half cosine to
    # final_learning_rate_ratio of their value at the run's last step (1: constant).
    warmup_steps: int = Field(0, ge=0)
    final_learning_rate_ratio: float = Field(1.0, gt=0, le=1)
    gradient_clip: float | None = 1.0
    # Loss weights. The official Mimi used adversarial and feature losses only; a reconstruction
    # term (mel, and optionally waveform L1) makes short runs on small data converge.
    mel_weight: float = Field(15.0, ge=0)
    mel_linear_weight: float = Field(1.0, ge=0)  # inside the mel loss: L2 of mel magnitudes (log-mel L1: 1)
    waveform_weight: float = Field(0.0, ge=0)
    adversarial: bool = True
    # The schedule: reconstruction only (no discriminator step, no adversarial or feature loss) before
    # this step, adversarial from it on. The discriminator exists from the first step whenever
    # ``adversarial`` is on, so that checkpoints on both sides of the switch hold it.
    adversarial_start_step: int = Field(0, ge=0)
    adversarial_weight: float = Field(1.0, ge=0)
    feature_weight: float = Field(2.0, ge=0)
    commitment_weight: float = Field(1.0, ge=0)
    distillation_weight: float = Field(1.0, ge=0)
    teacher: str = "mel-projection"
    teacher_dim: int = Field(64, ge=1)
    quantizer_dropout: bool = True
    # Fresh weights only: the encoder's convolutions scaled to unit output variance before training
    # (without it, the first ~500 steps of the small preset map every frame to one code).
    unit_variance_init: bool = True
    # Share of training items decoded from their quantized latent; the others from the unquantized
    # one (Mimi was trained at 0.5). The codebooks learn from every item either way.
    quantization_rate: float = Field(1.0, gt=0.0, le=1.0)
    codebook_decay: float | None = Field(None, ge=0.0, le=1.0)  # None: the codec config's (0.99)
    check_unused_every: int = Field(5, ge=1)  # steps between dead-code replacements
    discriminator_channels: int = Field(32, ge=1)
    discriminator_n_ffts: list[int] = Field(default_factory=lambda: [2048, 1024, 512, 256, 128], min_length=1)
    validation_segments: int = Field(16, ge=1)
    seed: int = 0

    @model_validator(mode="after")
    def _schedule_needs_the_discriminator(self) -> CodecTrainingConfig:
        if self.adversarial_start_step and not self.adversarial:
            raise ValueError(
                f"adversarial_start_step is {self.adversarial_start_step} but adversarial is false: set "
                "adversarial to true to switch the discriminator on at that step, or leave the step at 0"
            )
        return self

    @property
    def segment_samples(self) -> int:
        frame = self.codec.frame_size
        return max(1, round(self.segment_seconds * self.codec.sample_rate / frame)) * frame


@CodecTrainingConfig.preset("mimi")
def _mimi() -> dict[str, Any]:
    return {}


@CodecTrainingConfig.preset("tiny")
def _tiny() -> dict[str, Any]:
    """The tiny Mimi, a small discriminator: trains on a CPU in minutes."""
    return {
        "codec": MimiConfig.from_preset("tiny"),
        "batch_size": 4,
        "learning_rate": 3e-3,
        "discriminator_learning_rate": 1e-3,
        "waveform_weight": 10.0,
        "mel_weight": 1.0,
        "adversarial_weight": 0.1,
        "feature_weight": 0.2,
        "teacher_dim": 16,
        "codebook_decay": 0.9,  # short runs: codebooks must follow a fast-moving encoder
        "check_unused_every": 2,
        "discriminator_channels": 4,
        "discriminator_n_ffts": [512, 256, 128],
        "validation_segments": 8,
    }


@CodecTrainingConfig.preset("small")
def _small() -> dict[str, Any]:
    """The small Mimi (about 4 M parameters): reconstruction (mel, waveform L1) and distillation
    losses, no discriminator; trains on a CPU at about half a second per step."""
    return {
        "codec": MimiConfig.from_preset("small"),
        "batch_size": 8,
        "learning_rate": 1e-3,
        "discriminator_learning_rate": 1e-3,
        "betas": (0.8, 0.99),
        "warmup_steps": 200,
        "final_learning_rate_ratio": 0.05,
        "waveform_weight": 10.0,
        "mel_weight": 1.0,
        "adversarial": False,
        "adversarial_weight": 0.1,
        "feature_weight": 0.2,
        "teacher_dim": 64,
        "discriminator_channels": 16,
        "discriminator_n_ffts": [1024, 512, 256, 128],
        "validation_segments": 16,
    }
