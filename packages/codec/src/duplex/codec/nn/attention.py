"""Streaming multi-head self-attention (docs/architecture.md §2.2, §2.3).

Parameters are stored fused exactly as in the official checkpoints: ``in_proj_weight``
``[mult * (D + 2 * D_kv), D]`` (rows ``[Q; K; V]``, heads contiguous within each block, weight
sets stacked along dim 0) and ``out_proj.weight`` ``[mult * D, D]``. The reference's in-memory
names (``in_projs.{i}.weight``, ``out_projs.{i}.weight``, ``in_proj.weight``) are accepted by
``load_state_dict`` too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from duplex.codec.kernels import UsesKernels
from duplex.codec.nn.kv_cache import RingKVCache
from duplex.codec.nn.linear import Linear
from duplex.codec.nn.low_precision import weight_dtype
from duplex.codec.nn.per_step import apply_per_step, weight_set_count
from duplex.codec.nn.rope import RotaryEmbedding
from duplex.codec.streaming import StreamingModule, StreamingState, module_device
from torch import nn


@dataclass
class AttentionState(StreamingState):
    offset: torch.Tensor  # [B] long: positions already processed by each item
    cache: RingKVCache
    # steps processed by the whole batch, counted only with per-step weights (which it selects;
    # the depformer restarts every frame), so a steady-state step changes no Python value
    step: int = 0

    def reset(self, slots: torch.Tensor) -> None:
        self.offset.masked_fill_(slots, 0)
        self.cache.reset(slots)
        # per-step weights assume the batch moves in lockstep (the depformer restarts every frame)
        self.step = 0


@dataclass
class SharedStep:
    """What all the layers of one transformer call share, computed once instead of per layer.

    Every attention of a transformer sees the same positions and, since all their caches are
    written alike, the same mask: the attention op of the first layer may leave it in ``scratch``
    for the others.
    """

    positions: torch.Tensor  # [B, T] absolute positions of this call
    rotation: torch.Tensor | None = None  # RoPE rotation at those positions
    cross_source: torch.Tensor | None = None  # [B, S, D] what cross-attention layers attend to
    scratch: dict = field(default_factory=dict)  # what the attention op shares across layers


class StreamingMultiheadAttention(StreamingModule[AttentionState], UsesKernels):
    """Causal (optionally windowed) self-attention with RoPE, GQA and per-step weights."""

    low_precision_weights = ("in_proj_weight",)
    activation_dtype: torch.dtype | None = None

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        causal: bool = True,
        context: int | None = None,
        rope: RotaryEmbedding | None = None,
        weights_per_step: int = 0,
        weights_per_step_schedule: Sequence[int] | None = None,
        kv_repeat: int = 1,
    ) -> None:
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        if kv_repeat < 1 or num_heads % kv_repeat != 0:
            raise ValueError(f"num_heads {num_heads} is not divisible by kv_repeat {kv_repeat}")
        if context is not None and context < 1:
            raise ValueError(f"context must be None or >= 1, got {context}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.kv_repeat = kv_repeat
        self.num_kv_heads = num_heads // kv_repeat
        self.causal = causal
        self.context = context
        self.rope = rope
        self.weights_per_step = weights_per_step
        self.schedule = list(weights_per_step_schedule) if weights_per_step_schedule is not None else None
        self.mult = weight_set_count(weights_per_step, self.schedule)

        self.proj_dim = embed_dim + 2 * self.num_kv_heads * self.head_dim
        bound = 1 / math.sqrt(embed_dim)
        self.in_proj_weight = nn.Parameter(
            torch.empty(self.mult * self.proj_dim, embed_dim).uniform_(-bound, bound)
        )
        self.register_buffer("in_proj_weight_scale", None)
        self.out_proj = Linear(embed_dim, self.mult * embed_dim, bias=False)
        self.register_load_state_dict_pre_hook(accept_reference_names)

    # -- streaming state --------------------------------------------------------------------------
    def _init_streaming_state(self, batch_size: int) -> AttentionState:
        if not self.causal:
            raise RuntimeError("only causal attention can stream (a query cannot see future calls)")
        capacity = self.context if self.context is not None else self.weights_per_step
        if not capacity:
            raise RuntimeError(
                "streaming attention needs a context (or weights_per_step) to size its KV cache"
            )
        weight = self.in_proj_weight
        dtype = weight_dtype(self, "in_proj_weight")
        cache = RingKVCache(batch_size, self.num_kv_heads, capacity, self.head_dim, dtype, weight.device)
        offset = torch.zeros(batch_size, dtype=torch.long, device=weight.device)
        return AttentionState(batch_size=batch_size, device=module_device(self), offset=offset, cache=cache)

    # -- weights ----------------------------------------------------------------------------------
    def in_proj(self, index: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Fused ``[Q; K; V]`` projection of weight set ``index``: ``[D + 2 * D_kv, D]``, and its
        int8 scales (None for a float weight)."""
        return weight_rows(self.in_proj_weight, self.in_proj_weight_scale, self.mult, index)

    def out_proj_weight(self, index: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        return weight_rows(self.out_proj.weight, self.out_proj.weight_scale, self.mult, index)

    def weight_set(self, step: int) -> int:
        """The weight set of sequence step ``step`` (per-step weights)."""
        return self.schedule[step] if self.schedule is not None else step

    def _project(self, x: torch.Tensor, first_step: int, out: bool) -> torch.Tensor:
        linear = self.kernels.linear
        if self.mult == 1:
            if out:
                return linear(x, self.out_proj.weight, None, self.out_proj.weight_scale)
            return linear(x, self.in_proj_weight, None, self.in_proj_weight_scale)
        weight_set = self.out_proj_weight if out else self.in_proj

        def project(index: int, xs: torch.Tensor) -> torch.Tensor:
            weight, scale = weight_set(index)
            return linear(xs, weight, None, scale)

        return apply_per_step(project, x, first_step, self.weights_per_step, self.schedule)

    # -- forward ----------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, shared: SharedStep | None = None) -> torch.Tensor:
        """``x [B, T, D]`` -> ``[B, T, D]``; in streaming, positions continue from the last call.

        A transformer passes a :class:`SharedStep` holding the positions it tracks (equal to this
        module's own); alone, the module derives them from its own offsets.
        """
        batch, length, _ = x.shape
        state = self._streaming_state
        if shared is None:
            steps = torch.arange(length, device=x.device)
            positions = steps.expand(batch, length) if state is None else state.offset[:, None] + steps
            shared = SharedStep(positions)
        first_step = state.step if state is not None else 0

        projected = self._project(x, first_step, out=False)
        heads, kv_heads, head_dim = self.num_heads, self.num_kv_heads, self.head_dim
        qk = projected[..., : (heads + kv_heads) * head_dim].unflatten(-1, (heads + kv_heads, head_dim))
        v = projected[..., (heads + kv_heads) * head_dim :].unflatten(-1, (kv_heads, head_dim))
        if self.rope is not None:
            if shared.rotation is None:
                shared.rotation = self.rope.rotation(shared.positions, head_dim)
            qk = self.rope.rotate(qk, shared.rotation)
        q, k = qk[:, :, :heads].transpose(1, 2), qk[:, :, heads:].transpose(1, 2)  # [B, H, T, Dh]
        v = v.transpose(1, 2)

        if state is None:
            key_positions = shared.positions
        else:
            k, v, key_positions = state.cache.write(k, v, shared.positions, state.exec_mask)

        if self.causal:
            out = self.kernels.attention(
                q, k, v, shared.positions, key_positions, self.context, shared=shared.scratch
            )
        else:  # every query sees every key (batch mode only)
            out = self.kernels.attention(q, k, v, None, None, None)
        out = self._project(out.transpose(1, 2).flatten(2), first_step, out=True)

        if state is not None:
            state.offset.add_(state.exec_mask, alpha=length)
            if self.mult > 1:  # only per-step weights count steps (a Python int: see AttentionState)
                state.step += length
        return out

    def extra_repr(self) -> str:
        return (
            f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, kv_repeat={self.kv_repeat}, "
            f"causal={self.causal}, context={self.context}, rope={self.rope is not None}, mult={self.mult}"
        )


def weight_rows(
    weight: torch.Tensor, scale: torch.Tensor | None, sets: int, index: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Weight set ``index`` of ``sets`` stacked along the rows, with its scales' rows."""
    rows = weight.shape[0] // sets
    chosen = weight.view(sets, rows, weight.shape[1])[index]
    return chosen, None if scale is None else scale.view(sets, rows, scale.shape[1])[index]


def accept_reference_names(module: nn.Module, state_dict: dict[str, Any], prefix: str, *_: Any) -> None:
    """Fuse the reference's per-set names into ours before loading (in place on ``state_dict``), for
    any attention with ``mult`` weight sets, ``in_proj_weight`` and ``out_proj``."""
    if prefix + "in_proj.weight" in state_dict:
        state_dict[prefix + "in_proj_weight"] = state_dict.pop(prefix + "in_proj.weight")
    for split, fused in (("in_projs", "in_proj_weight"), ("out_projs", "out_proj.weight")):
        names = [f"{prefix}{split}.{i}.weight" for i in range(module.mult)]
        present = [name in state_dict for name in names]
        if any(present):
            if not all(present):
                missing = [name for name, here in zip(names, present, strict=True) if not here]
                raise KeyError(f"incomplete per-step attention weights, missing {missing}")
            state_dict[prefix + fused] = torch.cat([state_dict.pop(name) for name in names], dim=0)
