"""The ``duplex`` torch op library: fast kernels as torch ops (``torch.ops.duplex.<name>``).

An op has a schema, an implementation for its dispatch key and a fake (meta) rule that gives its
output's shape and dtype, so ``torch.compile`` traces through it instead of stopping at a ctypes
call. Ops are defined with the plain ``torch.library.Library`` API: calling them never imports
torch's compiler stack (``torch.library.custom_op`` does, about 4 s on a first call).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

LIBRARY = torch.library.Library("duplex", "FRAGMENT")
_DEFINED: dict[str, Any] = {}


def define_op(
    schema: str,
    implementation: Callable[..., Any],
    fake: Callable[..., Any],
    dispatch_keys: tuple[str, ...] = ("CPU",),
) -> Callable[..., Any]:
    """Define ``duplex::<schema>`` once (``"name(Tensor x, ...) -> Tensor"``); ``fake`` gives the
    output's shape and dtype, contiguous (the op makes its result so).

    Returns the function to call: the op while ``torch.compile`` traces, the implementation itself
    in eager mode (the dispatcher's few microseconds per call add up over a step's hundreds of ops).
    """
    name = schema.split("(", 1)[0]
    if name not in _DEFINED:
        LIBRARY.define(schema)

        def contiguous_result(*args: Any) -> Any:  # the layout every fake rule here promises
            return implementation(*args).contiguous()

        for key in dispatch_keys:
            LIBRARY.impl(name, contiguous_result, key)
        torch.library.register_fake(f"duplex::{name}", fake, lib=LIBRARY)
        op = getattr(torch.ops.duplex, name)

        def call(*args: Any) -> Any:
            return op(*args) if torch.compiler.is_compiling() else implementation(*args)

        call.__name__ = call.__qualname__ = name
        _DEFINED[name] = call
    return _DEFINED[name]
