"""The streaming contract shared by every streaming module of duplex.

A streaming module keeps explicit, typed state (a dataclass subclassing :class:`StreamingState`)
while inside its context::

    with mimi.streaming(batch_size=2):
        codes = mimi.encode(chunk)      # successive chunks, outputs independent of chunking

Entering ``streaming`` on a parent creates a fresh state for every streaming descendant (except
those marked ``streaming_detached``, which their owner drives itself); leaving it drops them all.
``reset_streaming(slots)`` restarts chosen batch items (all by default) while the others go on,
which is what lets one batched engine serve independent conversations.
``set_exec_mask(mask)`` freezes the state of batch items whose mask is false during a call; the
whole tree shares one mask tensor, updated in place (``streaming_state.exec_mask``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Generic, Self, TypeVar

import torch
from torch import nn


class AllTrue:
    """``bool(mask.all())``, recomputed only when the mask tensor or its contents change (a step
    checks it on every call; it rarely changes). The tensor is referenced so that its identity
    cannot be reused."""

    def __init__(self) -> None:
        self._seen: tuple[torch.Tensor, int, bool] | None = None

    def __call__(self, mask: torch.Tensor) -> bool:
        seen = self._seen
        if seen is None or seen[0] is not mask or seen[1] != mask._version:
            seen = self._seen = (mask, mask._version, bool(mask.all()))
        return seen[2]


@dataclass
class StreamingState:
    """Per-module streaming state. Subclasses add tensors whose first dim is the batch."""

    batch_size: int
    device: torch.device
    exec_mask: torch.Tensor = field(init=False)
    _all_true: AllTrue = field(init=False, repr=False, default_factory=AllTrue)

    def __post_init__(self) -> None:
        self.exec_mask = torch.ones(self.batch_size, dtype=torch.bool, device=self.device)

    def all_active(self) -> bool:
        """Whether every batch item executes (``exec_mask`` all true)."""
        return self._all_true(self.exec_mask)

    def reset(self, slots: torch.Tensor) -> None:
        """Restart the batch items where ``slots`` (bool ``[B]``) is true. Override to add fields."""


StateT = TypeVar("StateT", bound=StreamingState)


def select_slots(slots: torch.Tensor | None, batch_size: int, device: torch.device) -> torch.Tensor:
    """Normalise a slot selection (None = all, bool mask, or index list) to a bool mask ``[B]``."""
    if slots is None:
        return torch.ones(batch_size, dtype=torch.bool, device=device)
    slots = torch.as_tensor(slots, device=device)
    if slots.dtype != torch.bool:
        mask = torch.zeros(batch_size, dtype=torch.bool, device=device)
        mask[slots.long()] = True
        return mask
    if slots.shape != (batch_size,):
        raise ValueError(f"slot mask must have shape [{batch_size}], got {list(slots.shape)}")
    return slots


class StreamingModule(nn.Module, Generic[StateT]):
    """An ``nn.Module`` that can run over successive chunks with explicit state."""

    streaming_detached: bool = False

    def __init__(self) -> None:
        super().__init__()
        self._streaming_state: StateT | None = None
        self._streaming_members: list[StreamingModule] | None = None  # cached while streaming

    # -- to implement -------------------------------------------------------------------------
    def _init_streaming_state(self, batch_size: int) -> StateT:
        raise NotImplementedError

    # -- lifecycle ------------------------------------------------------------------------------
    @property
    def is_streaming(self) -> bool:
        return self._streaming_state is not None

    @property
    def streaming_state(self) -> StateT:
        if self._streaming_state is None:
            raise RuntimeError(
                f"{type(self).__name__} is not streaming; use `with module.streaming(batch_size):`"
            )
        return self._streaming_state

    def _streaming_modules(self) -> Iterator[StreamingModule]:
        """This module and its streaming descendants, skipping detached subtrees."""

        def visit(module: nn.Module, is_root: bool) -> Iterator[StreamingModule]:
            if isinstance(module, StreamingModule):
                if module.streaming_detached and not is_root:
                    return
                yield module
            for child in module.children():
                yield from visit(child, False)

        yield from visit(self, True)

    def _start_streaming(self, batch_size: int) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        modules = list(self._streaming_modules())
        if any(m.is_streaming for m in modules):
            raise RuntimeError(f"{type(self).__name__} is already streaming")
        for module in modules:
            module._streaming_state = module._init_streaming_state(batch_size)
        shared = modules[0]._streaming_state.exec_mask  # one mask for the whole tree, edited in place
        for module in modules[1:]:
            module._streaming_state.exec_mask = shared

    def _stop_streaming(self) -> None:
        for module in self._members():
            module._streaming_state = None
            module._streaming_members = None

    def _members(self) -> list[StreamingModule]:
        """:meth:`_streaming_modules` as a list, walked once per streaming session."""
        if self._streaming_members is None:
            self._streaming_members = list(self._streaming_modules())
        return self._streaming_members

    @contextmanager
    def streaming(self, batch_size: int = 1) -> Iterator[Self]:
        self._start_streaming(batch_size)
        try:
            yield self
        finally:
            self._stop_streaming()

    def reset_streaming(self, slots: torch.Tensor | None = None) -> None:
        """Restart the chosen batch items (all by default); the others keep their state."""
        state = self.streaming_state
        mask = select_slots(slots, state.batch_size, state.device)
        for module in self._members():
            if module._streaming_state is not None:
                module._streaming_state.reset(mask)

    def set_exec_mask(self, exec_mask: torch.Tensor) -> None:
        state = self.streaming_state
        mask = select_slots(exec_mask, state.batch_size, state.device)
        masks = {id(m._streaming_state.exec_mask): m._streaming_state.exec_mask for m in self._members()}
        for shared in masks.values():
            shared.copy_(mask)  # in place: a captured graph reads the same tensor


def module_device(module: nn.Module) -> torch.device:
    """Device of a module's first parameter or buffer (CPU for parameter-free modules)."""
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")
