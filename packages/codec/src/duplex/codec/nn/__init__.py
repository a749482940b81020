"""Shared streaming building blocks of duplex: convolutions, attention, transformer (docs/nn-api.md)."""

from duplex.codec.nn.attention import AttentionState, SharedStep, StreamingMultiheadAttention
from duplex.codec.nn.conv import StreamingConv1d, StreamingConvTranspose1d
from duplex.codec.nn.cross_attention import CrossAttention, CrossAttentionState
from duplex.codec.nn.elu import ELU
from duplex.codec.nn.feedforward import ActivationGating, PerStepGating, gated_hidden_size, make_feedforward
from duplex.codec.nn.kv_cache import RingKVCache
from duplex.codec.nn.linear import Linear
from duplex.codec.nn.norms import LayerNormF32, RMSNorm, make_norm
from duplex.codec.nn.per_step import apply_per_step, weight_set_count
from duplex.codec.nn.positional import sinusoidal_embedding
from duplex.codec.nn.rope import RotaryEmbedding
from duplex.codec.nn.transformer import (
    LayerScale,
    StreamingTransformer,
    StreamingTransformerLayer,
    TransformerConfig,
)

__all__ = [
    "ActivationGating",
    "AttentionState",
    "CrossAttention",
    "CrossAttentionState",
    "ELU",
    "LayerNormF32",
    "LayerScale",
    "Linear",
    "PerStepGating",
    "RMSNorm",
    "RingKVCache",
    "RotaryEmbedding",
    "SharedStep",
    "StreamingConv1d",
    "StreamingConvTranspose1d",
    "StreamingMultiheadAttention",
    "StreamingTransformer",
    "StreamingTransformerLayer",
    "TransformerConfig",
    "apply_per_step",
    "gated_hidden_size",
    "make_feedforward",
    "make_norm",
    "sinusoidal_embedding",
    "weight_set_count",
]
