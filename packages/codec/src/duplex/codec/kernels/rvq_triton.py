"""Residual vector quantization in Triton: fused nearest-centroid search and fused decode.

Encoding keeps a block of residuals in registers for all levels: for each level it streams the
centroid table in tiles, computes ``|r|² − 2 r·c + |c|²`` for the tile with ``tl.dot``, keeps a
running minimum and its index, then subtracts the chosen centroid. Neither the ``[N, K]``
distance matrix nor the residual ever reaches memory.

Ties: an exactly tied minimum goes to the lowest centroid index (``tl.min`` breaks ties to the
left inside a tile, and a later tile must be strictly closer to win), which is what ``argmin``
does on the torch path. The distances are rounded differently from ``torch.cdist``'s, so on
near-ties (distance gaps around 1e-6 relative) the two paths may pick different codes.

Decoding gathers each level's centroid and sums in level order (bit-identical to the torch path
in float32). With a projection, small batches run one fused kernel (gather, sum, multiply by the
projection tile by tile); large batches gather first and leave the matrix product to cuBLAS.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from duplex.codec.kernels._triton_utils import block_size, check_dtype, dot_precision, mma, upcast_dot
from duplex.codec.kernels.dispatch import KernelUnsupportedError
from torch import Tensor

MAX_DIM = 512  # the encoder holds a [BLOCK_N, D] residual tile in registers
FUSED_PROJECTION_MAX_ROWS = 1024  # beyond this, gather + cuBLAS matmul (untuned without a GPU run)


@triton.jit
def _rvq_encode_kernel(
    x_ptr,
    centroids_ptr,
    centroid_norms_ptr,
    codes_ptr,
    N,
    K,
    D,
    L,
    stride_xn,
    stride_xd,
    stride_cl,
    stride_ck,
    stride_cd,
    stride_on,
    stride_ol,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    dims = tl.arange(0, BLOCK_D)
    row_ok = rows < N
    dim_ok = dims < D
    tile_ok = row_ok[:, None] & dim_ok[None, :]
    residual = tl.load(
        x_ptr + rows[:, None] * stride_xn + dims[None, :] * stride_xd, mask=tile_ok, other=0.0
    ).to(tl.float32)
    for level in range(L):
        table = centroids_ptr + level * stride_cl
        residual_norm = tl.sum(residual * residual, axis=1)
        best_distance = tl.full([BLOCK_N], float("inf"), tl.float32)
        best_code = tl.zeros([BLOCK_N], tl.int32)
        for k_start in range(0, K, BLOCK_K):
            ks = k_start + tl.arange(0, BLOCK_K)
            k_ok = ks < K
            centroids = tl.load(
                table + ks[:, None] * stride_ck + dims[None, :] * stride_cd,
                mask=k_ok[:, None] & dim_ok[None, :],
                other=0.0,
            ).to(tl.float32)
            norms = tl.load(centroid_norms_ptr + level * K + ks, mask=k_ok, other=0.0)
            dots = tl.dot(residual, tl.trans(centroids), input_precision=PRECISION)
            distance = residual_norm[:, None] - 2.0 * dots + norms[None, :]
            distance = tl.where(k_ok[None, :], distance, float("inf"))
            tile_best, tile_code = tl.min(distance, axis=1, return_indices=True)
            closer = tile_best < best_distance
            best_distance = tl.where(closer, tile_best, best_distance)
            best_code = tl.where(closer, tile_code + k_start, best_code)
        tl.store(codes_ptr + rows * stride_on + level * stride_ol, best_code.to(tl.int64), mask=row_ok)
        chosen = tl.load(
            table + best_code[:, None] * stride_ck + dims[None, :] * stride_cd, mask=tile_ok, other=0.0
        ).to(tl.float32)
        # Round the residual to the input dtype after each level, as the torch path does.
        residual = (residual - chosen).to(x_ptr.dtype.element_ty).to(tl.float32)


@triton.jit
def _gather_sum_tile(
    codes_ptr,
    table_ptr,
    rows,
    row_ok,
    dims,
    dim_ok,
    L,
    stride_cn,
    stride_cl,
    stride_tl,
    stride_tk,
    stride_td,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """The sum over levels of the chosen centroids, for a [rows, dims] tile, in the table's dtype."""
    total = tl.zeros([BLOCK_N, BLOCK_D], dtype=table_ptr.dtype.element_ty)
    for level in range(L):
        code = tl.load(codes_ptr + rows * stride_cn + level * stride_cl, mask=row_ok, other=0)
        vectors = tl.load(
            table_ptr + level * stride_tl + code[:, None] * stride_tk + dims[None, :] * stride_td,
            mask=row_ok[:, None] & dim_ok[None, :],
            other=0.0,
        )
        total = total + vectors
    return total


