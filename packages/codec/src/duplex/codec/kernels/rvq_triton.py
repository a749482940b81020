"""Residual vector quantization in Triton: fused nearest-centroid search and fused decode.

Encoding keeps a block of residuals in registers for all levels: for each level it streams the
centroid table in tiles, computes ``|r|² − 2 r·c + |c|²`` for the tile with ``tl.dot``, keeps a
running minimum and its index, then subtracts the chosen centroid. Neither the ``[N, K]``
distance matrix nor the residual ever reaches memory. With few rows (a streaming step) that
leaves most of the GPU idle, so each level's centroids are sliced over programs instead, one
launch per level, and only each slice's minimum ``[slices, N]`` goes through memory.

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
from duplex.codec.kernels._triton_utils import KERNEL_DTYPES, block_size, dot_precision, mma, upcast_dot
from duplex.codec.kernels.dispatch import reference_kernel
from duplex.codec.kernels.torch_library import define_op
from torch import Tensor

MAX_DIM = 512  # the encoder holds a [BLOCK_N, D] residual tile in registers
FUSED_PROJECTION_MAX_ROWS = 1024  # beyond this, gather + cuBLAS matmul (untuned without a GPU run)


@triton.jit
def _nearest_in_slice(
    residual,
    norms_ptr,
    table_ptr,
    k_begin,
    k_end,
    dims,
    dim_ok,
    stride_ck,
    stride_cd,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Smallest squared distance and its centroid index, over centroids [k_begin, k_end), per row."""
    residual_norm = tl.sum(residual * residual, axis=1)
    best_distance = tl.full([BLOCK_N], float("inf"), tl.float32)
    best_code = tl.zeros([BLOCK_N], tl.int32)
    for k_start in range(k_begin, k_end, BLOCK_K):
        ks = k_start + tl.arange(0, BLOCK_K)
        k_ok = ks < k_end
        centroids = tl.load(
            table_ptr + ks[:, None] * stride_ck + dims[None, :] * stride_cd,
            mask=k_ok[:, None] & dim_ok[None, :],
            other=0.0,
        ).to(tl.float32)
        norms = tl.load(norms_ptr + ks, mask=k_ok, other=0.0)
        dots = tl.dot(residual, tl.trans(centroids), input_precision=PRECISION)
        distance = residual_norm[:, None] - 2.0 * dots + norms[None, :]
        distance = tl.where(k_ok[None, :], distance, float("inf"))
        tile_best, tile_code = tl.min(distance, axis=1, return_indices=True)
        closer = tile_best < best_distance  # strictly: on a tie the earlier tile keeps it
        best_distance = tl.where(closer, tile_best, best_distance)
        best_code = tl.where(closer, tile_code + k_start, best_code)
    return best_distance, best_code


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
    """All levels for one tile of rows: the residual stays in registers from the first to the last."""
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
        _, best_code = _nearest_in_slice(
            residual,
            centroid_norms_ptr + level * K,
            table,
            0,
            K,
            dims,
            dim_ok,
            stride_ck,
            stride_cd,
            BLOCK_N,
            BLOCK_K,
            PRECISION,
        )
        tl.store(codes_ptr + rows * stride_on + level * stride_ol, best_code.to(tl.int64), mask=row_ok)
        chosen = tl.load(
            table + best_code[:, None] * stride_ck + dims[None, :] * stride_cd, mask=tile_ok, other=0.0
        ).to(tl.float32)
        # Round the residual to the input dtype after each level, as the torch path does.
        residual = (residual - chosen).to(x_ptr.dtype.element_ty).to(tl.float32)


