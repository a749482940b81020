"""Conversation slots: a fixed table of N batch items that conversations join and leave.

Each conversation owns one slot (one batch row of the engine) for its whole life. Joining marks
the row for a reset before the next step, so a new conversation never sees anything of the one
before it; leaving frees the row at once. All methods are thread safe: the server pushes audio
from its event loop while the engine steps in a worker thread.

Pacing policy, per slot:

* **Late audio.** A slot steps only when it holds a whole 80 ms frame. A slot that has none is
  left out of the step (its model state does not move); nothing is invented for it and the other
  slots step as usual. A frame that arrives more than ``late_tolerance_s`` behind the slot's
  real-time schedule is counted as late, and the schedule restarts from it.
* **Audio too fast.** At most ``max_backlog_frames`` frames wait per slot; beyond that the oldest
  audio is dropped (and counted), so a client that sends faster than real time can neither grow
  memory nor make its replies lag further and further behind.

A conversation whose row the engine cannot reset or step is evicted (:meth:`SlotTable.evict`): its
slot is freed at once and ``Conversation.failure`` says why, so one bad row never stalls the others.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np


class ServerFull(RuntimeError):
    """Every slot is taken."""


@dataclass(frozen=True, init=False)
class SamplingParams:
    """Per-conversation sampling: the seed of the conversation's own random generator.

    Temperatures and top-k are not per conversation: every row of the batched engine samples with
    the engine's settings, chosen when it is built (``MoshiPipeline.from_checkpoint(..., temp=...,
    temp_text=..., top_k=..., top_k_text=...)``, default the checkpoint's ``lm_gen_config``)."""

    seed: int | None = None

    def __init__(self, seed: int | None = None, **removed: object) -> None:
        if removed:
            raise TypeError(
                f"SamplingParams takes only seed, not {', '.join(sorted(removed))}: temperatures and top-k "
                "apply to the whole engine; pass them to MoshiPipeline.from_checkpoint"
            )
        object.__setattr__(self, "seed", seed)


@dataclass
class Frame:
    """One 80 ms frame of user audio, with the time its last sample arrived."""

    pcm: np.ndarray
    arrived_at: float
    index: int


@dataclass
class Conversation:
    """The state a slot keeps for one conversation."""

    slot: int
    params: SamplingParams
    id: int
    joined_at: float = field(default_factory=time.monotonic)
    pending: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    frames: deque[Frame] = field(default_factory=deque)
    frames_in: int = 0
    frames_stepped: int = 0
    frames_late: int = 0
    frames_dropped: int = 0
    schedule_start: float | None = None
    needs_reset: bool = True
    closed: bool = False
    failure: str | None = None  # why the engine evicted this conversation, if it did


class SlotTable:
    def __init__(
        self,
        num_slots: int,
        frame_size: int,
        frame_rate: float,
        max_backlog_frames: int = 25,
        late_tolerance_s: float = 0.24,
    ) -> None:
        if num_slots < 1:
            raise ValueError(f"num_slots must be >= 1, got {num_slots}")
        if max_backlog_frames < 1:
            raise ValueError(f"max_backlog_frames must be >= 1, got {max_backlog_frames}")
        self.num_slots = num_slots
        self.frame_size = frame_size
        self.frame_period = 1.0 / frame_rate
        self.max_backlog_frames = max_backlog_frames
        self.late_tolerance_s = late_tolerance_s
        self._slots: list[Conversation | None] = [None] * num_slots
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self.total_late = 0
        self.total_dropped = 0

    # -- membership -----------------------------------------------------------------------------
    def join(self, params: SamplingParams | None = None) -> Conversation:
        with self._lock:
            for slot, occupant in enumerate(self._slots):
                if occupant is None:
                    conversation = Conversation(slot, params or SamplingParams(), next(self._ids))
                    self._slots[slot] = conversation
                    return conversation
        raise ServerFull(f"all {self.num_slots} conversation slots are in use")

    def leave(self, conversation: Conversation) -> None:
        with self._lock:
            conversation.closed = True
            if self._slots[conversation.slot] is conversation:
                self._slots[conversation.slot] = None

    def evict(self, conversation: Conversation, reason: str) -> None:
        """Free the slot of a conversation the engine cannot serve; its waiting frames are discarded."""
        with self._lock:
            conversation.failure = reason
            conversation.closed = True
            conversation.frames.clear()
            if self._slots[conversation.slot] is conversation:
                self._slots[conversation.slot] = None

    def is_current(self, conversation: Conversation) -> bool:
        return self._slots[conversation.slot] is conversation

    @property
    def active(self) -> int:
        return sum(occupant is not None for occupant in self._slots)

    def conversations(self) -> list[Conversation]:
        with self._lock:
            return [c for c in self._slots if c is not None]

    # -- audio in -------------------------------------------------------------------------------
    def push(self, conversation: Conversation, pcm: np.ndarray, now: float | None = None) -> int:
        """Append user PCM; returns how many whole frames it completed."""
        now = time.monotonic() if now is None else now
        completed = 0
        with self._lock:
            if conversation.closed:
                return 0
            pending = np.concatenate([conversation.pending, np.asarray(pcm, dtype=np.float32).ravel()])
            while len(pending) >= self.frame_size:
                frame = Frame(pending[: self.frame_size].copy(), now, conversation.frames_in)
                pending = pending[self.frame_size :]
                self._admit(conversation, frame)
                completed += 1
            conversation.pending = pending
        return completed

    def _admit(self, conversation: Conversation, frame: Frame) -> None:
        if conversation.schedule_start is None:
            conversation.schedule_start = frame.arrived_at
        due = conversation.schedule_start + frame.index * self.frame_period
        if frame.arrived_at - due > self.late_tolerance_s:
            conversation.frames_late += 1
            self.total_late += 1
            conversation.schedule_start = frame.arrived_at - frame.index * self.frame_period
        conversation.frames.append(frame)
        conversation.frames_in += 1
        while len(conversation.frames) > self.max_backlog_frames:
            conversation.frames.popleft()
            conversation.frames_dropped += 1
            self.total_dropped += 1

    # -- stepping -------------------------------------------------------------------------------
    def all_ready(self) -> bool:
        """True when some slot is active and every active slot holds a frame."""
        with self._lock:
            active = [c for c in self._slots if c is not None]
            return bool(active) and all(c.frames for c in active)

    def any_ready(self) -> bool:
        with self._lock:
            return any(c is not None and c.frames for c in self._slots)

    def take(self) -> tuple[list[Conversation | None], list[Frame | None]]:
        """For one step: the occupant of every slot and its next frame (None where it has none)."""
        with self._lock:
            occupants = list(self._slots)
            frames: list[Frame | None] = []
            for occupant in occupants:
                frames.append(occupant.frames.popleft() if occupant is not None and occupant.frames else None)
            return occupants, frames
