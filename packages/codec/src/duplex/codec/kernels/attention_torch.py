"""Windowed causal attention in plain torch: ``scaled_dot_product_attention`` with an additive mask."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def allowed_mask(q_pos: Tensor, k_pos: Tensor, context: int | None) -> Tensor:
    """``[B, 1, Tq, Tk]``: key slot j is visible to query i iff it holds a position in the window."""
    delta = q_pos[:, :, None] - k_pos[:, None, :]
    allowed = (k_pos[:, None, :] >= 0) & (delta >= 0)
    if context is not None:
        allowed = allowed & (delta < context)
    return allowed[:, None]


def attention_bias(q_pos: Tensor, k_pos: Tensor, context: int | None, dtype: torch.dtype) -> Tensor:
    """:func:`allowed_mask` as an additive mask: 0 where visible, -inf elsewhere."""
    allowed = allowed_mask(q_pos, k_pos, context)
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(
        ~allowed, float("-inf")
    )


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    q_pos: Tensor | None,
    k_pos: Tensor | None,
    context: int | None,
    scale: float | None = None,
    shared: dict | None = None,
) -> Tensor:
    """``q_pos`` None: every query sees every key (no mask). ``shared``: a dict that the layers of
    one transformer call share, so the first computes the mask (every layer's cache is written
    alike) and the others reuse it."""
    bias = None if shared is None else shared.get("attention_bias")
    if bias is None and q_pos is not None:
        bias = attention_bias(q_pos, k_pos, context, q.dtype)
        if shared is not None:
            shared["attention_bias"] = bias
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=bias, scale=scale, enable_gqa=k.shape[1] != q.shape[1]
    )
