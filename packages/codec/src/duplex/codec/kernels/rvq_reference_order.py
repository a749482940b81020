"""Residual-VQ codes with torch.cdist's own arithmetic, in one C call (``rvq_reference_order.c``).

The reference's codes come from cdist's matmul-path distances; near-ties flip under any other
rounding. The C loop does what :func:`duplex.codec.quantizer.nearest_codes` does level after
level, bit for bit: torch's summation order for ``|x|^2`` of contiguous rows (lane by lane over
vectors whose width is found here by trial: 8 floats in torch's x86 wheels, even on AVX-512; other
layouts sum in other orders and stay on torch), torch's own BLAS ``sgemm_`` for the product and
MKL's ``vsSqrt`` for the square root (torch's own too), then exact clamp, argmin and residual
updates, without some 15 torch ops per level.

:func:`matches_torch` checks it against torch on this machine once per process; where torch's BLAS
cannot be found or anything differs, :func:`rvq_encode` declines and the caller keeps torch's path.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import torch
from duplex.codec.kernels import native_build
from duplex.codec.kernels.dispatch import KernelUnsupportedError
from torch import Tensor

SOURCES = (Path(__file__).with_name("rvq_reference_order.c"), Path(__file__).with_name("linear_blas_order.c"))
MIN_CENTROIDS = 26  # cdist takes its matmul path from 26 centroids on

_c = ctypes
ENCODE_SIGNATURE = [
    _c.c_void_p, _c.c_int64, _c.c_int64, _c.c_void_p, _c.c_void_p, _c.c_int64, _c.c_int64, _c.c_void_p,
    _c.c_void_p, _c.c_void_p, _c.c_void_p, _c.c_void_p, _c.c_int, _c.c_int, _c.c_int,
]  # fmt: skip
NORM_SIGNATURE = [_c.c_void_p, _c.c_int64, _c.c_int64, _c.c_void_p, _c.c_int]


@functools.cache
def torch_function(name: str) -> int | None:
    """The address of a function that torch's CPU kernels call (``sgemm_`` for its matmul, MKL's
    ``vsSqrt`` for its square root), or None when torch does not export it."""
    library = Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"
    if not library.exists():
        return None
    try:
        return ctypes.cast(getattr(ctypes.CDLL(str(library)), name), ctypes.c_void_p).value
    except (OSError, AttributeError):
        return None


@functools.cache
def load(name: str = "duplex_rvq_encode_reference_order") -> ctypes._CFuncPtr:
    signature = ENCODE_SIGNATURE if name == "duplex_rvq_encode_reference_order" else NORM_SIGNATURE
    return native_build.function(SOURCES, name, signature)


def augmented_table(centroids: Tensor) -> Tensor:
    """``[..., K, D]`` -> ``[..., K, D + 2]`` rows ``[e, 1, |e|^2]``, as cdist builds them."""
    norms = centroids.pow(2).sum(-1, keepdim=True)
    return torch.cat([centroids, torch.ones_like(norms), norms], dim=-1)


def _encode(
    x: Tensor,
    centroids: Tensor,
    augmented: Tensor,
    threads: int | None = None,
    one_row_gemv: bool | None = None,
) -> tuple[Tensor, Tensor]:
    rows, dim = x.shape
    levels, size, _ = centroids.shape
    residual = x.clone(memory_format=torch.contiguous_format)
    codes = torch.empty(rows, levels, dtype=torch.long)
    lhs = torch.empty(rows, dim + 2)
    gemv = one_row_gemv_matches() if one_row_gemv is None else one_row_gemv
    distances = torch.empty(rows, size)
    load()(
        residual.data_ptr(), rows, dim, augmented.data_ptr(), centroids.data_ptr(), levels, size,
        codes.data_ptr(), lhs.data_ptr(), distances.data_ptr(), torch_function("sgemm_"),
        torch_function("vsSqrt"), vector_lanes(), int(gemv), threads or torch.get_num_threads(),
    )  # fmt: skip
    return codes, distances


def _torch_encode(x: Tensor, centroids: Tensor) -> tuple[Tensor, Tensor]:
    """What the quantizer's torch path computes, with the last level's distances."""
    residual, codes, distances = x, [], None
    for table in centroids:
        norms = residual.pow(2).sum(-1, keepdim=True)
        lhs = torch.cat([residual.mul(-2), norms, torch.ones_like(norms)], dim=-1)
        distances = lhs.matmul(augmented_table(table).mT).clamp_min_(0).sqrt_()
        codes.append(distances.argmin(dim=-1))
        residual = residual - table[codes[-1]]
    return torch.stack(codes, dim=1), distances


def _sums_of_squares(x: Tensor, lanes: int) -> Tensor:
    out = torch.empty(x.shape[0])
    load("duplex_sum_of_squares_reference_order")(x.data_ptr(), x.shape[0], x.shape[1], out.data_ptr(), lanes)
    return out


@functools.cache
def vector_lanes() -> int | None:
    """The vector width of torch's float sum here (its lanes sum separately), None if no width fits."""
    generator = torch.Generator().manual_seed(0)
    rows = [torch.randn(3, dim, generator=generator) * 3 for dim in (256, 260, 100, 1100, 4096, 7)]
    for lanes in (8, 16, 4):
        if all(torch.equal(_sums_of_squares(x, lanes), x.pow(2).sum(-1)) for x in rows):
            return lanes
    return None


