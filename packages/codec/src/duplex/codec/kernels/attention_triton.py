"""Windowed causal attention in Triton (forward only), optionally with RoPE applied in registers.

A flash-attention style kernel: one program per (query tile, batch item, head) walks the key
slots tile by tile with an online softmax in float32, so the ``[Tq, Tk]`` score matrix never
reaches memory. Visibility comes from absolute positions (``k_pos >= 0``, ``0 <= q_pos - k_pos``,
``q_pos - k_pos < context``), so the same kernel serves a ring-buffer streaming step and a whole
sequence; key tiles where nothing is visible are skipped.

With ``ROPE`` the kernel loads the even and odd elements of q and k separately, rotates the
pairs in float32 with the torch path's frequency table, rounds back to the input dtype (as the
torch path does) and scores ``q_even·k_even + q_odd·k_odd``, which equals the interleaved dot
product.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from duplex.codec.kernels._triton_utils import block_size, check_dtype, dot_precision, mma, upcast_dot
from duplex.codec.kernels.dispatch import KernelUnsupportedError, reference_kernel
from duplex.codec.kernels.torch_library import define_op
from torch import Tensor

MAX_HEAD_DIM = 256
MAX_SPLITS = 64
LOG2_E = 1.4426950408889634


@triton.jit
def _rotate(real, imag, positions, frequencies, dtype: tl.constexpr):
    """Rotate (real, imag) pairs [rows, half] at positions [rows]; float32 math, rounded to dtype."""
    angles = positions.to(tl.float32)[:, None] * frequencies[None, :]
    cos = tl.cos(angles)
    sin = tl.sin(angles)
    real = real.to(tl.float32)
    imag = imag.to(tl.float32)
    return (real * cos - imag * sin).to(dtype), (real * sin + imag * cos).to(dtype)


@triton.jit
def _attention_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    q_pos_ptr,
    k_pos_ptr,
    frequencies_ptr,
    out_ptr,
    H,
    KV_GROUP,
    TQ,
    TK,
    DH,
    context,
    qk_scale,
    stride_qb,
    stride_qh,
    stride_qt,
    stride_qd,
    stride_kb,
    stride_kh,
    stride_kt,
    stride_kd,
    stride_vb,
    stride_vh,
    stride_vt,
    stride_vd,
    stride_ob,
    stride_oh,
    stride_ot,
    stride_od,
    stride_qpb,
    stride_qpt,
    stride_kpb,
    stride_kpt,
    partial_ptr,
    stats_ptr,
    KEYS_PER_SPLIT,
    HAS_CONTEXT: tl.constexpr,
    SPLIT: tl.constexpr,
    ROPE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_DH: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    batch_head = tl.program_id(1)
    b = batch_head // H
    h = batch_head % H
    kv_h = h // KV_GROUP
    dtype = q_ptr.dtype.element_ty

    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < TQ
    q_pos = tl.load(q_pos_ptr + b * stride_qpb + rows * stride_qpt, mask=row_ok, other=0)
    q_base = q_ptr + b * stride_qb + h * stride_qh + rows[:, None] * stride_qt
    k_base = k_ptr + b * stride_kb + kv_h * stride_kh
    v_base = v_ptr + b * stride_vb + kv_h * stride_vh

    dims = tl.arange(0, BLOCK_DH)
    dim_ok = dims < DH
    if ROPE:
        half = tl.arange(0, BLOCK_HALF)
        half_ok = half < DH // 2
        frequencies = tl.load(frequencies_ptr + half, mask=half_ok, other=0.0)
        q_mask = row_ok[:, None] & half_ok[None, :]
        q_even = tl.load(q_base + (2 * half[None, :]) * stride_qd, mask=q_mask, other=0.0)
        q_odd = tl.load(q_base + (2 * half[None, :] + 1) * stride_qd, mask=q_mask, other=0.0)
        q_even, q_odd = _rotate(q_even, q_odd, q_pos, frequencies, dtype)
    else:
        q = tl.load(q_base + dims[None, :] * stride_qd, mask=row_ok[:, None] & dim_ok[None, :], other=0.0)

    row_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
    row_sum = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DH], tl.float32)
    zeros = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    k_begin = tl.program_id(2) * KEYS_PER_SPLIT
    k_end = tl.minimum(k_begin + KEYS_PER_SPLIT, TK)
    for k_start in range(k_begin, k_end, BLOCK_N):
        cols = k_start + tl.arange(0, BLOCK_N)
        col_ok = cols < k_end
        k_pos = tl.load(k_pos_ptr + b * stride_kpb + cols * stride_kpt, mask=col_ok, other=-1)
        delta = q_pos[:, None] - k_pos[None, :]
        visible = (k_pos[None, :] >= 0) & (delta >= 0) & row_ok[:, None]
        if HAS_CONTEXT:
            visible = visible & (delta < context)
        if tl.max(visible.to(tl.int32)) > 0:
            if ROPE:
                k_mask = col_ok[:, None] & half_ok[None, :]
                k_even = tl.load(
                    k_base + cols[:, None] * stride_kt + (2 * half[None, :]) * stride_kd,
                    mask=k_mask,
                    other=0.0,
                )
                k_odd = tl.load(
                    k_base + cols[:, None] * stride_kt + (2 * half[None, :] + 1) * stride_kd,
                    mask=k_mask,
                    other=0.0,
                )
                k_even, k_odd = _rotate(k_even, k_odd, k_pos, frequencies, dtype)
                scores = mma(q_even, tl.trans(k_even), zeros, PRECISION, UPCAST)
                scores = mma(q_odd, tl.trans(k_odd), scores, PRECISION, UPCAST)
            else:
                keys = tl.load(
                    k_base + cols[:, None] * stride_kt + dims[None, :] * stride_kd,
                    mask=col_ok[:, None] & dim_ok[None, :],
                    other=0.0,
                )
                scores = mma(q, tl.trans(keys), zeros, PRECISION, UPCAST)
            scores = tl.where(visible, scores * qk_scale, float("-inf"))
            new_max = tl.maximum(row_max, tl.max(scores, axis=1))
            shift = tl.where(new_max == float("-inf"), 0.0, new_max)  # rows that still see nothing
            probs = tl.exp2(scores - shift[:, None])
            correction = tl.exp2(row_max - shift)
            row_sum = row_sum * correction + tl.sum(probs, axis=1)
            values = tl.load(
                v_base + cols[:, None] * stride_vt + dims[None, :] * stride_vd,
                mask=col_ok[:, None] & dim_ok[None, :],
                other=0.0,
            )
            acc = mma(probs.to(dtype), values, acc * correction[:, None], PRECISION, UPCAST)
            row_max = new_max

    if SPLIT:  # this program saw one slice of the keys: leave its softmax state for _combine_kernel
        all_rows = tl.num_programs(1) * TQ
        row_index = tl.program_id(2) * all_rows + batch_head * TQ + rows
        tl.store(stats_ptr + row_index, row_max, mask=row_ok)
        tl.store(stats_ptr + tl.num_programs(2) * all_rows + row_index, row_sum, mask=row_ok)
        tl.store(
            partial_ptr + row_index[:, None] * BLOCK_DH + dims[None, :],
            acc,
            mask=row_ok[:, None] & dim_ok[None, :],
        )
    else:
        out = acc / tl.where(row_sum == 0.0, 1.0, row_sum)[:, None]
        tl.store(
            out_ptr + b * stride_ob + h * stride_oh + rows[:, None] * stride_ot + dims[None, :] * stride_od,
            out.to(dtype),
            mask=row_ok[:, None] & dim_ok[None, :],
        )


@triton.jit
def _combine_kernel(
    partial_ptr,
    stats_ptr,
    out_ptr,
    SPLITS,
    ROWS,
    H,
    TQ,
    DH,
    stride_ob,
    stride_oh,
    stride_ot,
    stride_od,
    BLOCK_SPLITS: tl.constexpr,
    BLOCK_DH: tl.constexpr,
):
    """Merge the per-slice softmax states of one query row: rescale to the common max, then normalise."""
    row = tl.program_id(0)
    t = row % TQ
    b = row // TQ // H
    h = row // TQ % H
    splits = tl.arange(0, BLOCK_SPLITS)
    split_ok = splits < SPLITS
    dims = tl.arange(0, BLOCK_DH)
    dim_ok = dims < DH
    row_max = tl.load(stats_ptr + splits * ROWS + row, mask=split_ok, other=float("-inf"))
    row_sum = tl.load(stats_ptr + (SPLITS + splits) * ROWS + row, mask=split_ok, other=0.0)
    common_max = tl.max(row_max, axis=0)
    weights = tl.exp2(row_max - tl.where(common_max == float("-inf"), 0.0, common_max))
    partial = tl.load(
        partial_ptr + (splits[:, None] * ROWS + row) * BLOCK_DH + dims[None, :],
        mask=split_ok[:, None] & dim_ok[None, :],
        other=0.0,
    )
    total = tl.sum(weights * row_sum, axis=0)
    out = tl.sum(weights[:, None] * partial, axis=0) / tl.where(total == 0.0, 1.0, total)
    tl.store(
        out_ptr + b * stride_ob + h * stride_oh + t * stride_ot + dims * stride_od,
        out.to(out_ptr.dtype.element_ty),
        mask=dim_ok,
    )


def _multiprocessors(device: torch.device) -> int:
    if device.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count


def default_splits(programs: int, key_tiles: int, device: torch.device) -> int:
    """Key slices per (query tile, head): enough programs to fill the GPU, at least 2 key tiles each.

    A streaming step has one query tile per head, so without slicing a batch of one would run
    only H programs, each walking the whole ring buffer (flash-decoding).
    """
    processors = _multiprocessors(device)
    if programs >= processors:
        return 1
    return max(1, min(triton.cdiv(2 * processors, programs), key_tiles // 2, MAX_SPLITS))


def _launch(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    q_pos: Tensor,
    k_pos: Tensor,
    context: int | None,
    scale: float | None,
    frequencies: Tensor | None,
    num_splits: int | None = None,
) -> Tensor:
    batch, heads, q_len, head_dim = q.shape
    k_len = k.shape[2]
    if head_dim > MAX_HEAD_DIM:
        raise KernelUnsupportedError(
            f"the Triton attention kernel handles Dh <= {MAX_HEAD_DIM}, got {head_dim}"
        )
    check_dtype(q.dtype)
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    if q.numel() == 0:
        return out
    if k_len == 0:
        return out.zero_()
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    block_m = 16 if q_len < 64 else (64 if head_dim <= 128 else 32)
    block_n = 64 if head_dim <= 128 else 32
    q_tiles = triton.cdiv(q_len, block_m)
    key_tiles = triton.cdiv(k_len, block_n)
    splits = (
        default_splits(q_tiles * batch * heads, key_tiles, q.device) if num_splits is None else num_splits
    )
    splits = max(1, min(splits, key_tiles))
    keys_per_split = triton.cdiv(key_tiles, splits) * block_n
    splits = triton.cdiv(k_len, keys_per_split)
    block_dh = block_size(head_dim)
    rows = batch * heads * q_len
    if splits > 1:
        partial = torch.empty((splits * rows, block_dh), dtype=torch.float32, device=q.device)
        stats = torch.empty((2, splits, rows), dtype=torch.float32, device=q.device)
    else:
        partial = stats = out  # unused
    _attention_kernel[(q_tiles, batch * heads, splits)](
        q,
        k,
        v,
        q_pos,
        k_pos,
        q_pos if frequencies is None else frequencies,  # unused without RoPE
        out,
        heads,
        heads // k.shape[1],
        q_len,
        k_len,
        head_dim,
        0 if context is None else context,
        scale * LOG2_E,
        *q.stride(),
        *k.stride(),
        *v.stride(),
        *out.stride(),
        *q_pos.stride(),
        *k_pos.stride(),
        partial,
        stats,
        keys_per_split,
        HAS_CONTEXT=context is not None,
        SPLIT=splits > 1,
        ROPE=frequencies is not None,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_DH=block_dh,
        BLOCK_HALF=block_size(head_dim // 2),
        PRECISION=dot_precision(q.dtype),
        UPCAST=upcast_dot(q.dtype),
        num_warps=4 if head_dim <= 64 else 8,
        num_stages=2,
    )
    if splits > 1:
        _combine_kernel[(rows,)](
            partial,
            stats,
            out,
            splits,
            rows,
            heads,
            q_len,
            head_dim,
            *out.stride(),
            BLOCK_SPLITS=block_size(splits, minimum=2),
            BLOCK_DH=block_dh,
        )
    return out


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    q_pos: Tensor | None,
    k_pos: Tensor | None,
    context: int | None,
    scale: float | None = None,
    shared: dict | None = None,
    num_splits: int | None = None,
) -> Tensor:
    """The ``triton`` attention op (``torch.ops.duplex.attention_triton``; forward only, causal:
    calls that need a gradient, unmasked attention and shapes the kernel does not tile run the torch
    op; ``shared`` is for the torch op's mask, which the kernel does not need)."""
    return _attention_op(q, k, v, q_pos, k_pos, context, scale, num_splits)


def _attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    q_pos: Tensor | None,
    k_pos: Tensor | None,
    context: int | None,
    scale: float | None = None,
    num_splits: int | None = None,
) -> Tensor:
    # contiguous, as the op's fake rule says (a compiled graph views the output by its strides)
    if q_pos is None or (torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))):
        return reference_kernel("attention")(q, k, v, q_pos, k_pos, context, scale).contiguous()
    try:
        return _launch(q, k, v, q_pos, k_pos, context, scale, None, num_splits).contiguous()
    except KernelUnsupportedError:
        return reference_kernel("attention")(q, k, v, q_pos, k_pos, context, scale).contiguous()


_attention_op = define_op(
    "attention_triton(Tensor q, Tensor k, Tensor v, Tensor? q_pos, Tensor? k_pos, int? context, float? scale,"
    " int? num_splits) -> Tensor",
    _attention,
    lambda q, k, v, q_pos, k_pos, context, scale, num_splits: q.new_empty(q.shape),
    ("CUDA", "CPU"),
)
