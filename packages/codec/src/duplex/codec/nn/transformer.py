"""The one pre-norm streaming transformer of duplex: Mimi's two, the LM's temporal transformer
and its depformer are all made of :class:`StreamingTransformerLayer` (docs/architecture.md §1.7, §2).

Each layer computes ``x += ls1 * attn(norm1(x))``, with ``cross_attention`` then ``x += ls_cross *
cross(norm_cross(x), source)`` (docs/architecture.md §5.5), then ``x += ls2 * ff(norm2(x))``; there
is no final norm. Positions continue across streaming calls, per batch item. A streaming call goes
through the selected ``transformer_step`` op where the kernel set has one (the whole step in one C
call on the CPU), else through the layers one by one (:meth:`StreamingTransformer.run_layers`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from duplex.codec.kernels import UsesKernels
from duplex.codec.nn.attention import SharedStep, StreamingMultiheadAttention
from duplex.codec.nn.cross_attention import CrossAttention
from duplex.codec.nn.feedforward import PerStepGating, make_feedforward
from duplex.codec.nn.linear import Linear
from duplex.codec.nn.norms import make_norm
from duplex.codec.nn.positional import sinusoidal_embedding
from duplex.codec.nn.rope import RotaryEmbedding
from duplex.codec.nn.schema import TransformerConfig
from duplex.codec.streaming import StreamingModule, StreamingState, module_device
from torch import nn
from torch.nn import functional as F


class LayerScale(nn.Module):
    """Learnt per-channel scale of a residual branch (key ``scale`` [D])."""

    def __init__(self, dim: int, init: float) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * x


class StreamingTransformerLayer(nn.Module):
    """One layer, for every transformer of duplex: self-attention over the ring KV cache (with
    RoPE, grouped KV heads, per-step weights), optionally cross-attention to a conditioning
    source, then a plain or gated feed-forward, each pre-normed and optionally layer-scaled. Its
    streaming state is its attentions'. The native ``transformer_step`` declines layers it does not
    cover (cross-attention among them): they then run here."""

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
        self.cross_attention: CrossAttention | None = None
        if config.cross_attention:
            self.cross_attention = CrossAttention(d, config.num_heads)
            self.norm_cross = nn.LayerNorm(d, eps=1e-5)  # a LayerNorm whatever ``norm`` is, as trained
        self.layer_scale_1: nn.Module = nn.Identity()
        self.layer_scale_2: nn.Module = nn.Identity()
        self.layer_scale_cross: nn.Module = nn.Identity()
        if config.layer_scale is not None:
            self.layer_scale_1 = LayerScale(d, config.layer_scale)
            self.layer_scale_2 = LayerScale(d, config.layer_scale)
            if config.cross_attention:
                self.layer_scale_cross = LayerScale(d, config.layer_scale)

    def _feedforward(self, x: torch.Tensor, first_step: int) -> torch.Tensor:
        if self.gating is None:
            assert self.linear1 is not None and self.linear2 is not None
            return self.linear2(F.gelu(self.linear1(x)))
        if isinstance(self.gating, PerStepGating):
            return self.gating(x, first_step)
        return self.gating(x)

    def forward(self, x: torch.Tensor, shared: SharedStep | None = None) -> torch.Tensor:
        """``shared``: see :meth:`StreamingMultiheadAttention.forward`."""
        state = self.self_attn._streaming_state
        first_step = state.step if state is not None else 0  # advanced by the attention below
        update = self.self_attn(self.norm1(x), shared)
        x = x.to(update.dtype) + self.layer_scale_1(update)
        if self.cross_attention is not None:
            source = None if shared is None else shared.cross_source
            x = x + self.layer_scale_cross(self.cross_attention(self.norm_cross(x), source))
        update = self._feedforward(self.norm2(x), first_step)
        return x.to(update.dtype) + self.layer_scale_2(update)


@dataclass
class TransformerState(StreamingState):
    offset: torch.Tensor  # [B] long: positions already processed by each item
    packed: dict = field(default_factory=dict)  # what the transformer_step op prepares once per session
    attention_states: list | None = None  # each layer's attention state, once looked up

    def reset(self, slots: torch.Tensor) -> None:
        self.offset.masked_fill_(slots, 0)


class StreamingTransformer(StreamingModule[TransformerState], UsesKernels):
    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        self.rope = None
        if config.positional_embedding in ("rope", "rope_concat"):
            self.rope = RotaryEmbedding(config.max_period, interleave=config.positional_embedding == "rope")
        self.layers = nn.ModuleList(
            [StreamingTransformerLayer(config, self.rope) for _ in range(config.num_layers)]
        )

    def _init_streaming_state(self, batch_size: int) -> TransformerState:
        device = module_device(self)
        offset = torch.zeros(batch_size, dtype=torch.long, device=device)
        return TransformerState(batch_size=batch_size, device=device, offset=offset)

    def forward(self, x: torch.Tensor, cross_source: torch.Tensor | None = None) -> torch.Tensor:
        """``x [B, T, D]`` -> ``[B, T, D]`` in the input dtype. ``cross_source [B, S, D]``: what the
        cross-attention layers attend to (in streaming, :meth:`set_cross_source` instead)."""
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
        step = self.kernels.transformer_step
        if state is not None and step is not None and cross_source is None:
            x = step(self, x, positions)
        else:
            x = self.run_layers(x, positions, cross_source)
        if state is not None:
            state.offset.add_(state.exec_mask, alpha=length)
        return x.to(input_dtype)

    def run_layers(
        self, x: torch.Tensor, positions: torch.Tensor, cross_source: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The layers one after another over ``x [B, T, D]`` at ``positions [B, T]``."""
        shared = SharedStep(positions, cross_source=cross_source)
        for layer in self.layers:
            x = layer(x, shared)
        return x

    def set_cross_source(self, source: torch.Tensor, slots: torch.Tensor | None = None) -> None:
        """In streaming, give the cross-attention layers their source ``[B, S, D]`` for the items
        where ``slots`` (bool ``[B]``, all when None) is true; it stays until replaced."""
        if not self.config.cross_attention:
            raise ValueError("this transformer has no cross-attention layers")
        for layer in self.layers:
            layer.cross_attention.set_source(source, slots)

    def advance_layers(self, length: int) -> None:
        """After a ``transformer_step`` kernel wrote the caches and moved the attention offsets,
        advance what the layers count in Python: the per-step weights' step."""
        if self.layers[0].self_attn.mult == 1:
            return
        state = self.streaming_state
        if state.attention_states is None:
            state.attention_states = [layer.self_attn.streaming_state for layer in self.layers]
        for attn_state in state.attention_states:
            attn_state.step += length
