"""Kernels for the hot ops, one registry, and the selection of one implementation per op.

Each op has a torch implementation (the reference set) and may have a ``native`` one (C compiled
for this CPU on first use) and a ``triton`` one (CUDA), registered in
:data:`duplex.codec.registry.KERNELS` as ``"<op>/<backend>"``; plugins add more through the
``duplex.kernels`` entry-point group. :func:`select_kernels` picks one per op from the numerics
policy, the device and the dtype (see :mod:`duplex.codec.kernels.dispatch`). Importing this
package never imports triton and compiles nothing.
"""

from __future__ import annotations

import torch
from duplex.codec.kernels import attention_torch, rvq_torch, torch_ops
from duplex.codec.kernels.attention import attention
from duplex.codec.kernels.dispatch import (
    BACKEND_ENV,
    NUMERICS,
    OPS,
    KernelBackendError,
    Kernels,
    KernelUnsupportedError,
    Numerics,
    NumericsPolicy,
    UsesKernels,
    check_numerics,
    enable_triton_interpreter,
    model_kernels,
    native_runs_on,
    reference_kernel,
    select_kernels,
    triton_runs_on,
    use_kernels,
)
from duplex.codec.kernels.linear import linear
from duplex.codec.kernels.registry import KERNELS, Kernel, KernelRegistry, LazyKernel
from duplex.codec.kernels.rvq import rvq_decode, rvq_encode

_TORCH_IMPLEMENTATIONS = {
    "linear": torch_ops.linear,
    "conv1d": torch_ops.conv1d,
    "conv_transpose1d": torch_ops.conv_transpose1d,
    "elu": torch_ops.elu,
    "rvq_encode": rvq_torch.rvq_encode,
    "rvq_decode": rvq_torch.rvq_decode,
    "attention": attention_torch.attention,
}
_NATIVE = {  # op -> module, imported on first call; C for float32 (and bf16 rows widened) CPU tensors
    "linear": "duplex.codec.kernels.linear_native",
    "conv1d": "duplex.codec.kernels.conv_native",
    "conv_transpose1d": "duplex.codec.kernels.conv_native",
    "elu": "duplex.codec.kernels.elu_native",
    "rvq_encode": "duplex.codec.kernels.rvq_native",
    "transformer_step": "duplex.codec.kernels.transformer_native",
}
_TRITON = {  # op -> module, imported on first call
    "linear": "duplex.codec.kernels.linear_triton",
    "rvq_encode": "duplex.codec.kernels.rvq_triton",
    "rvq_decode": "duplex.codec.kernels.rvq_triton",
    "attention": "duplex.codec.kernels.attention_triton",
}
_NATIVE_DTYPES = (torch.float32, torch.bfloat16)


def _register(name: str, kernel: Kernel) -> None:
    if name not in KERNELS.names():  # this package imported a second time (importlib test mode)
        KERNELS.register(name, kernel)


for _op, _function in _TORCH_IMPLEMENTATIONS.items():
    _register(f"{_op}/torch", Kernel(_function))
for _op, _module in _NATIVE.items():
    _register(f"{_op}/native", Kernel(LazyKernel(_op, _module), ("cpu",), _NATIVE_DTYPES, native_runs_on))
for _op, _module in _TRITON.items():  # the CPU only under Triton's interpreter (tests)
    _register(f"{_op}/triton", Kernel(LazyKernel(_op, _module), ("cuda", "cpu"), None, triton_runs_on))

__all__ = [
    "BACKEND_ENV",
    "KERNELS",
    "NUMERICS",
    "OPS",
    "KernelBackendError",
    "Kernel",
    "KernelRegistry",
    "KernelUnsupportedError",
    "Kernels",
    "LazyKernel",
    "Numerics",
    "NumericsPolicy",
    "UsesKernels",
    "attention",
    "check_numerics",
    "enable_triton_interpreter",
    "linear",
    "model_kernels",
    "reference_kernel",
    "rvq_decode",
    "rvq_encode",
    "select_kernels",
    "use_kernels",
]
