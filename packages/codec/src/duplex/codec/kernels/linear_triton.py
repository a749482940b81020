"""The ``triton`` linear op (CUDA): few-row products with a narrow weight, read as it is stored.

cuBLAS is the right tool when the weight is in the activations' dtype, so those products run
``F.linear``. A narrow weight (int8 with its scales, or bf16 under float32 activations) through
torch would be widened whole before every product: for int8, five bytes moved per weight instead
of one. This kernel loads int8 (or bf16) tiles, scales and widens them in registers and multiplies
them with a float32 accumulator, up to ``MAX_ROWS`` rows (streaming steps). More rows (a prompt,
training) are compute bound: the weight is widened once and cuBLAS runs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from duplex.codec.kernels._triton_utils import block_size, check_dtype, dot_precision, mma, upcast_dot
from duplex.codec.kernels.dispatch import reference_kernel
from duplex.codec.kernels.torch_library import define_op
from torch import Tensor

MAX_ROWS = 64
BLOCK_N = 64
BLOCK_K = 64


@triton.jit
def _narrow_linear_kernel(
    x_ptr,
    w_ptr,
    scale_ptr,
    bias_ptr,
    y_ptr,
    M,
    N,
    K,
    GROUP,
    GROUPS,
    stride_xm,
    stride_ym,
    HAS_SCALE: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    columns = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for start in range(0, K, BLOCK_K):
        inner = start + tl.arange(0, BLOCK_K)
        x_mask = (rows[:, None] < M) & (inner[None, :] < K)
        x = tl.load(x_ptr + rows[:, None] * stride_xm + inner[None, :], mask=x_mask, other=0.0)
        w_mask = (columns[:, None] < N) & (inner[None, :] < K)
        w = tl.load(w_ptr + columns[:, None] * K + inner[None, :], mask=w_mask, other=0).to(tl.float32)
        if HAS_SCALE:  # each weight times its row's (or group's) scale, in float32
            where = columns[:, None] * GROUPS + inner[None, :] // GROUP
            w = w * tl.load(scale_ptr + where, mask=w_mask, other=0.0)
        acc = mma(x, tl.trans(w.to(x.dtype)), acc, PRECISION, UPCAST)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + columns, mask=columns < N, other=0.0).to(tl.float32)[None, :]
    y_mask = (rows[:, None] < M) & (columns[None, :] < N)
    tl.store(
        y_ptr + rows[:, None] * stride_ym + columns[None, :], acc.to(y_ptr.dtype.element_ty), mask=y_mask
    )


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None, scale: Tensor | None = None) -> Tensor:
    """The ``triton`` linear op (``torch.ops.duplex.linear_triton``): see :func:`_linear`."""
    return _linear_op(x, weight, bias, scale)


def _linear(x: Tensor, weight: Tensor, bias: Tensor | None = None, scale: Tensor | None = None) -> Tensor:
    """``F.linear`` of ``weight`` as stored (docs/nn-api.md): the kernel for a few rows and a narrow
    weight without gradient, torch's op otherwise."""
    if weight.dtype is x.dtype:
        return reference_kernel("linear")(x, weight, bias)
    in_features = x.shape[-1]
    rows = x.numel() // in_features if in_features else 0
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, bias))
    if not (0 < rows <= MAX_ROWS) or needs_grad or weight.dtype not in (torch.int8, torch.bfloat16):
        return reference_kernel("linear")(x, weight, bias, scale)
    check_dtype(x.dtype)
    flat = x.reshape(rows, in_features)
    flat = flat if flat.stride(-1) == 1 else flat.contiguous()
    weight = weight.contiguous()
    scale = None if scale is None else scale.contiguous()
    out_features = weight.shape[0]
    out = torch.empty(rows, out_features, dtype=x.dtype, device=x.device)
    groups = 1 if scale is None else scale.shape[1]
    block_m = block_size(rows, 16, MAX_ROWS)
    grid = (triton.cdiv(out_features, BLOCK_N), triton.cdiv(rows, block_m))
    _narrow_linear_kernel[grid](
        flat, weight, scale if scale is not None else weight, bias if bias is not None else weight, out,
        rows, out_features, in_features, in_features // groups, groups, flat.stride(0), out.stride(0),
        HAS_SCALE=scale is not None, HAS_BIAS=bias is not None, BLOCK_M=block_m, BLOCK_N=BLOCK_N,
        BLOCK_K=BLOCK_K, PRECISION=dot_precision(x.dtype), UPCAST=upcast_dot(x.dtype),
    )  # fmt: skip
    return out.view(*x.shape[:-1], out_features)


_linear_op = define_op(
    "linear_triton(Tensor x, Tensor weight, Tensor? bias, Tensor? scale) -> Tensor",
    _linear,
    lambda x, weight, bias, scale: x.new_empty(*x.shape[:-1], weight.shape[0]),
    ("CUDA", "CPU"),
)
