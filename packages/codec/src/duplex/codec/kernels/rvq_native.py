"""Residual-VQ codes of a few rows in C (``rvq_native.c``), compiled for this CPU on first use.

Streaming encode quantizes one frame per call: the cost is reading every level's table once, and
the C loop does it in one pass per level, without torch's per-op overhead between levels.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import torch
from duplex.codec.kernels import native_build
from duplex.codec.kernels.dispatch import reference_kernel
from duplex.codec.kernels.torch_library import define_op
from torch import Tensor

SOURCE = Path(__file__).with_name("rvq_native.c")

# Every level's table is read once per call whatever the row count; past a few dozen rows the
# distances become compute bound, where torch's BLAS-based cdist does better.
MAX_ROWS = 32

_c = ctypes
SIGNATURE = [
    _c.c_void_p, _c.c_int64, _c.c_void_p, _c.c_int64, _c.c_int64, _c.c_int64, _c.c_int64, _c.c_void_p,
    _c.c_int,
]  # fmt: skip


@functools.cache
def load() -> ctypes._CFuncPtr:
    return native_build.function(SOURCE, "duplex_rvq_encode_f32", SIGNATURE)


def rvq_encode(x: Tensor, centroids: Tensor) -> Tensor:
    """Codes ``[N, L]`` of ``x`` ``[N, D]`` against ``centroids`` ``[L, K, D]`` (inputs already checked).

    Squared distances summed directly, ties to the lowest index; may differ from ``torch.cdist``
    on near-ties. More rows than ``MAX_ROWS``, or other dtypes, run the torch op."""
    rows, dim = x.shape
    levels, size, _ = centroids.shape
    if not (0 < rows <= MAX_ROWS and x.dtype is torch.float32 and x.device.type == "cpu"):
        return reference_kernel("rvq_encode")(x, centroids)
    if levels == 0:
        return torch.empty(rows, levels, dtype=torch.long)
    return rvq_encode_f32(x, centroids)


def _rvq_encode_f32(x: Tensor, centroids: Tensor) -> Tensor:
    """Codes ``[N, L]`` of float32 CPU rows, level by level, in C."""
    rows, dim = x.shape
    levels, size, _ = centroids.shape
    codes = torch.empty(rows, levels, dtype=torch.long)
    if centroids.stride(1) != dim or centroids.stride(2) != 1:
        centroids = centroids.contiguous()
    residual = x.clone(memory_format=torch.contiguous_format)  # the kernel updates it in place
    load()(
        residual.data_ptr(), rows, centroids.data_ptr(), centroids.stride(0), levels, size, dim,
        codes.data_ptr(), torch.get_num_threads(),
    )  # fmt: skip
    return codes


rvq_encode_f32 = define_op(
    "rvq_encode_f32(Tensor x, Tensor centroids) -> Tensor",
    _rvq_encode_f32,
    lambda x, centroids: x.new_empty(x.shape[0], centroids.shape[0], dtype=torch.long),
)
