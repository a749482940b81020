"""The one transformer schema: :class:`TransformerConfig` describes Mimi's two transformers, the
LM's temporal transformer and its depformer (docs/architecture.md §2), and the names its string
fields take (norms, gatings, positional embeddings), defined once for every package."""

from __future__ import annotations

from typing import Literal, get_args

from duplex.codec.presets import PresetConfig
from pydantic import model_validator

NormKind = Literal["layer_norm", "layer_norm_f32", "rms_norm", "rms_norm_f32"]
Gating = Literal[
    "none", "silu", "gelu", "relu", "sigmoid", "tanh", "elu", "leaky_relu", "mish", "softsign", "identity"
]
GATINGS: tuple[str, ...] = get_args(Gating)
PositionalKind = Literal["rope", "rope_concat", "sin", "none"]


class TransformerConfig(PresetConfig):
    d_model: int
    num_heads: int
    num_layers: int
    dim_feedforward: int
    causal: bool = True
    context: int | None = None
    max_period: float = 10_000
    gating: Gating = "none"
    norm: NormKind = "layer_norm"
    positional_embedding: PositionalKind = "rope"
    layer_scale: float | None = None
    weights_per_step: int = 0
    weights_per_step_schedule: list[int] | None = None
    kv_repeat: int = 1
    cross_attention: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> TransformerConfig:
        if self.d_model % self.num_heads != 0:
            raise ValueError(f"d_model {self.d_model} is not divisible by num_heads {self.num_heads}")
        if self.num_heads % self.kv_repeat != 0:
            raise ValueError(f"num_heads {self.num_heads} is not divisible by kv_repeat {self.kv_repeat}")
        if self.cross_attention and self.kv_repeat != 1:
            raise ValueError("cross_attention needs kv_repeat=1 (its keys and values have every head)")
        if self.weights_per_step and self.gating == "none":
            raise ValueError("weights_per_step needs a gated feed-forward (gating != 'none')")
        if (
            self.weights_per_step_schedule is not None
            and len(self.weights_per_step_schedule) != self.weights_per_step
        ):
            raise ValueError(
                f"weights_per_step_schedule has {len(self.weights_per_step_schedule)} entries, "
                f"expected weights_per_step={self.weights_per_step}"
            )
        return self


@TransformerConfig.preset("mimi")
def _mimi() -> dict:
    return dict(d_model=512, num_heads=8, num_layers=8, dim_feedforward=2048, context=250, layer_scale=0.01)
