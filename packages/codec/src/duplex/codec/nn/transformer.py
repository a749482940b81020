"""Pre-norm streaming transformer shared by Mimi and the Moshi LM (spec 1.7, 3.3-3.7).

Each layer computes ``x += ls1 * attn(norm1(x))`` then ``x += ls2 * ff(norm2(x))``; there is no
final norm. Positions continue across streaming calls, per batch item.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from duplex.codec.kernels import dispatch
from duplex.codec.nn import reference_step
from duplex.codec.nn.attention import SharedStep, StreamingMultiheadAttention
from duplex.codec.nn.eager_step import covers, eager_step
from duplex.codec.nn.feedforward import GATINGS, PerStepGating, make_feedforward
from duplex.codec.nn.linear import Linear
from duplex.codec.nn.native_step import NativeStep
from duplex.codec.nn.norms import NormKind, make_norm
from duplex.codec.nn.positional import sinusoidal_embedding
from duplex.codec.nn.rope import RotaryEmbedding
from duplex.codec.presets import PresetConfig
from duplex.codec.streaming import StreamingModule, StreamingState, module_device
from pydantic import field_validator, model_validator
from torch import nn
from torch.nn import functional as F


class TransformerConfig(PresetConfig):
    d_model: int
    num_heads: int
    num_layers: int
    dim_feedforward: int
    causal: bool = True
    context: int | None = None
    max_period: float = 10_000
    gating: str = "none"
    norm: NormKind = "layer_norm"
    positional_embedding: Literal["rope", "sin", "none"] = "rope"
    layer_scale: float | None = None
    weights_per_step: int = 0
    weights_per_step_schedule: list[int] | None = None
    kv_repeat: int = 1

    @field_validator("gating")
    @classmethod
    def _known_gating(cls, value: str) -> str:
        if value not in GATINGS:
            raise ValueError(f"unknown gating {value!r}; expected one of {list(GATINGS)}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> TransformerConfig:
        if self.d_model % self.num_heads != 0:
            raise ValueError(f"d_model {self.d_model} is not divisible by num_heads {self.num_heads}")
        if self.num_heads % self.kv_repeat != 0:
            raise ValueError(f"num_heads {self.num_heads} is not divisible by kv_repeat {self.kv_repeat}")
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


@TransformerConfig.preset("moshi_7b")
def _moshi_7b() -> dict:
    return dict(
        d_model=4096, num_heads=32, num_layers=32, dim_feedforward=16896, context=3000,
        gating="silu", norm="rms_norm_f32",
    )  # fmt: skip


@TransformerConfig.preset("moshi_7b_depformer")
def _moshi_7b_depformer() -> dict:
    return dict(
        d_model=1024, num_heads=16, num_layers=6, dim_feedforward=4224, gating="silu",
        norm="rms_norm_f32", positional_embedding="none", weights_per_step=8,
    )  # fmt: skip


class LayerScale(nn.Module):
    """Learnt per-channel scale of a residual branch (key ``scale`` [D])."""

    def __init__(self, dim: int, init: float) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * x


@dataclass
class LayerState(StreamingState):
    step: int = 0  # steps processed by the batch: selects the per-step feed-forward weights

    def reset(self, slots: torch.Tensor) -> None:
        self.step = 0


class StreamingTransformerLayer(StreamingModule[LayerState]):
    def __init__(self, config: TransformerConfig, rope: RotaryEmbedding | None) -> None:
        super().__init__()
        d = config.d_model
        self.self_attn = StreamingMultiheadAttention(
            d,
            config.num_heads,
            causal=config.causal,
            context=config.context,
            rope=rope,
            weights_per_step=config.weights_per_step,
            weights_per_step_schedule=config.weights_per_step_schedule,
            kv_repeat=config.kv_repeat,
        )
        self.norm1 = make_norm(config.norm, d)
        self.norm2 = make_norm(config.norm, d)
        self.linear1: Linear | None = None
        self.linear2: Linear | None = None
        self.gating: nn.Module | None = None
        for name, module in make_feedforward(
            config.gating,
            d,
            config.dim_feedforward,
            config.weights_per_step,
            config.weights_per_step_schedule,
        ).items():
            setattr(self, name, module)
        self.layer_scale_1: nn.Module = nn.Identity()
        self.layer_scale_2: nn.Module = nn.Identity()
        if config.layer_scale is not None:
            self.layer_scale_1 = LayerScale(d, config.layer_scale)
            self.layer_scale_2 = LayerScale(d, config.layer_scale)

    def _init_streaming_state(self, batch_size: int) -> LayerState:
        return LayerState(batch_size=batch_size, device=module_device(self))

    def _feedforward(self, x: torch.Tensor, first_step: int) -> torch.Tensor:
        if self.gating is None:
            assert self.linear1 is not None and self.linear2 is not None
            return self.linear2(F.gelu(self.linear1(x)))
        if isinstance(self.gating, PerStepGating):
            return self.gating(x, first_step)
        return self.gating(x)

    def forward(self, x: torch.Tensor, shared: SharedStep | None = None) -> torch.Tensor:
        """``shared``: see :meth:`StreamingMultiheadAttention.forward`."""
        state = self._streaming_state
        first_step = state.step if state is not None else 0
        update = self.self_attn(self.norm1(x), shared)
        x = x.to(update.dtype) + self.layer_scale_1(update)
        update = self._feedforward(self.norm2(x), first_step)
        x = x.to(update.dtype) + self.layer_scale_2(update)
        if state is not None:
            state.step += x.shape[1]
        return x


@dataclass
class TransformerState(StreamingState):
    offset: torch.Tensor  # [B] long: positions already processed by each item
    native: NativeStep | None = None  # the layers packed for the C step (see native_step)
    native_packed: bool = False  # whether packing was tried (native None: not supported)
    eager_covered: bool | None = None  # whether eager_step covers the layers (None: not checked yet)
    layer_states: list | None = None  # each layer's (layer state, attention state), once looked up

    def reset(self, slots: torch.Tensor) -> None:
        self.offset[slots] = 0


class StreamingTransformer(StreamingModule[TransformerState]):
    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        self.rope = RotaryEmbedding(config.max_period) if config.positional_embedding == "rope" else None
        self.layers = nn.ModuleList(
            [StreamingTransformerLayer(config, self.rope) for _ in range(config.num_layers)]
        )

    def _init_streaming_state(self, batch_size: int) -> TransformerState:
        device = module_device(self)
        offset = torch.zeros(batch_size, dtype=torch.long, device=device)
        return TransformerState(batch_size=batch_size, device=device, offset=offset)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, T, D]`` -> ``[B, T, D]`` in the input dtype."""
        if x.dim() != 3 or x.shape[-1] != self.config.d_model:
            raise ValueError(f"expected input [B, T, {self.config.d_model}], got shape {list(x.shape)}")
        batch, length, dim = x.shape
        input_dtype = x.dtype
        state = self._streaming_state
        positions = torch.arange(length, device=x.device).expand(batch, length)
        if state is not None:
            positions = positions + state.offset[:, None]
        if self.config.positional_embedding == "sin":
            x = x + sinusoidal_embedding(positions, dim, self.config.max_period, dtype=x.dtype)
        native = self._native_step(x, state)
        if native is not None:
            x = self._run_native(native, x, positions)
        elif self._eager_step_applies(x, state):
            if reference_step.applies(self, state.native, x):
                x = reference_step.reference_step(self, state.native, x, positions)
            else:
                x = eager_step(self, x, positions)
        else:
            shared = SharedStep(positions)
            for layer in self.layers:
                x = layer(x, shared)
        if state is not None:
            state.offset.add_(state.exec_mask, alpha=length)
        return x.to(input_dtype)

    def _native_step(self, x: torch.Tensor, state: TransformerState | None) -> NativeStep | None:
        """The C step when this call can take it (streaming, CPU float32 inference, few rows)."""
        if state is None:
            return None
        if not state.native_packed or (state.native is not None and not state.native.valid()):
            per_step = self.layers[0].self_attn.mult > 1  # the weights change along the steps
            state.native, state.native_packed = None if per_step else NativeStep.pack(self), True
        native = state.native
        if native is None or dispatch.blas_order_wanted(x.device, needs_grad=False):
            return None  # inside reference_matmuls: the reference step or the eager step
        if x.shape[1] > self.layers[0].self_attn.streaming_state.cache.capacity:
            return None
        return native if native.runs(x, state.all_active()) else None

    def _eager_step_applies(self, x: torch.Tensor, state: TransformerState | None) -> bool:
        """Whether this call can take :mod:`~duplex.codec.nn.eager_step` (the module path's ops, CPU)."""
        if state is None or x.device.type != "cpu" or not state.all_active():
            return False
        if state.eager_covered is None:
            state.eager_covered = covers(self)
        return state.eager_covered

    def _run_native(self, native: NativeStep, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        length = x.shape[1]
        rope_cos = rope_sin = None
        if self.rope is not None:
            head_dim = self.layers[0].self_attn.head_dim
            angles = positions.to(torch.float32)[..., None] * self.rope.frequencies(head_dim, x.device)
            rope_cos, rope_sin = torch.cos(angles), torch.sin(angles)
        cache = self.layers[0].self_attn.streaming_state.cache
        used = min(cache.capacity, cache.used + length)
        x = native(x, positions, rope_cos, rope_sin, used)
        self._advance_layers(length, used)
        return x

    def _advance_layers(self, length: int, used: int) -> None:
        """What the module path advances in each layer, after a C step (which moved the offsets)."""
        state = self._streaming_state
        if state.layer_states is None:
            state.layer_states = [
                (layer.streaming_state, layer.self_attn.streaming_state) for layer in self.layers
            ]
        for layer_state, attn_state in state.layer_states:
            layer_state.step += length
            attn_state.step += length
            attn_state.cache.used = used
