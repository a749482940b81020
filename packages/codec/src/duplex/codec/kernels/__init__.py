"""Kernels for the hot paths (residual VQ, windowed causal attention, few-row matmuls) with a dispatcher.

Each op runs Triton kernels on CUDA when triton imports, C kernels compiled for this CPU where
the op has one, and torch everywhere else; ``DUPLEX_KERNELS=auto|torch|triton|native`` (or
:func:`use_backend`) forces a path. See :mod:`duplex.codec.kernels.dispatch`. Importing this
package never imports triton and compiles nothing.
"""

from __future__ import annotations

import torch.nn.functional as F
from duplex.codec.kernels import attention_torch, rvq_torch
from duplex.codec.kernels.attention import attention, rope_attention
from duplex.codec.kernels.dispatch import (
    BACKEND_ENV,
    OPS,
    KernelBackendError,
    KernelUnsupportedError,
    LazyKernel,
    active_backend,
    choose_backend,
    enable_triton_interpreter,
    reference_matmuls,
    use_backend,
)
from duplex.codec.kernels.linear import linear
from duplex.codec.kernels.rope import apply_rope
from duplex.codec.kernels.rvq import rvq_decode, rvq_encode
from duplex.codec.registry import KERNELS

_TORCH_IMPLEMENTATIONS = {
    "rvq_encode": rvq_torch.rvq_encode,
    "rvq_decode": rvq_torch.rvq_decode,
    "attention": attention_torch.attention,
    "rope_attention": attention_torch.rope_attention,
    "linear": F.linear,
}
_ACCELERATED = {  # (op, backend) -> module, imported on first call
    ("rvq_encode", "triton"): "duplex.codec.kernels.rvq_triton",
    ("rvq_decode", "triton"): "duplex.codec.kernels.rvq_triton",
    ("rvq_encode", "native"): "duplex.codec.kernels.rvq_native",
    ("attention", "triton"): "duplex.codec.kernels.attention_triton",
    ("rope_attention", "triton"): "duplex.codec.kernels.attention_triton",
    ("linear", "native"): "duplex.codec.kernels.linear_native",
}
for _op, _function in _TORCH_IMPLEMENTATIONS.items():
    if f"{_op}/torch" not in KERNELS.names():
        KERNELS.register(f"{_op}/torch", _function)
for (_op, _backend), _module in _ACCELERATED.items():
    if f"{_op}/{_backend}" not in KERNELS.names():
        KERNELS.register(f"{_op}/{_backend}", LazyKernel(_module, _op))

__all__ = [
    "BACKEND_ENV",
    "OPS",
    "KernelBackendError",
    "KernelUnsupportedError",
    "active_backend",
    "apply_rope",
    "attention",
    "choose_backend",
    "enable_triton_interpreter",
    "linear",
    "reference_matmuls",
    "rope_attention",
    "rvq_decode",
    "rvq_encode",
    "use_backend",
]
