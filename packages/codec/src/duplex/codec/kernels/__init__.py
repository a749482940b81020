"""Kernels for the two hot paths (residual VQ, windowed causal attention) with a dispatcher.

Each op runs Triton kernels on CUDA when triton imports and torch everywhere else;
``DUPLEX_KERNELS=auto|torch|triton`` (or :func:`use_backend`) forces a path. See
:mod:`duplex.codec.kernels.dispatch`. Importing this package never imports triton.
"""

from __future__ import annotations

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
    use_backend,
)
from duplex.codec.kernels.rope import apply_rope
from duplex.codec.kernels.rvq import rvq_decode, rvq_encode
from duplex.codec.registry import KERNELS

_TORCH_IMPLEMENTATIONS = {
    "rvq_encode": rvq_torch.rvq_encode,
    "rvq_decode": rvq_torch.rvq_decode,
    "attention": attention_torch.attention,
    "rope_attention": attention_torch.rope_attention,
}
_TRITON_MODULES = {
    "rvq_encode": "duplex.codec.kernels.rvq_triton",
    "rvq_decode": "duplex.codec.kernels.rvq_triton",
    "attention": "duplex.codec.kernels.attention_triton",
    "rope_attention": "duplex.codec.kernels.attention_triton",
}
for _op in OPS:
    if f"{_op}/torch" not in KERNELS.names():
        KERNELS.register(f"{_op}/torch", _TORCH_IMPLEMENTATIONS[_op])
        KERNELS.register(f"{_op}/triton", LazyKernel(_TRITON_MODULES[_op], _op))

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
    "rope_attention",
    "rvq_decode",
    "rvq_encode",
    "use_backend",
]
