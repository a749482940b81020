"""Cross-attention to a conditioning source (docs/architecture.md §5.5): the TTS voice.

Queries come from the stream, keys and values from a fixed source sequence (no positions
rotated, no causal mask: every query sees the whole source). The parameters keep the official
fused layout: ``in_proj_weight [3 * D, D]`` (rows ``[Q; K; V]``) and ``out_proj.weight [D, D]``.

In streaming, the source's keys and values are computed once and kept in the state, per batch
item: :meth:`CrossAttention.set_source` fills the rows of chosen items (a serving slot swaps in
its own voice), and every step then reads them. Outside streaming, the source is given with each
call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from duplex.codec.kernels import UsesKernels
from duplex.codec.nn.attention import accept_reference_names
from duplex.codec.nn.linear import Linear
from duplex.codec.nn.low_precision import weight_dtype
from duplex.codec.streaming import StreamingModule, StreamingState, module_device
from torch import nn


@dataclass
class CrossAttentionState(StreamingState):
    """``keys``/``values [B, H, S, Dh]``: the projected source of each item, None until set. A
    reset keeps them: the source belongs to the slot, not to its position in time."""

    keys: torch.Tensor | None = None
    values: torch.Tensor | None = None

    def reset(self, slots: torch.Tensor) -> None:
        pass


class CrossAttention(StreamingModule[CrossAttentionState], UsesKernels):
    mult = 1  # one weight set (the reference's per-set names load through the same hook)
    low_precision_weights = ("in_proj_weight",)
    activation_dtype: torch.dtype | None = None

    def __init__(self, embed_dim: int, num_heads: int) -> None:
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        bound = 1 / math.sqrt(embed_dim)
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim).uniform_(-bound, bound))
        self.register_buffer("in_proj_weight_scale", None)
        self.out_proj = Linear(embed_dim, embed_dim, bias=False)
        self.register_load_state_dict_pre_hook(accept_reference_names)

    def _init_streaming_state(self, batch_size: int) -> CrossAttentionState:
        return CrossAttentionState(batch_size=batch_size, device=module_device(self))

    def keys_values(self, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``source [B, S, D]`` -> keys and values ``[B, H, S, Dh]``."""
        projected = self.kernels.linear(source, *self.in_proj_rows(self.embed_dim, None))
        keys, values = projected.unflatten(-1, (2, self.num_heads, self.head_dim)).permute(2, 0, 3, 1, 4)
        return keys, values

    @torch.no_grad()
    def set_source(self, source: torch.Tensor, slots: torch.Tensor | None = None) -> None:
        """In streaming, project ``source [B, S, D]`` for the items where ``slots`` (bool ``[B]``,
        all when None) is true. Every item's source has the same length ``S``."""
        state = self.streaming_state
        if source.dim() != 3 or source.shape[0] != state.batch_size or source.shape[2] != self.embed_dim:
            raise ValueError(
                f"cross-attention source must have shape [B={state.batch_size}, S, {self.embed_dim}], "
                f"got {list(source.shape)}"
            )
        keys, values = self.keys_values(source.to(weight_dtype(self, "in_proj_weight")))
        if state.keys is None or state.keys.shape != keys.shape:
            if state.keys is not None and slots is not None and not bool(slots.all()):
                raise ValueError(
                    f"cross-attention source of length {source.shape[1]} where the stream holds "
                    f"{state.keys.shape[2]}: every slot's source must have the same length"
                )
            state.keys, state.values = keys.clone(), values.clone()
            return
        if slots is None:
            state.keys.copy_(keys)
            state.values.copy_(values)
        else:
            chosen = slots.to(keys.device)[:, None, None, None]
            state.keys.copy_(torch.where(chosen, keys, state.keys))
            state.values.copy_(torch.where(chosen, values, state.values))

    def forward(self, x: torch.Tensor, source: torch.Tensor | None = None) -> torch.Tensor:
        """``x [B, T, D]`` attends to ``source [B, S, D]`` (or, in streaming, the source set before)."""
        state = self._streaming_state
        if source is not None:
            keys, values = self.keys_values(source)
        elif state is not None and state.keys is not None:
            keys, values = state.keys, state.values
        else:
            raise RuntimeError(
                "cross-attention has no source: pass one, or call set_source after entering streaming"
            )
        queries = self.kernels.linear(x, *self.in_proj_rows(0, self.embed_dim))
        queries = queries.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)
        out = self.kernels.attention(
            queries, keys.to(queries.dtype), values.to(queries.dtype), None, None, None
        )
        return self.out_proj(out.transpose(1, 2).flatten(2))

    def in_proj_rows(self, start: int, end: int | None) -> tuple[torch.Tensor, None, torch.Tensor | None]:
        """Rows ``start:end`` of the fused projection: the ``linear`` op's weight, bias and scale."""
        scale = self.in_proj_weight_scale
        return self.in_proj_weight[start:end], None, None if scale is None else scale[start:end]

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}"
