"""Public attention ops: causal attention over absolute positions, with an optional window.

One form serves both uses:

* streaming step (docs/architecture.md §2.3): new queries at ``q_pos = offset + t`` against a KV ring buffer
  whose slots carry their absolute positions in ``k_pos`` (``-1`` = never written);
* prefill and training: ``q_pos = k_pos = arange(T)``.

Query ``i`` sees key slot ``j`` iff ``k_pos[j] >= 0``, ``q_pos[i] - k_pos[j] >= 0`` and, with a
``context``, ``q_pos[i] - k_pos[j] < context``. A query that sees nothing gets zeros.
"""

from __future__ import annotations

import torch
from duplex.codec.kernels.dispatch import select_kernels
from torch import Tensor


def _check(q: Tensor, k: Tensor, v: Tensor, q_pos: Tensor, k_pos: Tensor, context: int | None) -> None:
    for name, tensor in (("q", q), ("k", k), ("v", v)):
        if tensor.dim() != 4:
            raise ValueError(f"{name} must be [B, H, T, Dh], got shape {tuple(tensor.shape)}")
    batch, heads, q_len, head_dim = q.shape
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    if k.shape[0] != batch or k.shape[3] != head_dim:
        raise ValueError(f"k/v {tuple(k.shape)} do not match q {tuple(q.shape)} in batch or head dim")
    if k.shape[1] == 0 or heads % k.shape[1]:
        raise ValueError(f"q has {heads} heads, which is not a multiple of the {k.shape[1]} kv heads")
    if q_pos.shape != (batch, q_len):
        raise ValueError(f"q_pos must be [B, Tq] = {(batch, q_len)}, got {tuple(q_pos.shape)}")
    if k_pos.shape != (batch, k.shape[2]):
        raise ValueError(f"k_pos must be [B, Tk] = {(batch, k.shape[2])}, got {tuple(k_pos.shape)}")
    for name, positions in (("q_pos", q_pos), ("k_pos", k_pos)):
        if positions.dtype.is_floating_point or positions.dtype == torch.bool:
            raise TypeError(f"{name} must hold integer positions, got {positions.dtype}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    devices = {t.device for t in (q, k, v, q_pos, k_pos)}
    if len(devices) != 1:
        raise TypeError(f"q, k, v, q_pos, k_pos must be on one device, got {sorted(map(str, devices))}")
    if context is not None and (isinstance(context, bool) or not isinstance(context, int) or context < 1):
        raise ValueError(f"context must be a positive int or None, got {context!r}")


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    q_pos: Tensor,
    k_pos: Tensor,
    context: int | None,
    scale: float | None = None,
    *,
    numerics: str = "fast",
) -> Tensor:
    """Softmax attention ``[B, H, Tq, Dh]`` of q over the visible key slots (see the module doc).

    ``k``/``v`` may have fewer heads than ``q`` (grouped-query attention). ``scale`` defaults to
    ``1/sqrt(Dh)``. The Triton kernel is forward only: calls that need gradients run torch SDPA.
    """
    _check(q, k, v, q_pos, k_pos, context)
    kernels = select_kernels(numerics, q.device, q.dtype)
    return kernels.attention(q, k, v, q_pos.long(), k_pos.long(), context, scale)
