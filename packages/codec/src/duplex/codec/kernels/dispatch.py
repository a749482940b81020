"""Choosing each op's implementation once, from the numerics policy, the device and the dtype.

Every op (:data:`OPS`, signatures in :mod:`duplex.codec.interfaces`) has a torch implementation and
may have faster ones, registered in :data:`duplex.codec.kernels.registry.KERNELS` as
``"<op>/<backend>"`` with the devices and dtypes they support (entry-point group ``duplex.kernels``,
so a plugin can add one). :func:`select_kernels` resolves a :class:`Kernels` set, one
implementation per op:

* ``numerics="reference"``: every op's ``torch`` implementation, the reference's own torch ops
  in its order, so the reference's bits on any machine.
* ``numerics="fast"``: the device's fast backend where the op has one: ``native`` (C compiled for
  this CPU; float32 or bfloat16 activations) on the CPU when a C compiler is found, ``triton`` on
  CUDA when triton is installed, ``torch`` otherwise. ``$DUPLEX_KERNELS`` (or the ``backend``
  argument) names another backend for the fast set, e.g. ``torch``, or a plugin's.

A model selects its set when it starts streaming or at its first batch call (see
``Mimi.numerics`` and ``LMModel.numerics``) and hands it to its modules
(:func:`use_kernels`); nothing is chosen by trying kernels, and nothing is re-decided per call.
A fast implementation is complete: it covers every input of its op, running its C or Triton
code where that code applies (e.g. few rows, no gradient) and the registered torch kernel
(:func:`reference_kernel`) elsewhere. Registering a kernel clears the cached sets.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal, get_args

import torch
from duplex.codec.interfaces import OP_SIGNATURES
from duplex.codec.kernels.registry import KERNELS, Kernel, LazyKernel
from torch import nn

BACKEND_ENV = "DUPLEX_KERNELS"
TORCH = "torch"
TRITON = "triton"
NATIVE = "native"
Numerics = Literal["fast", "reference"]
NUMERICS: tuple[str, ...] = get_args(Numerics)
OPS: tuple[str, ...] = tuple(OP_SIGNATURES)


class KernelBackendError(RuntimeError):
    """The requested kernel backend cannot run here (or does not exist)."""


class KernelUnsupportedError(ValueError):
    """A kernel cannot handle these inputs (e.g. a head dimension too large for its tiles)."""


def kernel_name(op: str, backend: str) -> str:
    return f"{op}/{backend}"


def check_numerics(numerics: str) -> Numerics:
    if numerics not in NUMERICS:
        raise ValueError(f"numerics must be 'fast' or 'reference', got {numerics!r}")
    return numerics  # type: ignore[return-value]


@functools.cache
def _triton_found() -> bool:
    return importlib.util.find_spec("triton") is not None


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").strip() not in ("", "0")


def enable_triton_interpreter() -> None:
    """Run the Triton kernels on CPU through Triton's interpreter (``TRITON_INTERPRET=1``), for tests.

    Triton decides at import time whether its own library functions are interpreted, so this must
    run before anything imports triton (``import torch._dynamo`` does, and lightning with it);
    if triton is already loaded without the interpreter, this raises instead of failing later.
    """
    os.environ["TRITON_INTERPRET"] = "1"
    triton = sys.modules.get("triton")
    if triton is not None and type(triton.language.sum).__name__ != "InterpretedFunction":
        raise KernelBackendError(
            "triton was imported before TRITON_INTERPRET=1 was set, so its kernels cannot run on CPU "
            "in this process; set TRITON_INTERPRET=1 in the environment (or in a conftest.py)"
        )


@functools.cache
def native_usable() -> bool:
    """Whether the C kernels can be built here: a C compiler is found."""
    from duplex.codec.kernels.native_build import NativeBuildError, find_compiler

    try:
        find_compiler()
    except NativeBuildError:
        return False
    return True


def native_runs_on(device_type: str) -> bool:
    """The C kernels' machine check: a CPU, with a C compiler found."""
    return device_type == "cpu" and native_usable()


def triton_runs_on(device_type: str) -> bool:
    """The Triton kernels' machine check: CUDA (or the CPU under the interpreter), triton installed."""
    on_device = device_type == "cuda" or (device_type == "cpu" and triton_interpreting())
    return on_device and _triton_found()


FAST_BACKENDS = {"cuda": TRITON, "cpu": NATIVE}  # what "fast" prefers on each device type


def _kernel(op: str, backend: str) -> Kernel | None:
    name = kernel_name(op, backend)
    return KERNELS.get(name) if name in KERNELS else None


def reference_kernel(op: str) -> Callable[..., torch.Tensor]:
    """The registered torch implementation of ``op``: what a fast kernel runs where its own code
    does not apply (few rows, no gradient, a dtype it lacks)."""
    function = _REFERENCE.get(op)
    if function is None:
        function = _REFERENCE[op] = KERNELS.get(kernel_name(op, TORCH)).function
    return function


_REFERENCE: dict[str, Callable[..., torch.Tensor]] = {}  # a plain dict: torch.compile reads it


_DECLINED: set[tuple[str, str]] = set()


def warn_declined(op: str, backend: str, reason: str) -> None:
    """A fast path that cannot run a model's layers says so once per reason (its op then runs the
    layers one by one, with the same results)."""
    if (op, reason) not in _DECLINED:
        _DECLINED.add((op, reason))
        warnings.warn(
            f"the {backend} {op} kernel does not cover {reason}; those layers run op by op (slower)",
            RuntimeWarning,
            stacklevel=3,
        )