@functools.cache
def one_row_gemv_matches() -> bool:
    """Whether one row's distances may take the gemv-order kernel (``linear_blas_order.c``): where
    torch's 1-row matmul is BLAS's gemv, summed as that kernel does."""
    return _matches(one_row_gemv=True)


@functools.cache
def matches_torch() -> bool:
    """Whether the C loop gives torch's bits here: norms, distances and codes, on data with ties."""
    return one_row_gemv_matches() or _matches(one_row_gemv=False)


def _matches(one_row_gemv: bool) -> bool:
    if torch_function("sgemm_") is None or torch_function("vsSqrt") is None or vector_lanes() is None:
        return False
    generator = torch.Generator().manual_seed(1)
    shapes = ((1, 2048, 256), (2, 2048, 256), (4, 2048, 256), (9, 300, 64), (3, 64, 20), (40, 2048, 256))
    for rows, size, dim in shapes:
        centroids = torch.randn(3, size, dim, generator=generator)
        centroids[:, 1] = centroids[:, 0]  # an exact tie: the lowest index wins, as in argmin
        x = torch.randn(rows, dim, generator=generator)
        x[0] = centroids[0, 0] + 1e-3
        expected_codes, expected_distances = _torch_encode(x, centroids)
        for threads in (1, 2, 4):  # the threads split the centroids between their BLAS calls
            codes, distances = _encode(x, centroids, augmented_table(centroids), threads, one_row_gemv)
            if not (torch.equal(codes, expected_codes) and torch.equal(distances, expected_distances)):
                return False
    return True


def rvq_encode(x: Tensor, centroids: Tensor, augmented: Tensor) -> Tensor:
    """Codes ``[N, L]`` of ``x [N, D]`` over ``centroids [L, K, D]`` (``augmented``: their
    :func:`augmented_table`), equal bit for bit to the quantizer's torch path."""
    rows, dim = x.shape
    levels, size, _ = centroids.shape
    if not (
        rows > 0
        and size >= MIN_CENTROIDS
        and x.is_contiguous()  # torch sums the norms of other layouts in other orders
        and x.dtype is centroids.dtype is augmented.dtype is torch.float32
        and x.device.type == centroids.device.type == augmented.device.type == "cpu"
        and centroids.is_contiguous()
        and augmented.is_contiguous()
        and augmented.shape == (levels, size, dim + 2)
    ):
        raise KernelUnsupportedError(
            "the reference-order RVQ takes contiguous float32 CPU rows and tables of "
            f">= {MIN_CENTROIDS} centroids"
        )
    if not matches_torch():
        raise KernelUnsupportedError("torch's distances are not the reference-order RVQ's here")
    return _encode(x, centroids, augmented)[0]
