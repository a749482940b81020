"""LM training configuration, with named presets."""

from __future__ import annotations

from typing import Any

from duplex.codec.presets import PresetConfig
from pydantic import Field, model_validator


class LMTrainingConfig(PresetConfig):
    segment_frames: int = Field(100, ge=2)  # 8 s at 12.5 Hz
    # Training windows start every hop (None: every segment_frames); pack lays the dialogues end
    # to end first, so no window is filled up (see duplex.lm.data.MultistreamDataset).
    segment_hop_frames: int | None = Field(None, ge=1)
    pack_dialogues: bool = False
    batch_size: int = Field(4, ge=1)
    learning_rate: float = Field(2e-5, gt=0)
    lora_learning_rate: float = Field(2e-4, gt=0)
    weight_decay: float = Field(0.1, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = Field(10, ge=0)
    gradient_clip: float | None = 1.0
    lora_rank: int = Field(128, ge=1)
    lora_scaling: float = 2.0
    semantic_weight: float = Field(100.0, ge=0)
    text_padding_weight: float = Field(0.5, ge=0)
    text_weight: float = Field(1.0, ge=0)
    # Per training window: each acoustic user codebook dropped (zero token) with this probability,
    # and each user code replaced by a random one with that (duplex.lm.training.augment).
    user_codebook_dropout: float = Field(0.0, ge=0, le=1)
    user_code_noise: float = Field(0.0, ge=0, le=1)
    # Weight of the training-only transcript of the user (duplex.lm.training.user_text): the
    # temporal state predicts the user's words this many frames after they start; 0 turns it off.
    user_text_weight: float = Field(0.0, ge=0)
    user_text_delay_frames: int = Field(6, ge=0)
    validation_segments: int = Field(16, ge=1)
    seed: int = 0

    @model_validator(mode="after")
    def _hop_fits_the_segment(self) -> LMTrainingConfig:
        if self.segment_hop_frames is not None and self.segment_hop_frames > self.segment_frames:
            raise ValueError(
                f"segment_hop_frames ({self.segment_hop_frames}) must not exceed segment_frames "
                f"({self.segment_frames}): windows would skip frames"
            )
        return self


@LMTrainingConfig.preset("moshi")
def _moshi() -> dict[str, Any]:
    return {}


@LMTrainingConfig.preset("tiny")
def _tiny() -> dict[str, Any]:
    """Short segments, a high learning rate: learns synthetic dialogues on a CPU in minutes."""
    return {
        "segment_frames": 24,
        "batch_size": 8,
        "learning_rate": 3e-3,
        "lora_learning_rate": 1e-2,
        "warmup_steps": 5,
        "lora_rank": 4,
        "semantic_weight": 10.0,
        "validation_segments": 8,
    }


@LMTrainingConfig.preset("demo")
def _demo() -> dict[str, Any]:
    """The bundled demo's LM run (the ``demo`` LM preset): the scripted conversations packed end
    to end, 10 s windows every 4.8 s (so each exchange of up to 5 s is whole in one); a from-scratch
    learning rate."""
    return {
        "segment_frames": 125,
        "segment_hop_frames": 60,
        "pack_dialogues": True,
        "batch_size": 8,
        "learning_rate": 1e-3,
        "warmup_steps": 100,
        "semantic_weight": 10.0,
        "validation_segments": 16,
        "user_text_weight": 1.0,
    }
