"""One streaming step of all a transformer's layers in C (``transformer_native.c``), float32 CPU.

:class:`LayerSpec` is the C struct ``duplex_layer``: weights, KV ring cache and shapes of one
layer, as raw pointers into tensors the caller keeps alive. :func:`step` runs the layers over
``x [B, T, D]`` in place. The matmuls are those of ``linear_native.c``, linked into the same
library. :mod:`duplex.codec.nn.native_step` packs a ``StreamingTransformer`` into specs.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import torch
from duplex.codec.kernels import native_build
from torch import Tensor

SOURCES = (Path(__file__).with_name("transformer_native.c"), Path(__file__).with_name("linear_native.c"))

NORM_LAYER, NORM_RMS = 0, 1
FEEDFORWARD_GELU, FEEDFORWARD_SILU_GATED = 0, 1

_address = ctypes.c_void_p


class LayerSpec(ctypes.Structure):
    _fields_ = [
        ("dim", ctypes.c_int64),
        ("heads", ctypes.c_int64),
        ("kv_heads", ctypes.c_int64),
        ("head_dim", ctypes.c_int64),
        ("hidden", ctypes.c_int64),
        ("context", ctypes.c_int64),
        ("norm", ctypes.c_int64),
        ("feedforward", ctypes.c_int64),
        ("norm_eps", ctypes.c_float),
        ("_pad", ctypes.c_float),
        ("norm1_weight", _address),
        ("norm1_bias", _address),
        ("norm2_weight", _address),
        ("norm2_bias", _address),
        ("in_proj", _address),
        ("out_proj", _address),
        ("ff_in", _address),
        ("ff_out", _address),
        ("scale1", _address),
        ("scale2", _address),
        ("keys", _address),
        ("values", _address),
        ("slot_positions", _address),
        ("offsets", _address),
        ("capacity", ctypes.c_int64),
    ]


@functools.cache
def load() -> ctypes._CFuncPtr:
    signature = [
        ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
        ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int,
    ]  # fmt: skip
    return native_build.function(SOURCES, "duplex_transformer_step", signature, restype=ctypes.c_int)


def pointer(tensor: Tensor | None) -> int | None:
    """The address of a contiguous float32/int64 CPU tensor (None stays None)."""
    if tensor is None:
        return None
    if tensor.device.type != "cpu" or not tensor.is_contiguous():
        raise ValueError("the native transformer step takes contiguous CPU tensors")
    return tensor.data_ptr()


def step(
    specs: ctypes.Array,
    x: Tensor,
    positions: Tensor,
    rope_cos: Tensor | None,
    rope_sin: Tensor | None,
    used: int,
) -> None:
    """Run the layers of ``specs`` over ``x [B, T, D]`` (contiguous float32, updated in place).

    ``positions [B, T]`` int64 are the new steps' absolute positions, ``rope_cos``/``rope_sin``
    ``[B, T, Dh / 2]`` the rotary tables at those positions (None: no rotary embedding), ``used``
    the cache slots to scan once this step is written.
    """
    batch, length, _ = x.shape
    status = load()(
        ctypes.addressof(specs), len(specs), x.data_ptr(), batch, length, positions.data_ptr(),
        pointer(rope_cos), pointer(rope_sin), used, torch.get_num_threads(),
    )  # fmt: skip
    if status != 0:
        raise MemoryError("the native transformer step could not allocate its scratch memory")
