"""Choosing an implementation for each kernel op: Triton on CUDA, compiled C on the CPU, torch elsewhere.

Every op (``rvq_encode``, ``rvq_decode``, ``attention``, ``rope_attention``, ``linear``) has a
torch implementation and some have others, registered in :data:`duplex.codec.registry.KERNELS`
under ``"<op>/<backend>"``. The backend is picked per call:

* ``DUPLEX_KERNELS=auto`` (the default): ``triton`` for CUDA tensors when the op has a Triton
  kernel and the ``triton`` package is installed; ``native`` (C compiled for this CPU on first
  use, see :mod:`duplex.codec.kernels.native_build`) for CPU tensors when the op has one and a C
  compiler is found; ``torch`` otherwise. A kernel that declines an input (a shape or dtype it
  does not handle) or cannot be built falls back to torch.
* ``DUPLEX_KERNELS=torch`` forces the torch path everywhere.
* ``DUPLEX_KERNELS=triton`` forces the Triton kernels. On CPU this only works with
  ``TRITON_INTERPRET=1`` (Triton's interpreter, which is how the tests run them).
* ``DUPLEX_KERNELS=native`` forces the C kernels (CPU tensors only).
* Any other value names a backend registered by a plugin, e.g. ``DUPLEX_KERNELS=my-cuda`` with
  entry points ``rvq_encode/my-cuda = ...`` in the ``duplex.kernels`` group.

A forced backend runs every op it implements and raises when it cannot take an input; the ops
it does not implement run on torch. :func:`use_backend` overrides the environment variable in
code, for a ``with`` block of the calling thread (or asyncio task).

The Triton and C kernels are forward only: a call whose result needs a gradient (training) always
takes the torch path, whatever the setting. Triton itself is imported lazily, the first time a
Triton kernel actually runs, so importing the codec never imports it.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib
import importlib.util
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from duplex.codec.registry import KERNELS

BACKEND_ENV = "DUPLEX_KERNELS"
TORCH = "torch"
TRITON = "triton"
NATIVE = "native"
AUTO = "auto"
OPS = ("rvq_encode", "rvq_decode", "attention", "rope_attention", "linear")

# Per thread and per asyncio task: one thread's override never changes another's kernels.
_override: contextvars.ContextVar[str | None] = contextvars.ContextVar("duplex_kernel_override", default=None)
_reference_matmuls: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "duplex_reference_matmuls", default=False
)
_broken: set[str] = set()  # backends that failed to import or build: auto mode stops trying them


class KernelBackendError(RuntimeError):
    """The requested kernel backend cannot run here (or does not exist)."""


class KernelUnsupportedError(ValueError):
    """A kernel cannot handle these inputs (e.g. a head dimension too large for its tiles).

    In ``auto`` mode the dispatcher then falls back to the torch path; when the backend was
    forced, the error reaches the caller.
    """


class LazyKernel:
    """A registered implementation whose module is imported on first call (keeps triton unloaded)."""

    def __init__(self, module: str, attribute: str) -> None:
        self.module = module
        self.attribute = attribute
        self._function: Callable[..., Any] | None = None

    def load(self) -> Callable[..., Any]:
        if self._function is None:
            self._function = getattr(importlib.import_module(self.module), self.attribute)
        return self._function

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.load()(*args, **kwargs)

    def __repr__(self) -> str:
        return f"LazyKernel({self.module}:{self.attribute})"


def kernel_name(op: str, backend: str) -> str:
    return f"{op}/{backend}"


def requested_backend() -> str:
    """The backend asked for: the :func:`use_backend` override, else ``$DUPLEX_KERNELS``, else auto."""
    override = _override.get()
    return _normalized(override if override is not None else os.environ.get(BACKEND_ENV, AUTO))


@functools.lru_cache(maxsize=64)
def _normalized(value: str) -> str:
    return value.strip().lower() or AUTO


@contextlib.contextmanager
def use_backend(backend: str) -> Iterator[None]:
    """Force ``backend`` ("auto", "torch", "triton", "native" or a plugin's name) inside a ``with`` block."""
    token = _override.set(backend)
    try:
        yield
    finally:
        _override.reset(token)


@contextlib.contextmanager
def reference_matmuls() -> Iterator[None]:
    """Inside this block auto mode computes CPU matmuls and RVQ distances with torch's arithmetic,
    as the reference runs them: torch's ops, or C kernels checked to give their very bits
    (:func:`blas_order_wanted`).

    The native CPU kernels sum in another order (differences of about 1e-7, relative); where a
    result feeds an argmin, such as Mimi's codes, that can flip a near-tie. Forced backends are
    not affected. Per thread (or asyncio task), like :func:`use_backend`.
    """
    token = _reference_matmuls.set(True)
    try:
        yield
    finally:
        _reference_matmuls.reset(token)


def native_wanted(device: torch.device, needs_grad: bool) -> bool:
    """Whether a module may run a C kernel of its own (one that is not a dispatched op) here:
    a CPU call without gradients, in auto mode outside :func:`reference_matmuls` or with
    ``DUPLEX_KERNELS=native``."""
    if needs_grad or device.type != "cpu":
        return False
    requested = requested_backend()
    if requested == AUTO:
        return not _reference_matmuls.get() and native_usable()
    return requested == NATIVE


def blas_order_wanted(device: torch.device, needs_grad: bool) -> bool:
    """Inside :func:`reference_matmuls` in auto mode, whether a CPU product may take a C kernel that
    sums in BLAS's own order (same results, bit for bit; see ``linear_blas_order``)."""
    return (
        _reference_matmuls.get()
        and not needs_grad
        and device.type == "cpu"
        and requested_backend() == AUTO
        and native_usable()
    )


@functools.cache
def _triton_found() -> bool:
    return importlib.util.find_spec("triton") is not None


def triton_installed() -> bool:
    """Whether ``triton`` can be found (and has not failed to import), checked without importing it."""
    return TRITON not in _broken and _triton_found()


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
def _compiler_found() -> bool:
    from duplex.codec.kernels.native_build import NativeBuildError, find_compiler

    try:
        find_compiler()
    except NativeBuildError:
        return False
    return True


def native_usable() -> bool:
    """Whether the C kernels can be used here: a compiler is found and no build has failed."""
    return NATIVE not in _broken and _compiler_found()


def _implements(op: str, backend: str) -> bool:
    return kernel_name(op, backend) in KERNELS


def _triton_can_run_on(device: torch.device) -> bool:
    if device.type == "cuda":
        return triton_installed()
    return device.type == "cpu" and triton_interpreting() and triton_installed()


def choose_backend(op: str, device: torch.device | str, needs_grad: bool = False) -> str:
    """The backend a call of ``op`` on ``device`` takes; ``needs_grad`` forces torch."""
    if op not in OPS:
        raise ValueError(f"unknown kernel op {op!r}; known ops: {', '.join(OPS)}")
    if not isinstance(device, torch.device):
        device = torch.device(device)
    requested = requested_backend()
    if requested == AUTO:
        if needs_grad:
            return TORCH
        if device.type == "cuda" and _implements(op, TRITON) and triton_installed():
            return TRITON
        if (
            device.type == "cpu"
            and _implements(op, NATIVE)
            and native_usable()
            and not _reference_matmuls.get()
        ):
            return NATIVE
        return TORCH
    if requested == TORCH or needs_grad:
        return TORCH
    backends = {name.split("/", 1)[1] for name in KERNELS.names() if "/" in name}
    if requested not in backends:
        raise KernelBackendError(
            f"{BACKEND_ENV}={requested!r} names no implementation of {op!r}; "
            f"use auto or one of: {', '.join(sorted(backends))}"
        )
    if not _implements(op, requested):
        return TORCH
    if requested == TRITON and not _triton_can_run_on(device):
        hint = (
            "set TRITON_INTERPRET=1 to run the Triton kernels on CPU through Triton's interpreter"
            if device.type == "cpu"
            else "install triton (pip install 'duplex-codec[triton]')"
        )
        raise KernelBackendError(
            f"{BACKEND_ENV}=triton cannot run {op!r} on a {device.type} tensor: {hint}, "
            f"or use {BACKEND_ENV}=torch|auto"
        )
    if requested == NATIVE and device.type != "cpu":
        raise KernelBackendError(
            f"{BACKEND_ENV}=native runs C kernels on the CPU only, not on {device.type} tensors; "
            f"use {BACKEND_ENV}=torch|auto"
        )
    return requested


def active_backend(op: str, device: torch.device | str | None = None) -> str:
    """The backend ``op`` uses on ``device`` (default: CUDA when present, else CPU), for reports."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return choose_backend(op, device)


def run(op: str, device: torch.device, needs_grad: bool, *args: Any, **kwargs: Any) -> Any:
    """Call the chosen implementation of ``op``; in auto mode, fall back to torch when it cannot."""
    backend = choose_backend(op, device, needs_grad)
    implementation = KERNELS.get(kernel_name(op, backend))
    if backend == TORCH or requested_backend() != AUTO:
        return implementation(*args, **kwargs)
    try:
        return implementation(*args, **kwargs)
    except KernelUnsupportedError:
        pass
    except ImportError as error:
        mark_broken(backend, error)
    return KERNELS.get(kernel_name(op, TORCH))(*args, **kwargs)


def mark_broken(backend: str, error: Exception) -> None:
    """A backend's kernels do not import or build here: warn once, and auto mode stops trying them."""
    _broken.add(backend)
    warnings.warn(f"{backend} kernels unavailable ({error}); duplex kernels use torch", stacklevel=3)
