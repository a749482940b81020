"""Windowed causal attention in plain torch: ``scaled_dot_product_attention`` with a boolean mask."""

from __future__ import annotations

import torch.nn.functional as F
from duplex.codec.kernels.rope import apply_rope
from torch import Tensor


def allowed_mask(q_pos: Tensor, k_pos: Tensor, context: int | None) -> Tensor:
    """``[B, 1, Tq, Tk]``: key slot j is visible to query i iff it holds a position in the window."""
    delta = q_pos[:, :, None] - k_pos[:, None, :]
    allowed = (k_pos[:, None, :] >= 0) & (delta >= 0)
    if context is not None:
        allowed = allowed & (delta < context)
    return allowed[:, None]


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    q_pos: Tensor,
    k_pos: Tensor,
    context: int | None,
    scale: float | None = None,
) -> Tensor:
    if k.shape[1] != q.shape[1]:  # grouped keys/values: each kv head serves H / Hkv query heads
        repeat = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
    mask = allowed_mask(q_pos, k_pos, context)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0, scale=scale)


def rope_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    q_pos: Tensor,
    k_pos: Tensor,
    context: int | None,
    scale: float | None = None,
    max_period: float = 10_000,
) -> Tensor:
    q = apply_rope(q, q_pos, max_period)
    k = apply_rope(k, k_pos, max_period)
    return attention(q, k, v, q_pos, k_pos, context, scale)