@dataclass(frozen=True)
class Kernels:
    """One implementation per op, chosen once (see the module docstring)."""

    numerics: str
    device_type: str
    dtype: torch.dtype
    backends: dict[str, str] = field(compare=False)
    linear: Callable[..., torch.Tensor] = field(compare=False)
    conv1d: Callable[..., torch.Tensor] = field(compare=False)
    conv_transpose1d: Callable[..., torch.Tensor] = field(compare=False)
    elu: Callable[..., torch.Tensor] = field(compare=False)
    rvq_encode: Callable[..., torch.Tensor] = field(compare=False)
    rvq_decode: Callable[..., torch.Tensor] = field(compare=False)
    attention: Callable[..., torch.Tensor] = field(compare=False)
    # None: the layers run one after another in their modules
    transformer_step: Callable[..., torch.Tensor] | None = field(compare=False)

    def describe(self) -> str:
        return ", ".join(f"{op}={backend}" for op, backend in self.backends.items())

    def load(self) -> Kernels:
        """Import every implementation's module now (at a model session's start), so a step never
        imports, and torch.compile traces plain calls."""
        for op in OPS:
            function = getattr(self, op)
            if isinstance(function, LazyKernel):
                function.load()
        return self


def requested_backend() -> str | None:
    """``$DUPLEX_KERNELS``, normalised (None for unset or ``auto``)."""
    value = os.environ.get(BACKEND_ENV, "").strip().lower()
    return None if value in ("", "auto") else value


def select_kernels(
    numerics: str,
    device: torch.device | str,
    dtype: torch.dtype = torch.float32,
    backend: str | None = None,
) -> Kernels:
    """The :class:`Kernels` of ``numerics`` for tensors of ``dtype`` on ``device``.

    ``backend`` (default ``$DUPLEX_KERNELS``) forces a backend for the fast set: its
    implementations where it has them, torch's elsewhere; it raises when the backend cannot run
    on this device. It is ignored by the reference set.
    """
    device_type = torch.device(device).type
    return _select(check_numerics(numerics), device_type, dtype, backend or requested_backend())


@functools.cache
def _select(numerics: str, device_type: str, dtype: torch.dtype, forced: str | None) -> Kernels:
    if numerics == "reference":
        preferred = TORCH
    elif forced is None:
        preferred = FAST_BACKENDS.get(device_type, TORCH)
    else:
        preferred = forced
        known = KERNELS.backends()
        if forced not in known:
            raise KernelBackendError(
                f"{BACKEND_ENV}={forced!r} names no kernel backend; use auto or one of: "
                f"{', '.join(sorted(known))}"
            )
        declared = [kernel for op in OPS if (kernel := _kernel(op, forced)) is not None]
        if not any(kernel.supports(device_type, dtype) for kernel in declared):
            raise KernelBackendError(
                f"the {forced!r} kernels cannot run {dtype} tensors on {device_type} here; "
                f"use {BACKEND_ENV}=auto or torch"
            )
    backends, implementations = {}, {}
    for op in OPS:
        kernel = _kernel(op, preferred)
        backend = preferred
        if kernel is None or not kernel.supports(device_type, dtype):
            kernel, backend = _kernel(op, TORCH), TORCH
        backends[op] = backend
        implementations[op] = None if kernel is None else kernel.function
    return Kernels(numerics, device_type, dtype, backends, **implementations)


def _forget_selections() -> None:
    _select.cache_clear()
    _REFERENCE.clear()


KERNELS.on_change(_forget_selections)


class UsesKernels:
    """Mixin of the modules that call ops: they read them from ``self.kernels``, which their model
    sets once (:func:`use_kernels`); alone, a module runs the reference (torch) set."""

    _kernels: Kernels | None = None

    @property
    def kernels(self) -> Kernels:
        return self._kernels if self._kernels is not None else select_kernels("reference", "cpu")

    @kernels.setter
    def kernels(self, value: Kernels) -> None:
        self._kernels = value


def kernel_users(root: nn.Module) -> Iterator[UsesKernels]:
    return (module for module in root.modules() if isinstance(module, UsesKernels))


def use_kernels(root: nn.Module, kernels: Kernels) -> None:
    """Hand ``kernels`` to every module under ``root`` that calls ops."""
    for module in kernel_users(root):
        module.kernels = kernels


def model_kernels(model: nn.Module, numerics: str) -> Kernels:
    """The set of ``numerics`` for ``model``'s parameters (device and dtype of the first one)."""
    parameter = next(model.parameters(), None)
    if parameter is None:
        return select_kernels(numerics, "cpu")
    return select_kernels(numerics, parameter.device, parameter.dtype)


class NumericsPolicy:
    """Mixin of the models that own a numerics policy (``Mimi``, ``LMModel``): ``numerics`` is
    readable, settable outside streaming, and turned into a :class:`Kernels` set for the model's
    device and dtype by :meth:`select_kernels`, which the model calls when streaming starts and
    at its batch calls (a lookup once chosen: it chooses again only after a move or a change)."""

    _numerics: Numerics = "fast"
    _selected_kernels: Kernels | None = None

    @property
    def numerics(self) -> Numerics:
        """``"fast"`` or ``"reference"`` (see the model's docstring)."""
        return self._numerics

    @numerics.setter
    def numerics(self, value: Numerics) -> None:
        if getattr(self, "is_streaming", False):
            raise RuntimeError("cannot change numerics while streaming; leave the streaming block first")
        self._numerics = check_numerics(value)
        self._selected_kernels = None

    def select_kernels(self) -> Kernels:
        """The set for the model's parameters now, handed to its modules when it changes."""
        kernels = model_kernels(self, self._numerics)  # type: ignore[arg-type]
        if kernels is not self._selected_kernels:
            use_kernels(self, kernels.load())  # type: ignore[arg-type]
            self._selected_kernels = kernels
        return kernels
