"""MimiConfig and its parts, in the same nested form as the reference's Mimi config dict.

A checkpoint's ``mimi_config_name`` JSON (``{"sample_rate", "channels", "frame_rate", "seanet",
"quantizer", "transformer"}``) validates as-is into :class:`MimiConfig`, and
:meth:`MimiConfig.to_dict` gives that form back. ``MimiConfig()`` is the official Mimi
(docs/architecture.md §1.1); ``MimiConfig.from_preset("tiny")`` is a small one for tests.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from duplex.codec.nn.schema import TransformerConfig
from duplex.codec.presets import PresetConfig
from pydantic import Field, field_validator, model_validator
from torch import nn


class SeanetConfig(PresetConfig):
    """The SEANet encoder/decoder pair; ``ratios`` are in decoder order (the encoder reverses them)."""

    channels: int = Field(1, ge=1)
    dimension: int = Field(512, ge=1)
    causal: bool = True
    n_filters: int = Field(64, ge=1)
    n_residual_layers: int = Field(1, ge=0)
    activation: str = "ELU"
    activation_params: dict[str, Any] = Field(default_factory=lambda: {"alpha": 1.0})
    compress: int = Field(2, ge=1)
    dilation_base: int = Field(2, ge=1)
    disable_norm_outer_blocks: int = Field(0, ge=0)
    kernel_size: int = Field(7, ge=1)
    residual_kernel_size: int = Field(3, ge=1)
    last_kernel_size: int = Field(3, ge=1)
    # The released weights have weight norm folded into plain conv weights ("none").
    norm: Literal["none"] = "none"
    pad_mode: Literal["constant", "replicate"] = "constant"
    ratios: list[int] = Field(default_factory=lambda: [8, 6, 5, 4], min_length=1)
    true_skip: bool = True

    @field_validator("causal")
    @classmethod
    def _only_causal(cls, value: bool) -> bool:
        if not value:
            raise ValueError("only the causal SEANet exists in duplex (Mimi is causal); set causal=true")
        return value

    @field_validator("activation")
    @classmethod
    def _known_activation(cls, value: str) -> str:
        if not isinstance(getattr(nn, value, None), type):
            raise ValueError(f"activation {value!r} is not a torch.nn activation class (e.g. 'ELU')")
        return value

    @field_validator("ratios")
    @classmethod
    def _positive_ratios(cls, value: list[int]) -> list[int]:
        if any(r < 1 for r in value):
            raise ValueError(f"ratios must be positive integers, got {value}")
        return value

    @property
    def hop_length(self) -> int:
        return math.prod(self.ratios)


class QuantizerConfig(PresetConfig):
    """Split residual VQ: ``n_q_semantic`` codebooks, then ``n_q - n_q_semantic`` acoustic ones."""

    dimension: int = Field(256, ge=1)
    n_q: int = Field(32, ge=2)
    bins: int = Field(2048, ge=1)
    input_dimension: int = Field(512, ge=1)
    output_dimension: int = Field(512, ge=1)
    n_q_semantic: int = Field(1, ge=1)
    decay: float = Field(0.99, ge=0.0, le=1.0)
    threshold_usage_ratio: float = 0.1
    replaced_usage_ratio: float = 1.0
    q_dropout: bool = False
    no_quantization_rate: float = 0.0

    @model_validator(mode="after")
    def _semantic_fewer_than_total(self) -> QuantizerConfig:
        if self.n_q_semantic >= self.n_q:
            raise ValueError(f"n_q ({self.n_q}) must exceed n_q_semantic ({self.n_q_semantic})")
        return self


class MimiTransformerConfig(TransformerConfig):
    """The encoder/decoder transformer (:class:`~duplex.codec.nn.schema.TransformerConfig`, with
    Mimi's defaults) and the projections around it (``ProjectedTransformer``)."""

    d_model: int = Field(512, ge=1)
    num_heads: int = Field(8, ge=1)
    num_layers: int = Field(8, ge=0)
    dim_feedforward: int = Field(2048, ge=1)
    layer_scale: float | None = 0.01
    context: int | None = 250
    conv_layout: bool = True
    input_dimension: int = Field(512, ge=1)
    output_dimensions: list[int] = Field(default_factory=lambda: [512], min_length=1, max_length=1)

    def transformer_config(self) -> TransformerConfig:
        """The inner streaming transformer's config (the projections left out)."""
        return TransformerConfig(**self.model_dump(include=set(TransformerConfig.model_fields)))

    def to_dict(self) -> dict[str, Any]:
        """The reference's transformer dict: the fields it has, plus any other that was set."""
        data = self.model_dump(mode="json")
        for name in (
            set(TransformerConfig.model_fields) - REFERENCE_TRANSFORMER_FIELDS - self.model_fields_set
        ):
            data.pop(name)
        return data


# The keys of the reference's Mimi transformer dict (the others are duplex's, left out when unset).
REFERENCE_TRANSFORMER_FIELDS = {
    "d_model", "num_heads", "num_layers", "causal", "layer_scale", "context", "conv_layout", "max_period",
    "gating", "norm", "positional_embedding", "dim_feedforward", "input_dimension", "output_dimensions",
}  # fmt: skip


class MimiConfig(PresetConfig):
    """A whole Mimi. The defaults are the official model (79.3 M parameters,
    docs/architecture.md §1.1)."""

    sample_rate: int = Field(24000, ge=1)
    channels: int = Field(1, ge=1, le=1)
    frame_rate: float = Field(12.5, gt=0)
    seanet: SeanetConfig = Field(default_factory=SeanetConfig)
    quantizer: QuantizerConfig = Field(default_factory=QuantizerConfig)
    transformer: MimiTransformerConfig = Field(default_factory=MimiTransformerConfig)

    @model_validator(mode="after")
    def _consistent(self) -> MimiConfig:
        hop = self.seanet.hop_length
        if self.sample_rate % hop:
            raise ValueError(f"sample_rate {self.sample_rate} is not a multiple of the SEANet hop {hop}")
        stride = self.encoder_frame_rate / self.frame_rate
        if stride != int(stride) or stride < 1:
            raise ValueError(
                f"encoder frame rate {self.encoder_frame_rate} Hz must be an integer multiple of "
                f"frame_rate {self.frame_rate} Hz"
            )
        frame_size = self.sample_rate / self.frame_rate
        if frame_size != int(frame_size):
            raise ValueError(f"sample_rate / frame_rate = {frame_size} must be an integer")
        dim = self.seanet.dimension
        if self.seanet.channels != self.channels:
            raise ValueError(
                f"seanet.channels ({self.seanet.channels}) must equal channels ({self.channels})"
            )
        t = self.transformer
        if t.input_dimension != dim or t.output_dimensions[0] != dim:
            raise ValueError(
                f"transformer input_dimension / output_dimensions ({t.input_dimension}, "
                f"{t.output_dimensions}) "
                f"must equal seanet.dimension ({dim})"
            )
        q = self.quantizer
        if q.input_dimension != dim or q.output_dimension != dim:
            raise ValueError(
                f"quantizer input/output dimensions ({q.input_dimension}, {q.output_dimension}) "
                f"must equal seanet.dimension ({dim})"
            )
        return self

    @property
    def encoder_frame_rate(self) -> float:
        return self.sample_rate / self.seanet.hop_length

    @property
    def resample_stride(self) -> int:
        return int(self.encoder_frame_rate / self.frame_rate)

    @property
    def frame_size(self) -> int:
        return int(self.sample_rate / self.frame_rate)

    def to_dict(self) -> dict[str, Any]:
        """The reference's nested config dict (JSON-serialisable)."""
        return {**self.model_dump(mode="json"), "transformer": self.transformer.to_dict()}


@MimiConfig.preset("mimi")
def _official() -> dict[str, Any]:
    return {}


@MimiConfig.preset("official")
def _official_alias() -> dict[str, Any]:
    return {}


@MimiConfig.preset("tiny")
def _tiny() -> dict[str, Any]:
    """Same frame grid as the official Mimi (24 kHz, 1920-sample frames), a few thousand times smaller."""
    dim = 16
    return {
        "seanet": {"dimension": dim, "n_filters": 2},
        "quantizer": {"dimension": 8, "n_q": 8, "bins": 32, "input_dimension": dim, "output_dimension": dim},
        "transformer": {
            "d_model": dim,
            "num_heads": 2,
            "num_layers": 2,
            "dim_feedforward": 32,
            "context": 250,
            "input_dimension": dim,
            "output_dimensions": [dim],
        },
    }


@MimiConfig.preset("small")
def _small() -> dict[str, Any]:
    """The official frame grid and architecture at about 4 M parameters (16 codebooks x 1024 bins),
    sized to train on a CPU in hours."""
    dim = 256
    return {
        "seanet": {"dimension": dim, "n_filters": 16},
        "quantizer": {
            "dimension": 64,
            "n_q": 16,
            "bins": 1024,
            "input_dimension": dim,
            "output_dimension": dim,
        },
        "transformer": {
            "d_model": dim,
            "num_heads": 4,
            "num_layers": 2,
            "dim_feedforward": 256,
            "context": 250,
            "input_dimension": dim,
            "output_dimensions": [dim],
        },
    }
