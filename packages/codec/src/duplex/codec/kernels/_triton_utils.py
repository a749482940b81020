"""Helpers shared by the Triton implementations (imported only together with triton)."""

from __future__ import annotations

import torch
import triton


def dot_precision(dtype: torch.dtype) -> str:
    """``tl.dot`` precision for ``dtype`` operands: float32 follows torch's TF32 switch, like cuBLAS."""
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"


def block_size(n: int, minimum: int = 16, maximum: int | None = None) -> int:
    """The power of two ``>= n`` (and ``>= minimum``, the smallest ``tl.dot`` tile), capped at ``maximum``."""
    size = max(minimum, triton.next_power_of_2(max(n, 1)))
    return size if maximum is None else min(size, maximum)
