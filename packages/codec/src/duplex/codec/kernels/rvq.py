"""Public residual-VQ ops: check the inputs, then run the selected implementation."""

from __future__ import annotations

import torch
from duplex.codec.kernels.dispatch import select_kernels
from torch import Tensor


def _check_centroids(centroids: Tensor) -> None:
    if centroids.dim() != 3:
        raise ValueError(f"centroids must be [L, K, D], got shape {tuple(centroids.shape)}")
    if not centroids.dtype.is_floating_point:
        raise TypeError(f"centroids must be floating point, got {centroids.dtype}")
    if centroids.shape[1] == 0:
        raise ValueError("centroids has no entries (K = 0)")


def rvq_encode(x: Tensor, centroids: Tensor, *, numerics: str = "fast") -> Tensor:
    """Residual VQ codes of ``x`` ``[N, D]`` over ``centroids`` ``[L, K, D]``: int64 ``[N, L]``.

    Level ``l`` picks the centroid nearest (Euclidean) to the residual left by levels ``< l``.
    Exact ties go to the lowest index on every backend; the Triton path rounds distances
    differently from ``torch.cdist`` and may differ from it on near-ties.
    """
    _check_centroids(centroids)
    if x.dim() != 2:
        raise ValueError(f"x must be [N, D], got shape {tuple(x.shape)}")
    if x.shape[1] != centroids.shape[2]:
        raise ValueError(f"x has D={x.shape[1]} but the centroids have D={centroids.shape[2]}")
    if x.dtype != centroids.dtype or x.device != centroids.device:
        raise TypeError(
            f"x ({x.dtype}, {x.device}) and centroids ({centroids.dtype}, {centroids.device}) "
            "must share dtype and device"
        )
    return select_kernels(numerics, x.device, x.dtype).rvq_encode(x, centroids)


def rvq_decode(
    codes: Tensor, centroids: Tensor, proj: Tensor | None = None, *, numerics: str = "fast"
) -> Tensor:
    """Sum over levels of ``centroids[l, codes[:, l]]``: ``[N, D]``, or ``[N, Dout]`` with ``proj [Dout, D]``.

    The sum runs in level order, so it equals the reference decoding bit for bit; ``proj``
    (the output projection) is applied to the sum, as ``F.linear(sum, proj)``.
    """
    _check_centroids(centroids)
    if codes.dim() != 2:
        raise ValueError(f"codes must be [N, L], got shape {tuple(codes.shape)}")
    if codes.dtype.is_floating_point or codes.dtype == torch.bool:
        raise TypeError(f"codes must be integers, got {codes.dtype}")
    levels, k, dim = centroids.shape
    if codes.shape[1] > levels:
        raise ValueError(f"codes have {codes.shape[1]} levels but there are only {levels} codebooks")
    if codes.device != centroids.device:
        raise TypeError(f"codes ({codes.device}) and centroids ({centroids.device}) are on different devices")
    if codes.numel() and codes.device.type == "cpu" and (codes.min() < 0 or codes.max() >= k):
        raise ValueError(
            f"codes must lie in [0, {k}), got values in [{int(codes.min())}, {int(codes.max())}]"
        )
    if proj is not None:
        if proj.dim() != 2 or proj.shape[1] != dim:
            raise ValueError(f"proj must be [Dout, {dim}], got shape {tuple(proj.shape)}")
        if proj.dtype != centroids.dtype or proj.device != centroids.device:
            raise TypeError("proj must share the centroids' dtype and device")
    kernels = select_kernels(numerics, centroids.device, centroids.dtype)
    return kernels.rvq_decode(codes, centroids[: codes.shape[1]], proj)
