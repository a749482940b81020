"""The one kernel registry: ``"<op>/<backend>"`` -> a :class:`Kernel` (entry-point group ``duplex.kernels``).

A kernel is a function with its op's signature (:data:`duplex.codec.interfaces.OP_SIGNATURES`,
checked when it registers) and a declaration of where it runs: the device types, the activation
dtypes, and a check of the machine (a C compiler, triton). A plugin registers a plain function (it
then runs anywhere) or a :class:`Kernel`::

    [project.entry-points."duplex.kernels"]
    "linear/blocked" = "my_kernels:linear"        # a Kernel(...) or a function

Registering a kernel makes every cached selection stale: the next model session chooses again
(``duplex.codec.kernels.dispatch``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from duplex.codec.interfaces import OP_SIGNATURES, check_op_signature
from duplex.codec.registry import Registry, add_registry


@dataclass(frozen=True)
class Kernel:
    """One implementation of an op and where it runs.

    ``devices``: device types it runs on (None: any); ``dtypes``: activation dtypes (None: any);
    ``usable(device_type)``: whether this machine can run it there (default: yes).
    A kernel is complete: it accepts every input of its op, running torch's op where its own code
    does not apply (see :func:`duplex.codec.kernels.dispatch.reference_kernel`)."""

    function: Callable[..., Any]
    devices: tuple[str, ...] | None = None
    dtypes: tuple[torch.dtype, ...] | None = None
    usable: Callable[[str], bool] | None = field(default=None, compare=False)

    def supports(self, device_type: str, dtype: torch.dtype) -> bool:
        return (
            (self.devices is None or device_type in self.devices)
            and (self.dtypes is None or dtype in self.dtypes)
            and (self.usable is None or self.usable(device_type))
        )

    def describe(self) -> str:
        devices = "any device" if self.devices is None else "/".join(self.devices)
        dtypes = (
            "any dtype"
            if self.dtypes is None
            else "/".join(str(d).removeprefix("torch.") for d in self.dtypes)
        )
        return f"{devices}, {dtypes}"


class LazyKernel:
    """A function whose module is imported on its first call (keeps triton unloaded until then);
    its signature is checked when it loads."""

    def __init__(self, op: str, module: str, attribute: str | None = None) -> None:
        self.op = op
        self.module = module
        self.attribute = attribute or op
        self._function: Callable[..., Any] | None = None

    def load(self) -> Callable[..., Any]:
        if self._function is None:
            function = getattr(importlib.import_module(self.module), self.attribute)
            check_op_signature(self.op, function, f"{self.module}:{self.attribute}")
            self._function = function
        return self._function

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.load()(*args, **kwargs)

    def __repr__(self) -> str:
        return f"LazyKernel({self.module}:{self.attribute})"


def split_kernel_name(name: str) -> tuple[str, str]:
    """``"linear/native"`` -> ``("linear", "native")``, or a one-line error."""
    op, slash, backend = name.partition("/")
    if not slash or not backend or op not in OP_SIGNATURES:
        raise ValueError(
            f"kernel name {name!r} must be '<op>/<backend>' with op one of: {', '.join(OP_SIGNATURES)}"
        )
    return op, backend


class KernelRegistry(Registry[Kernel]):
    """:class:`~duplex.codec.registry.Registry` of :class:`Kernel`, each checked against its op."""

    def accept(self, name: str, component: Any) -> Kernel:
        op, _ = split_kernel_name(name)
        kernel = component if isinstance(component, Kernel) else Kernel(component)
        if not callable(kernel.function):
            raise TypeError(f"kernel {name!r} is not callable: register a function or a Kernel")
        if not isinstance(kernel.function, LazyKernel):
            check_op_signature(op, kernel.function, name)
        return kernel

    def backends(self) -> set[str]:
        """Every backend some kernel is registered for (entry points included, not loaded)."""
        return {name.split("/", 1)[1] for name in self.names() if "/" in name}


KERNELS: KernelRegistry = add_registry(KernelRegistry("kernel", "duplex.kernels"))  # type: ignore[assignment]
