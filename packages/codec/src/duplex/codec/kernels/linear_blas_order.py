"""The 1-3 row float32 matmul in BLAS's summation order (``linear_blas_order.c``).

:func:`matches_blas` checks, once per process, that torch's own matmul gives the kernel's results
bit for bit on this machine (it does with the MKL of torch's x86 wheels on AVX2 CPUs); where it
does not, :func:`linear` declines and the caller keeps torch's matmul. Used for the products that
must equal the reference's exactly (:func:`duplex.codec.kernels.reference_matmuls`).
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import torch
from duplex.codec.kernels import native_build
from duplex.codec.kernels.dispatch import KernelUnsupportedError
from duplex.codec.kernels.linear_native import SIGNATURE, rows_view
from torch import Tensor
from torch.nn import functional as F

SOURCE = Path(__file__).with_name("linear_blas_order.c")
ROW_COUNTS = (1, 2, 3)  # where BLAS takes the gemv (1 row) or small-row path the kernel follows
MULTIPLE = 4  # out features (and in features, from 2 rows): BLAS sums other sizes in other orders


@functools.cache
def load(name: str = "duplex_linear_blas_order_f32") -> ctypes._CFuncPtr:
    """A function of ``linear_blas_order.c``; both take the arguments of ``duplex_linear_f32``."""
    return native_build.function(SOURCE, name, SIGNATURE)


def _run(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    rows, in_features = x.shape
    out_features = weight.shape[0]
    out = torch.empty(rows, out_features, dtype=torch.float32)
    load()(
        x.data_ptr(), x.stride(0), weight.data_ptr(), None if bias is None else bias.data_ptr(),
        out.data_ptr(), out_features, rows, out_features, in_features, torch.get_num_threads(),
    )  # fmt: skip
    return out


@functools.cache
def matches_blas(one_row: bool = False) -> bool:
    """Whether torch's matmul sums like the kernel here, for 2-3 rows (BLAS's small-row sgemm) or,
    with ``one_row``, for one (its gemv): random data of the models' shapes. The two are checked
    apart, so that one path differing somewhere leaves the other in use."""
    generator = torch.Generator().manual_seed(0)
    if one_row:
        shapes = ((1, 512, 2048), (1, 256, 512), (1, 2048, 258), (1, 12, 37))
    else:
        shapes = ((2, 1536, 512), (3, 512, 2048), (2, 100, 1028), (3, 12, 36))
    for rows, out_features, in_features in shapes:
        x = torch.randn(rows, in_features, generator=generator)
        weight = torch.randn(out_features, in_features, generator=generator) * 0.05
        bias = torch.randn(out_features, generator=generator)
        with torch.no_grad():
            if not torch.equal(_run(x, weight, None), F.linear(x, weight)):
                return False
            if not torch.equal(_run(x, weight, bias), F.linear(x, weight, bias)):
                return False
    return True


def supports(rows: int, in_features: int, out_features: int) -> bool:
    """Whether the kernel follows BLAS's order for a product of this shape."""
    return rows in ROW_COUNTS and out_features % MULTIPLE == 0 and (rows == 1 or in_features % MULTIPLE == 0)


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    in_features = x.shape[-1]
    rows = x.numel() // in_features if in_features else 0
    if not (
        supports(rows, in_features, weight.shape[0])
        and x.dtype is torch.float32
        and weight.dtype is torch.float32
        and (bias is None or bias.dtype is torch.float32)
        and x.device.type == weight.device.type == "cpu"
        and (bias is None or bias.device.type == "cpu")
    ):
        raise KernelUnsupportedError(
            "the BLAS-order linear takes 1-3 rows of float32 on the CPU, out features (and in features "
            "from 2 rows) multiples of 4"
        )
    if not matches_blas(one_row=rows == 1):
        raise KernelUnsupportedError("torch's matmul does not sum in the BLAS-order kernel's order here")
    flat = rows_view(x)
    weight = weight.contiguous()
    bias = None if bias is None else bias.contiguous()
    out = _run(flat, weight, bias)
    return out if x.dim() == 2 else out.view(*x.shape[:-1], weight.shape[0])


def gemv_rows(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``x [M, K] @ weight.T + bias`` as M separate 1-row products (BLAS's gemv order for each),
    as torch's convolution of one output frame computes each batch item; ``weight [N, K]``
    contiguous."""
    if not (supports(1, x.shape[-1], weight.shape[0]) and x.dtype is weight.dtype is torch.float32):
        raise KernelUnsupportedError("the gemv-order rows take float32, out features a multiple of 4")
    if not matches_blas(one_row=True):
        raise KernelUnsupportedError("torch's matmul does not sum in the BLAS-order kernel's order here")
    x = rows_view(x)
    bias = None if bias is None else bias.detach().contiguous()
    return torch.cat([_run(row, weight, bias) for row in x.split(1)])


PANEL = 16  # outputs per weight panel of the sequential kernel (linear_blas_order.c)


def sequential_panels(weight: Tensor) -> Tensor:
    """``weight [N, K]`` in the sequential kernel's layout ``[ceil(N / PANEL), K, PANEL]``."""
    out_features, in_features = weight.shape
    padded = F.pad(weight.detach().float(), (0, 0, 0, -out_features % PANEL))
    return padded.view(-1, PANEL, in_features).transpose(1, 2).contiguous()


def matmul_sequential(x: Tensor, panels: Tensor, bias: Tensor | None, out_features: int) -> Tensor:
    """``x [M, K] @ weight.T + bias``, each sum started from the bias and taken term by term in
    order, without fused multiply-adds (see ``duplex_matmul_sequential_f32``)."""
    if x.dtype is not torch.float32 or x.device.type != "cpu" or x.dim() != 2:
        raise KernelUnsupportedError("the sequential matmul takes [M, K] float32 CPU rows")
    flat = rows_view(x)
    rows, in_features = flat.shape
    bias = None if bias is None else bias.detach().float().contiguous()
    out = torch.empty(rows, out_features, dtype=torch.float32)
    load("duplex_matmul_sequential_f32")(
        flat.data_ptr(), flat.stride(0), panels.data_ptr(), None if bias is None else bias.data_ptr(),
        out.data_ptr(), out_features, rows, out_features, in_features, torch.get_num_threads(),
    )  # fmt: skip
    return out
