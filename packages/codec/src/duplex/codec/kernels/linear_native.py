"""The ``native`` linear op: few-row float32 products in C (``linear_native.c``), compiled for
this CPU on first use. Streaming multiplies a handful of rows by each weight, where reading the
weight is the cost; the kernel reads it once at close to the memory bandwidth. Other shapes and
dtypes, and calls that need a gradient, run ``F.linear``."""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import torch
import torch.nn.functional as F
from duplex.codec.kernels import native_build
from torch import Tensor

SOURCE = Path(__file__).with_name("linear_native.c")

# Up to this many rows the kernel beats BLAS on the models' shapes (benchmarks/bench_linear.py:
# 1.3-1.6x at 32 rows, about even at 64, where BLAS's blocking starts to pay).
MAX_ROWS = 32

_c = ctypes
SIGNATURE = [
    _c.c_void_p, _c.c_int64, _c.c_void_p, _c.c_void_p, _c.c_void_p, _c.c_int64,
    _c.c_int64, _c.c_int64, _c.c_int64, _c.c_int,
]  # fmt: skip


@functools.cache
def load(extra_flags: tuple[str, ...] | None = None) -> ctypes._CFuncPtr:
    return native_build.function(SOURCE, "duplex_linear_f32", SIGNATURE, extra_flags=extra_flags)


def rows_view(x: Tensor) -> Tensor:
    """``x [..., K]`` as ``[M, K]`` with unit stride along K (a view when the layout allows it).

    Any row stride works, even 0: the kernel only reads the rows."""
    flat = x.reshape(-1, x.shape[-1])
    return flat if flat.stride(-1) == 1 else flat.contiguous()


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None, *, function=None) -> Tensor:
    in_features = x.shape[-1]
    rows = x.numel() // in_features if in_features else 0
    if not (
        0 < rows <= MAX_ROWS
        and x.dtype is torch.float32
        and weight.dtype is torch.float32
        and (bias is None or bias.dtype is torch.float32)
        and x.device.type == weight.device.type == "cpu"
        and (bias is None or bias.device.type == "cpu")
    ) or (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias))):
        return F.linear(x, weight, bias)
    flat = rows_view(x)
    if not weight.is_contiguous():
        weight = weight.contiguous()
    if bias is not None and not bias.is_contiguous():
        bias = bias.contiguous()
    out_features = weight.shape[0]
    out = torch.empty(rows, out_features, dtype=torch.float32)
    (function or load())(
        flat.data_ptr(), flat.stride(0), weight.data_ptr(), None if bias is None else bias.data_ptr(),
        out.data_ptr(), out_features, rows, out_features, in_features, torch.get_num_threads(),
    )  # fmt: skip
    return out if x.dim() == 2 else out.view(*x.shape[:-1], out_features)
