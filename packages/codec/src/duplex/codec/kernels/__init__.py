"""Kernels for the hot ops, one registry, and the selection of one implementation per op.

Each op has a torch implementation (the reference set) and may have a ``native`` one (C compiled
for this CPU on first use) and a ``triton`` one (CUDA), registered in
:data:`duplex.codec.registry.KERNELS` as ``"<op>/<backend>"``; plugins add more through the
``duplex.kernels`` entry-point group. :func:`select_kernels` picks one per op from the numerics
policy, the device and the dtype (see :mod:`duplex.codec.kernels.dispatch`). Importing this
package never imports triton and compiles nothing.
"""

from __future__ import annotations

from duplex.codec.kernels import attention_torch, rvq_torch, torch_ops
from duplex.codec.kernels.attention import attention
from duplex.codec.kernels.dispatch import (
    BACKEND_ENV,
    NUMERICS,
    OPS,
    KernelBackendError,
    Kernels,
    KernelUnsupportedError,
    LazyKernel,
    Numerics,
    NumericsPolicy,
    UsesKernels,
    check_numerics,
    enable_triton_interpreter,
    model_kernels,
    select_kernels,
    use_kernels,
)
from duplex.codec.kernels.linear import linear
from duplex.codec.kernels.rvq import rvq_decode, rvq_encode
from duplex.codec.registry import KERNELS

_TORCH_IMPLEMENTATIONS = {
    "linear": torch_ops.linear,
    "conv1d": torch_ops.conv1d,
    "conv_transpose1d": torch_ops.conv_transpose1d,
    "elu": torch_ops.elu,
    "rvq_encode": rvq_torch.rvq_encode,
    "rvq_decode": rvq_torch.rvq_decode,
    "attention": attention_torch.attention,
}
_ACCELERATED = {  # (op, backend) -> module, imported on first call
    ("linear", "native"): "duplex.codec.kernels.linear_native",
    ("conv1d", "native"): "duplex.codec.kernels.conv_native",
    ("conv_transpose1d", "native"): "duplex.codec.kernels.conv_native",
    ("elu", "native"): "duplex.codec.kernels.elu_native",
    ("rvq_encode", "native"): "duplex.codec.kernels.rvq_native",
    ("transformer_step", "native"): "duplex.codec.kernels.transformer_native",
    ("linear", "triton"): "duplex.codec.kernels.linear_triton",
    ("rvq_encode", "triton"): "duplex.codec.kernels.rvq_triton",
    ("rvq_decode", "triton"): "duplex.codec.kernels.rvq_triton",
    ("attention", "triton"): "duplex.codec.kernels.attention_triton",
}
for _op, _function in _TORCH_IMPLEMENTATIONS.items():
    if f"{_op}/torch" not in KERNELS.names():
        KERNELS.register(f"{_op}/torch", _function)
for (_op, _backend), _module in _ACCELERATED.items():
    if f"{_op}/{_backend}" not in KERNELS.names():
        KERNELS.register(f"{_op}/{_backend}", LazyKernel(_module, _op))

__all__ = [
    "BACKEND_ENV",
    "KERNELS",
    "NUMERICS",
    "OPS",
    "KernelBackendError",
    "KernelUnsupportedError",
    "Kernels",
    "Numerics",
    "NumericsPolicy",
    "UsesKernels",
    "attention",
    "check_numerics",
    "enable_triton_interpreter",
    "linear",
    "model_kernels",
    "rvq_decode",
    "rvq_encode",
    "select_kernels",
    "use_kernels",
]
