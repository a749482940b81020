"""The ``native`` linear op: few-row products in C (``linear_native.c``), compiled for this CPU on
first use. Streaming multiplies a handful of rows by each weight, where reading the weight is the
cost; the kernel reads it once at close to the memory bandwidth, in its stored format (float32,
bfloat16, or int8 with scales: fewer bytes per step), and accumulates in float32. Inputs are
float32 or bfloat16 (converted to float32 rows first; the output keeps the input's dtype). Other
shapes and dtypes, and calls that need a gradient, run the torch op."""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import torch
from duplex.codec.kernels import native_build
from duplex.codec.kernels.dispatch import reference_kernel
from duplex.codec.kernels.torch_library import define_op
from torch import Tensor

SOURCE = Path(__file__).with_name("linear_native.c")

# Up to this many rows the kernel beats BLAS on the models' shapes (benchmarks/bench_linear.py:
# 1.3-1.6x at 32 rows, about even at 64, where BLAS's blocking starts to pay).
MAX_ROWS = 32

WEIGHT_KINDS = {torch.float32: 0, torch.bfloat16: 1, torch.int8: 2}  # duplex_weight.h
ACTIVATIONS = (torch.float32, torch.bfloat16)


class WeightSpec(ctypes.Structure):
    """The C struct ``duplex_weight``: a weight's address, its scales' and its format."""

    _fields_ = [
        ("data", ctypes.c_void_p),
        ("scales", ctypes.c_void_p),
        ("kind", ctypes.c_int64),
        ("group", ctypes.c_int64),
    ]


def weight_spec(weight: Tensor, scale: Tensor | None) -> WeightSpec:
    """The spec of a contiguous CPU weight (float32, bfloat16, or int8 with contiguous float32 scales)."""
    columns = weight.shape[1]
    group = columns // scale.shape[1] if scale is not None else columns
    return WeightSpec(
        weight.data_ptr(), None if scale is None else scale.data_ptr(), WEIGHT_KINDS[weight.dtype], group
    )


def covers_weight(weight: Tensor, scale: Tensor | None) -> bool:
    """Whether the C kernel reads this weight as it is stored."""
    if weight.dtype not in WEIGHT_KINDS or weight.device.type != "cpu":
        return False
    if scale is None:
        return weight.dtype is not torch.int8
    group = weight.shape[1] // scale.shape[1]
    return scale.dtype is torch.float32 and (scale.shape[1] == 1 or group % 8 == 0)


_c = ctypes
SIGNATURE = [
    _c.c_void_p, _c.c_int64, _c.POINTER(WeightSpec), _c.c_void_p, _c.c_void_p, _c.c_int64,
    _c.c_int64, _c.c_int64, _c.c_int64, _c.c_int,
]  # fmt: skip


@functools.cache
def load(extra_flags: tuple[str, ...] | None = None) -> ctypes._CFuncPtr:
    return native_build.function(SOURCE, "duplex_linear", SIGNATURE, extra_flags=extra_flags)


def rows_view(x: Tensor) -> Tensor:
    """``x [..., K]`` as ``[M, K]`` with unit stride along K (a view when the layout allows it).

    Any row stride works, even 0: the kernel only reads the rows."""
    flat = x.reshape(-1, x.shape[-1])
    return flat if flat.stride(-1) == 1 else flat.contiguous()


def linear(
    x: Tensor, weight: Tensor, bias: Tensor | None = None, scale: Tensor | None = None, *, function=None
) -> Tensor:
    in_features = x.shape[-1]
    rows = x.numel() // in_features if in_features else 0
    if not (
        0 < rows <= MAX_ROWS
        and x.dtype in ACTIVATIONS
        and x.device.type == "cpu"
        and covers_weight(weight, scale)
        and (bias is None or bias.device.type == "cpu")
    ) or (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias))):
        return reference_kernel("linear")(x, weight, bias, scale)
    flat = rows_view(x).to(torch.float32)
    weight = weight.contiguous()
    scale = None if scale is None else scale.contiguous()
    bias = None if bias is None else bias.to(torch.float32).contiguous()
    if function is None:
        out = linear_rows(flat, weight, scale, bias)
    else:
        out = _linear_rows(flat, weight, scale, bias, function)
    out = out.to(x.dtype)
    return out if x.dim() == 2 else out.view(*x.shape[:-1], weight.shape[0])


def _linear_rows(
    flat: Tensor, weight: Tensor, scale: Tensor | None, bias: Tensor | None, function: ctypes._CFuncPtr
) -> Tensor:
    rows, in_features = flat.shape
    out_features = weight.shape[0]
    out = torch.empty(rows, out_features, dtype=torch.float32)
    function(
        flat.data_ptr(), flat.stride(0), ctypes.byref(weight_spec(weight, scale)),
        None if bias is None else bias.data_ptr(), out.data_ptr(), out_features, rows, out_features,
        in_features, torch.get_num_threads(),
    )  # fmt: skip
    return out


def _linear_rows_fake(flat: Tensor, weight: Tensor, scale: Tensor | None, bias: Tensor | None) -> Tensor:
    return flat.new_empty(flat.shape[0], weight.shape[0], dtype=torch.float32)


# float32 rows [M, K] (unit stride along K) times a contiguous stored weight [N, K], as a torch op
linear_rows = define_op(
    "linear_rows(Tensor flat, Tensor weight, Tensor? scale, Tensor? bias) -> Tensor",
    lambda flat, weight, scale, bias: _linear_rows(flat, weight, scale, bias, load()),
    _linear_rows_fake,
)