@triton.jit
def _rvq_decode_kernel(
    codes_ptr,
    centroids_ptr,
    out_ptr,
    N,
    D,
    L,
    stride_cn,
    stride_cl,
    stride_tl,
    stride_tk,
    stride_td,
    stride_on,
    stride_od,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    dims = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    row_ok = rows < N
    dim_ok = dims < D
    total = _gather_sum_tile(
        codes_ptr,
        centroids_ptr,
        rows,
        row_ok,
        dims,
        dim_ok,
        L,
        stride_cn,
        stride_cl,
        stride_tl,
        stride_tk,
        stride_td,
        BLOCK_N,
        BLOCK_D,
    )
    tl.store(
        out_ptr + rows[:, None] * stride_on + dims[None, :] * stride_od,
        total,
        mask=row_ok[:, None] & dim_ok[None, :],
    )


@triton.jit
def _rvq_decode_project_kernel(
    codes_ptr,
    centroids_ptr,
    proj_ptr,
    out_ptr,
    N,
    D,
    L,
    OUT,
    stride_cn,
    stride_cl,
    stride_tl,
    stride_tk,
    stride_td,
    stride_po,
    stride_pd,
    stride_on,
    stride_oo,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_O: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    outs = tl.program_id(1) * BLOCK_O + tl.arange(0, BLOCK_O)
    row_ok = rows < N
    out_ok = outs < OUT
    acc = tl.zeros([BLOCK_N, BLOCK_O], dtype=tl.float32)
    for d_start in range(0, D, BLOCK_D):
        dims = d_start + tl.arange(0, BLOCK_D)
        dim_ok = dims < D
        total = _gather_sum_tile(
            codes_ptr,
            centroids_ptr,
            rows,
            row_ok,
            dims,
            dim_ok,
            L,
            stride_cn,
            stride_cl,
            stride_tl,
            stride_tk,
            stride_td,
            BLOCK_N,
            BLOCK_D,
        )
        weights = tl.load(
            proj_ptr + outs[None, :] * stride_po + dims[:, None] * stride_pd,
            mask=dim_ok[:, None] & out_ok[None, :],
            other=0.0,
        )
        acc = mma(total, weights, acc, PRECISION, UPCAST)
    tl.store(
        out_ptr + rows[:, None] * stride_on + outs[None, :] * stride_oo,
        acc.to(out_ptr.dtype.element_ty),
        mask=row_ok[:, None] & out_ok[None, :],
    )


def rvq_encode(x: Tensor, centroids: Tensor) -> Tensor:
    """Codes ``[N, L]`` of ``x`` ``[N, D]`` against ``centroids`` ``[L, K, D]`` (inputs already checked)."""
    n, dim = x.shape
    levels, k, _ = centroids.shape
    if dim > MAX_DIM:
        raise KernelUnsupportedError(f"the Triton RVQ encoder handles D <= {MAX_DIM}, got D={dim}")
    check_dtype(x.dtype)
    codes = torch.empty((n, levels), dtype=torch.long, device=x.device)
    if n == 0 or levels == 0:
        return codes
    norms = centroids.float().pow(2).sum(dim=-1).contiguous()
    block_n, block_k = 32, 64 if dim <= 256 else 32
    _rvq_encode_kernel[(triton.cdiv(n, block_n),)](
        x,
        centroids,
        norms,
        codes,
        n,
        k,
        dim,
        levels,
        *x.stride(),
        *centroids.stride(),
        *codes.stride(),
        BLOCK_N=block_n,
        BLOCK_K=block_k,
        BLOCK_D=block_size(dim),
        PRECISION=dot_precision(x.dtype),
        num_warps=8,
    )
    return codes


def rvq_decode(codes: Tensor, centroids: Tensor, proj: Tensor | None = None) -> Tensor:
    """Sum of the chosen centroids ``[N, D]``, times ``proj.T`` when given (inputs already checked)."""
    n, levels = codes.shape
    dim = centroids.shape[-1]
    check_dtype(centroids.dtype)
    if proj is not None and n <= FUSED_PROJECTION_MAX_ROWS and n > 0:
        return _decode_projected(codes, centroids, proj)
    total = torch.empty((n, dim), dtype=centroids.dtype, device=centroids.device)
    if n > 0:
        block_n, block_d = 32, block_size(dim, maximum=128)
        _rvq_decode_kernel[(triton.cdiv(n, block_n), triton.cdiv(dim, block_d))](
            codes,
            centroids,
            total,
            n,
            dim,
            levels,
            *codes.stride(),
            *centroids.stride(),
            *total.stride(),
            BLOCK_N=block_n,
            BLOCK_D=block_d,
        )
    return total if proj is None else torch.nn.functional.linear(total, proj)


def _decode_projected(codes: Tensor, centroids: Tensor, proj: Tensor) -> Tensor:
    n, levels = codes.shape
    dim = centroids.shape[-1]
    out_dim = proj.shape[0]
    out = torch.empty((n, out_dim), dtype=centroids.dtype, device=centroids.device)
    block_n, block_d, block_o = 16, block_size(dim, maximum=64), block_size(out_dim, maximum=64)
    _rvq_decode_project_kernel[(triton.cdiv(n, block_n), triton.cdiv(out_dim, block_o))](
        codes,
        centroids,
        proj,
        out,
        n,
        dim,
        levels,
        out_dim,
        *codes.stride(),
        *centroids.stride(),
        *proj.stride(),
        *out.stride(),
        BLOCK_N=block_n,
        BLOCK_D=block_d,
        BLOCK_O=block_o,
        PRECISION=dot_precision(centroids.dtype),
        UPCAST=upcast_dot(centroids.dtype),
    )
    return out