@triton.jit
def _rvq_encode_level_kernel(
    x_ptr,
    centroids_ptr,
    centroid_norms_ptr,
    codes_ptr,
    residuals_ptr,
    partial_distance_ptr,
    partial_code_ptr,
    level,
    N,
    K,
    D,
    L,
    SPLITS,
    KEYS_PER_SPLIT,
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
    BLOCK_SPLITS: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Launch ``level`` of the centroid-sliced encoder, for few rows (a streaming step).

    Each program (row tile, centroid slice) first finishes level - 1: it merges the slices'
    minima (the lowest slice wins a tie, so the lowest index does) and subtracts the chosen
    centroid; slice 0 stores that code and the new residual. It then searches its slice of
    level ``level``'s centroids. Residuals and minima alternate between two buffers by level
    parity, so a launch never overwrites what its own programs read.
    """
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    split = tl.program_id(1)
    dims = tl.arange(0, BLOCK_D)
    row_ok = rows < N
    dim_ok = dims < D
    tile_ok = row_ok[:, None] & dim_ok[None, :]
    scratch = rows[:, None] * BLOCK_D + dims[None, :]
    if level == 0:
        residual = tl.load(
            x_ptr + rows[:, None] * stride_xn + dims[None, :] * stride_xd, mask=tile_ok, other=0.0
        ).to(tl.float32)
    else:
        previous = level - 1
        splits = tl.arange(0, BLOCK_SPLITS)
        slots = ((previous % 2) * SPLITS + splits[None, :]) * N + rows[:, None]
        slot_ok = row_ok[:, None] & (splits[None, :] < SPLITS)
        distances = tl.load(partial_distance_ptr + slots, mask=slot_ok, other=float("inf"))
        codes = tl.load(partial_code_ptr + slots, mask=slot_ok, other=0)
        _, winner = tl.min(distances, axis=1, return_indices=True)
        code = tl.sum(tl.where(splits[None, :] == winner[:, None], codes, 0), axis=1)
        chosen = tl.load(
            centroids_ptr + previous * stride_cl + code[:, None] * stride_ck + dims[None, :] * stride_cd,
            mask=tile_ok,
            other=0.0,
        ).to(tl.float32)
        residual = tl.load(residuals_ptr + (previous % 2) * N * BLOCK_D + scratch, mask=tile_ok, other=0.0)
        residual = (residual - chosen).to(x_ptr.dtype.element_ty).to(tl.float32)
        if split == 0:
            tl.store(codes_ptr + rows * stride_on + previous * stride_ol, code.to(tl.int64), mask=row_ok)
    if level < L:
        if split == 0:
            tl.store(residuals_ptr + (level % 2) * N * BLOCK_D + scratch, residual, mask=tile_ok)
        k_begin = split * KEYS_PER_SPLIT
        slice_distance, slice_code = _nearest_in_slice(
            residual,
            centroid_norms_ptr + level * K,
            centroids_ptr + level * stride_cl,
            k_begin,
            tl.minimum(k_begin + KEYS_PER_SPLIT, K),
            dims,
            dim_ok,
            stride_ck,
            stride_cd,
            BLOCK_N,
            BLOCK_K,
            PRECISION,
        )
        slot = ((level % 2) * SPLITS + split) * N + rows
        tl.store(partial_distance_ptr + slot, slice_distance, mask=row_ok)
        tl.store(partial_code_ptr + slot, slice_code, mask=row_ok)


@triton.jit
def _gather_sum_tile(
    codes_ptr,
    table_ptr,
    rows,
    row_ok,
    dims,
    dim_ok,
    L,
    K,
    stride_cn,
    stride_cl,
    stride_tl,
    stride_tk,
    stride_td,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """The sum over levels of the chosen centroids, for a [rows, dims] tile, in the table's dtype.

    A code outside [0, K) adds nothing instead of reading outside the table (CUDA inputs are not
    range-checked on the host, which would cost a synchronisation).
    """
    total = tl.zeros([BLOCK_N, BLOCK_D], dtype=table_ptr.dtype.element_ty)
    for level in range(L):
        code = tl.load(codes_ptr + rows * stride_cn + level * stride_cl, mask=row_ok, other=0)
        code_ok = row_ok & (code >= 0) & (code < K)
        vectors = tl.load(
            table_ptr + level * stride_tl + code[:, None] * stride_tk + dims[None, :] * stride_td,
            mask=code_ok[:, None] & dim_ok[None, :],
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
    K,
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
        K,
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
    K,
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
            K,
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


def _multiprocessors(device: torch.device) -> int:
    if device.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count


def default_splits(row_tiles: int, centroid_tiles: int, device: torch.device) -> int:
    """Centroid slices per level: 1 (one fused kernel) when the row tiles alone fill the GPU.

    A streaming step quantizes a handful of rows; one program per row tile would then read every
    codebook alone, so the centroids are sliced across programs, one launch per level.
    """
    processors = _multiprocessors(device)
    if row_tiles * 2 >= processors:
        return 1
    return max(1, min(centroid_tiles, triton.cdiv(2 * processors, row_tiles)))


def rvq_encode(x: Tensor, centroids: Tensor, num_splits: int | None = None) -> Tensor:
    """The ``triton`` rvq_encode op (``torch.ops.duplex.rvq_encode_triton``): see :func:`_rvq_encode`."""
    return _rvq_encode_op(x, centroids, num_splits)


def _rvq_encode(x: Tensor, centroids: Tensor, num_splits: int | None = None) -> Tensor:
    """Codes ``[N, L]`` of ``x`` ``[N, D]`` against ``centroids`` ``[L, K, D]`` (inputs already checked).

    ``num_splits`` slices each level's centroids over that many programs (default: by GPU size).
    """
    n, dim = x.shape
    levels, k, _ = centroids.shape
    if dim > MAX_DIM or x.dtype not in KERNEL_DTYPES:  # the residual tile would not fit / no kernel
        return reference_kernel("rvq_encode")(x, centroids)
    codes = torch.empty((n, levels), dtype=torch.long, device=x.device)
    if n == 0 or levels == 0:
        return codes
    norms = centroids.float().pow(2).sum(dim=-1).contiguous()
    # Tiles sized so that two pipeline stages of float32 centroids stay well inside shared memory.
    block_n, block_k, block_d = (32 if n > 16 else 16), (64 if dim <= 128 else 32), block_size(dim)
    row_tiles, centroid_tiles = triton.cdiv(n, block_n), triton.cdiv(k, block_k)
    splits = default_splits(row_tiles, centroid_tiles, x.device) if num_splits is None else num_splits
    splits = max(1, min(splits, centroid_tiles))
    common = dict(BLOCK_N=block_n, BLOCK_K=block_k, BLOCK_D=block_d, PRECISION=dot_precision(x.dtype))
    strides = (*x.stride(), *centroids.stride(), *codes.stride())
    if splits == 1:
        _rvq_encode_kernel[(row_tiles,)](
            x, centroids, norms, codes, n, k, dim, levels, *strides, **common, num_warps=8, num_stages=2
        )
        return codes
    keys_per_split = triton.cdiv(centroid_tiles, splits) * block_k
    splits = triton.cdiv(k, keys_per_split)
    residuals = torch.empty((2, n, block_d), dtype=torch.float32, device=x.device)
    partial_distance = torch.empty((2, splits, n), dtype=torch.float32, device=x.device)
    partial_code = torch.empty((2, splits, n), dtype=torch.int32, device=x.device)
    for level in range(levels + 1):  # launch `levels` only finishes the last level
        _rvq_encode_level_kernel[(row_tiles, splits if level < levels else 1)](
            x,
            centroids,
            norms,
            codes,
            residuals,
            partial_distance,
            partial_code,
            level,
            n,
            k,
            dim,
            levels,
            splits,
            keys_per_split,
            *strides,
            **common,
            BLOCK_SPLITS=block_size(splits, minimum=2),
            num_warps=4,
            num_stages=2,
        )
    return codes


def rvq_decode(codes: Tensor, centroids: Tensor, proj: Tensor | None = None) -> Tensor:
    """The ``triton`` rvq_decode op (``torch.ops.duplex.rvq_decode_triton``): see :func:`_rvq_decode`."""
    return _rvq_decode_op(codes, centroids, proj)


def _rvq_decode(codes: Tensor, centroids: Tensor, proj: Tensor | None = None) -> Tensor:
    """Sum of the chosen centroids ``[N, D]``, times ``proj.T`` when given (inputs already checked)."""
    needs_grad = torch.is_grad_enabled() and (
        centroids.requires_grad or (proj is not None and proj.requires_grad)
    )
    if needs_grad or centroids.dtype not in KERNEL_DTYPES:  # forward only, these dtypes only
        return reference_kernel("rvq_decode")(codes, centroids, proj)
    n, levels = codes.shape
    dim = centroids.shape[-1]
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
            centroids.shape[1],
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
        centroids.shape[1],
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


def _decoded_fake(codes: Tensor, centroids: Tensor, proj: Tensor | None) -> Tensor:
    width = centroids.shape[-1] if proj is None else proj.shape[0]
    return centroids.new_empty(codes.shape[0], width)


_rvq_encode_op = define_op(
    "rvq_encode_triton(Tensor x, Tensor centroids, int? num_splits) -> Tensor",
    _rvq_encode,
    lambda x, centroids, num_splits: x.new_empty(x.shape[0], centroids.shape[0], dtype=torch.long),
    ("CUDA", "CPU"),
)
_rvq_decode_op = define_op(
    "rvq_decode_triton(Tensor codes, Tensor centroids, Tensor? proj) -> Tensor",
    _rvq_decode,
    _decoded_fake,
    ("CUDA", "CPU"),
)
