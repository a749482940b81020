"""LM training configuration, with named presets."""

from __future__ import annotations

from typing import Any

from duplex.codec.presets import PresetConfig
from pydantic import Field


class LMTrainingConfig(PresetConfig):
    segment_frames: int = Field(100, ge=2)  # 8 s at 12.5 Hz
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
    validation_segments: int = Field(16, ge=1)
    seed: int = 0


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
    """The bundled demo's LM run (the ``demo`` LM preset): 10 s segments hold a whole scripted
    exchange; a from-scratch learning rate."""
    return {
        "segment_frames": 125,
        "batch_size": 8,
        "learning_rate": 1e-3,
        "warmup_steps": 100,
        "semantic_weight": 10.0,
        "validation_segments": 16,
    }
