"""Choosing an implementation for each kernel op: Triton on CUDA when it imports, torch elsewhere.

Every op (``rvq_encode``, ``rvq_decode``, ``attention``, ``rope_attention``) has one
implementation per backend, registered in :data:`duplex.codec.registry.KERNELS` under
``"<op>/<backend>"``. The backend is picked per call:

* ``DUPLEX_KERNELS=auto`` (the default): ``triton`` for CUDA tensors when the ``triton`` package
  is installed, ``torch`` otherwise.
* ``DUPLEX_KERNELS=torch`` forces the torch path everywhere.
* ``DUPLEX_KERNELS=triton`` forces the Triton kernels. On CPU this only works with
  ``TRITON_INTERPRET=1`` (Triton's interpreter, which is how the tests run them).
* Any other value names a backend registered by a plugin, e.g. ``DUPLEX_KERNELS=my-cuda`` with
  entry points ``rvq_encode/my-cuda = ...`` in the ``duplex.kernels`` group.

:func:`use_backend` overrides the environment variable in code, for a ``with`` block.

The Triton kernels are forward only: a call whose result needs a gradient (training) always
takes the torch path (SDPA for attention), whatever the setting. Triton itself is imported
lazily, the first time a Triton kernel actually runs, so importing the codec never imports it.
"""

from __future__ import annotations

import contextlib
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
AUTO = "auto"
OPS = ("rvq_encode", "rvq_decode", "attention", "rope_attention")

_override: str | None = None
_triton_broken = False


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
    value = _override if _override is not None else os.environ.get(BACKEND_ENV, AUTO)
    return value.strip().lower() or AUTO


@contextlib.contextmanager
def use_backend(backend: str) -> Iterator[None]:
    """Force ``backend`` ("auto", "torch", "triton" or a plugin's name) inside a ``with`` block."""
    global _override
    previous = _override
    _override = backend
    try:
        yield
    finally:
        _override = previous


@functools.cache
def _triton_found() -> bool:
    return importlib.util.find_spec("triton") is not None


def triton_installed() -> bool:
    """Whether ``triton`` can be found (and has not failed to import), checked without importing it."""
    return not _triton_broken and _triton_found()


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


def _triton_can_run_on(device: torch.device) -> bool:
    if device.type == "cuda":
        return triton_installed()
    return device.type == "cpu" and triton_interpreting() and triton_installed()


def choose_backend(op: str, device: torch.device | str, needs_grad: bool = False) -> str:
    """The backend a call of ``op`` on ``device`` takes; ``needs_grad`` forces torch."""
    if op not in OPS:
        raise ValueError(f"unknown kernel op {op!r}; known ops: {', '.join(OPS)}")
    device = torch.device(device)
    requested = requested_backend()
    if requested == AUTO:
        if device.type == "cuda" and not needs_grad and triton_installed():
            return TRITON
        return TORCH
    if requested == TORCH or needs_grad:
        return TORCH
    if requested == TRITON:
        if not _triton_can_run_on(device):
            hint = (
                "set TRITON_INTERPRET=1 to run the Triton kernels on CPU through Triton's interpreter"
                if device.type == "cpu"
                else "install triton (pip install 'duplex-codec[triton]')"
            )
            raise KernelBackendError(
                f"{BACKEND_ENV}=triton cannot run {op!r} on a {device.type} tensor: {hint}, "
                f"or use {BACKEND_ENV}=torch|auto"
            )
        return TRITON
    if kernel_name(op, requested) not in KERNELS:
        backends = sorted({name.split("/", 1)[1] for name in KERNELS.names() if "/" in name})
        raise KernelBackendError(
            f"{BACKEND_ENV}={requested!r} names no implementation of {op!r}; "
            f"use auto or one of: {', '.join(backends)}"
        )
    return requested


def active_backend(op: str, device: torch.device | str | None = None) -> str:
    """The backend ``op`` uses on ``device`` (default: CUDA when present, else CPU), for reports."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return choose_backend(op, device)


def run(op: str, device: torch.device, needs_grad: bool, *args: Any, **kwargs: Any) -> Any:
    """Call the chosen implementation of ``op``; in auto mode, fall back to torch when it cannot."""
    global _triton_broken
    backend = choose_backend(op, device, needs_grad)
    implementation = KERNELS.get(kernel_name(op, backend))
    if backend == TORCH or requested_backend() != AUTO:
        return implementation(*args, **kwargs)
    try:
        return implementation(*args, **kwargs)
    except KernelUnsupportedError:
        pass
    except ImportError as error:  # triton is present but does not import: warn once, stop trying.
        _triton_broken = True
        warnings.warn(f"triton does not import ({error}); duplex kernels use torch", stacklevel=3)
    return KERNELS.get(kernel_name(op, TORCH))(*args, **kwargs)
