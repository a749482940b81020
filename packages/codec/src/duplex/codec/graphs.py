"""Replaying a streaming step from a CUDA graph.

A streaming step of duplex keeps its state in tensors updated in place and reads no tensor value
back to the host (docs/nn-api.md), so once its Python decisions stop changing (the steady state)
it launches the same kernels on the same memory at every call. :class:`StepGraph` runs the first
``warmup`` calls as they come, records the next one (recording launches nothing; the graph is then
replayed once for that call), and from then on copies each call's input tensors into the buffers
the graph reads and replays it: one launch per step instead of hundreds of small ones. Per-slot
resets, execution masks and seeds stay live: they are written into the state tensors in place.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

Replay = Callable[[], Any]
Recorder = Callable[[Callable[..., Any], list[Tensor]], Replay]


def record_cuda_graph(step: Callable[..., Any], inputs: list[Tensor]) -> Replay:
    """Record ``step(*inputs)`` in a CUDA graph; the replay returns the graph's output tensors."""
    if not all(x.is_cuda for x in inputs):
        raise RuntimeError("a CUDA graph records CUDA tensors only; run the step eagerly on this device")
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = step(*inputs)

    def replay() -> Any:
        graph.replay()
        return outputs

    return replay


class StepGraph:
    """``step(*tensors)`` recorded once after ``warmup`` eager calls, then replayed.

    Every call must bring tensors of the recorded shapes and dtypes (a clear error otherwise);
    outputs are returned as copies, so a caller may keep them past the next call. ``recorder``
    (default :func:`record_cuda_graph`) records the step and returns its replay.
    """

    def __init__(self, step: Callable[..., Any], warmup: int = 2, recorder: Recorder | None = None) -> None:
        if warmup < 1:
            raise ValueError(f"warmup must be >= 1 (lazy initialisations run eagerly first), got {warmup}")
        self.step = step
        self.warmup = warmup
        self._record = recorder if recorder is not None else record_cuda_graph
        self._replay: Replay | None = None
        self._inputs: list[Tensor] = []
        self.eager_calls = 0

    @property
    def recorded(self) -> bool:
        return self._replay is not None

    def __call__(self, *inputs: Tensor) -> Any:
        if self._replay is None:
            if self.eager_calls < self.warmup:
                self.eager_calls += 1
                return self.step(*inputs)
            self._inputs = [x.clone() for x in inputs]  # the buffers the graph reads
            self._replay = self._record(self.step, self._inputs)
        else:
            if len(inputs) != len(self._inputs):
                raise ValueError(f"the recorded step takes {len(self._inputs)} tensors, got {len(inputs)}")
            for index, (buffer, x) in enumerate(zip(self._inputs, inputs, strict=True)):
                if x.shape != buffer.shape or x.dtype != buffer.dtype:
                    raise ValueError(
                        f"input {index} is {x.dtype} {list(x.shape)}, but the step was recorded with "
                        f"{buffer.dtype} {list(buffer.shape)}: a recorded step keeps its shapes"
                    )
                buffer.copy_(x)
        return _copied(self._replay())


def _copied(outputs: Any) -> Any:
    """The recorded outputs (tensors, possibly in tuples or lists) as fresh copies."""
    if isinstance(outputs, Tensor):
        return outputs.clone()
    if isinstance(outputs, tuple | list):
        return type(outputs)(_copied(item) for item in outputs)
    return outputs
