"""Helpers shared by the Triton implementations (imported only together with triton)."""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from duplex.codec.kernels.dispatch import KernelUnsupportedError

KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_dtype(dtype: torch.dtype) -> None:
    if dtype not in KERNEL_DTYPES:
        raise KernelUnsupportedError(f"the Triton kernels handle float32, float16 and bfloat16, not {dtype}")


def dot_precision(dtype: torch.dtype) -> str:
    """``tl.dot`` precision for ``dtype`` operands: float32 follows torch's TF32 switch, like cuBLAS."""
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"


def upcast_dot(dtype: torch.dtype) -> bool:
    """Whether ``tl.dot`` operands must be widened to float32 first.

    Triton's CPU interpreter multiplies bfloat16 tiles as raw 16-bit integers (triton 3.x), so
    under ``TRITON_INTERPRET`` bfloat16 tiles go through a float32 product instead; a product of
    two 16-bit floats is exact in float32, so this gives what a GPU's bf16 MMA with a float32
    accumulator gives (up to the order of the sum).
    """
    return dtype == torch.bfloat16 and os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@triton.jit
def mma(a, b, acc, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """``acc + a @ b`` with a float32 accumulator."""
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    return tl.dot(a, b, acc, input_precision=PRECISION)


def block_size(n: int, minimum: int = 16, maximum: int | None = None) -> int:
    """The power of two ``>= n`` (and ``>= minimum``, the smallest ``tl.dot`` tile), capped at ``maximum``."""
    size = max(minimum, triton.next_power_of_2(max(n, 1)))
    return size if maximum is None else min(size, maximum)
