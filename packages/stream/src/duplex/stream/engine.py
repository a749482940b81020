"""The batched duplex engine: N conversations, one batched step per 80 ms frame.

:class:`DuplexEngine` is the synchronous core: conversations join (their row is reset before the
next step), push user audio, and every :meth:`DuplexEngine.step` advances each row that holds a
frame, in one batched call of the pipeline. :class:`AsyncEngine` drives it from an asyncio
server: steps run in one worker thread, so sockets keep being served while the model computes.

Step scheduling (:meth:`AsyncEngine.run`): a step starts as soon as every active conversation has
a frame waiting, or, if some have none, when one frame period has passed since the previous step
started, with whichever rows are ready then. Conversations arriving at different phases therefore
share steps (the compute of N conversations is one batched call, not N), at the price of at most
one frame period of waiting for the earliest arrivals. A slot with no audio never holds the
others back; see :mod:`duplex.stream.slots` for the late / too-fast policy.

Failures stay with their row: a conversation whose reset raises is evicted (its slot freed, its
``failure`` set) and the step goes on with the others; when a batched step raises, the rows that
stepped in it are evicted (their state may be half advanced, and the step cannot tell which row
caused it) and the engine carries on with the next step. :class:`AsyncEngine` tells each evicted
conversation's listener. :meth:`DuplexEngine.recent_step_p95` gives the server its admission signal.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from duplex.codec.interfaces import Pipeline
from duplex.stream.metrics import Histogram
from duplex.stream.slots import Conversation, SamplingParams, SlotTable

log = logging.getLogger(__name__)


@dataclass
class Reply:
    """The reply frame to one user frame: ``pcm`` [frame_size] and the text piece, if any."""

    conversation: Conversation
    pcm: np.ndarray
    text: str | None
    frame_index: int
    user_frame_arrived_at: float
    tokens: np.ndarray | None = None  # the generated frame (text token, then audio codes), if known
    extra: Any = None  # the pipeline's own per-step extras (STT: pause probabilities; TTS: a TtsStep)


class DuplexEngine:
    def __init__(
        self,
        pipeline: Pipeline,
        max_conversations: int = 4,
        max_backlog_frames: int = 25,
        late_tolerance_s: float = 0.24,
        keep_step_times: int = 100_000,
    ) -> None:
        self.pipeline = pipeline
        self.max_conversations = max_conversations
        self.slots = SlotTable(
            max_conversations,
            frame_size=pipeline.frame_size,
            frame_rate=pipeline.frame_rate,
            max_backlog_frames=max_backlog_frames,
            late_tolerance_s=late_tolerance_s,
        )
        self.step_seconds = Histogram("duplex_step_seconds", "Compute time of one batched engine step.")
        self.step_times: deque[float] = deque(maxlen=keep_step_times)
        self._recent_steps: deque[tuple[float, float]] = deque(maxlen=4096)  # (finished at, seconds)
        self.evicted: deque[Conversation] = deque()  # drained by the driver (AsyncEngine)
        self.steps = 0
        self._step_lock = threading.Lock()
        pipeline.start(max_conversations)

    @property
    def frame_size(self) -> int:
        return self.pipeline.frame_size

    @property
    def sample_rate(self) -> int:
        return self.pipeline.sample_rate

    @property
    def frame_period(self) -> float:
        return 1.0 / self.pipeline.frame_rate

    def join(self, params: SamplingParams | None = None) -> Conversation:
        """Take a free slot (raises :class:`~duplex.stream.slots.ServerFull` when there is none)."""
        return self.slots.join(params)

    def leave(self, conversation: Conversation) -> None:
        self.slots.leave(conversation)

    def push(self, conversation: Conversation, pcm: np.ndarray) -> int:
        """Add user audio; returns the number of frames it completed."""
        return self.slots.push(conversation, pcm)

    def step(self) -> list[Reply]:
        """One batched step over every slot holding a frame; returns their replies."""
        with self._step_lock:
            occupants, frames = self.slots.take()
            n = self.max_conversations
            pcm = np.zeros((n, self.frame_size), dtype=np.float32)
            active = np.zeros(n, dtype=bool)
            for row, (occupant, frame) in enumerate(zip(occupants, frames, strict=True)):
                if occupant is not None and occupant.needs_reset and not self._reset(row, occupant):
                    occupants[row] = None
                    continue
                if occupant is not None and frame is not None:
                    pcm[row] = frame.pcm
                    active[row] = True
            if not active.any():
                return []
            start = time.perf_counter()
            try:
                out = self.pipeline.step(pcm, active)
            except Exception as error:
                log.exception("engine step failed; evicting the %d conversations in it", int(active.sum()))
                for row in np.flatnonzero(active):
                    self._evict(occupants[row], f"the engine step failed: {error}")
                return []
            elapsed = time.perf_counter() - start
            self.step_seconds.observe(elapsed)
            self.step_times.append(elapsed)
            self._recent_steps.append((time.monotonic(), elapsed))
            self.steps += 1
            replies = []
            for row, (occupant, frame) in enumerate(zip(occupants, frames, strict=True)):
                if frame is None or occupant is None or not active[row]:
                    continue
                occupant.frames_stepped += 1
                if out.has_reply[row]:
                    tokens = None if out.tokens is None else out.tokens[row].copy()
                    extra = None if out.extra is None else out.extra[row]
                    if isinstance(extra, np.ndarray):
                        extra = extra.copy()
                    replies.append(
                        Reply(
                            occupant,
                            out.pcm[row].copy(),
                            out.text[row],
                            frame.index,
                            frame.arrived_at,
                            tokens,
                            extra,
                        )
                    )
            return replies

    def _reset(self, row: int, occupant: Conversation) -> bool:
        """Reset ``row`` for its new occupant; on failure evict the occupant (the others step on)."""
        try:
            self.pipeline.reset(row, occupant.params)
        except Exception as error:
            log.exception("resetting row %d for conversation %d failed; evicting it", row, occupant.id)
            self._evict(occupant, f"the engine could not start this conversation: {error}")
            return False
        occupant.needs_reset = False
        return True

    def _evict(self, occupant: Conversation | None, reason: str) -> None:
        if occupant is None or occupant.closed:
            return
        self.slots.evict(occupant, reason)
        self.evicted.append(occupant)

    def recent_step_p95(self, window_s: float = 5.0, min_steps: int = 10) -> float | None:
        """The 95th percentile of the step times of the last ``window_s`` seconds (None: too few)."""
        since = time.monotonic() - window_s
        recent = [seconds for finished, seconds in list(self._recent_steps) if finished >= since]
        if len(recent) < min_steps:
            return None
        return float(np.percentile(recent, 95))

    def warmup(self, steps: int = 4) -> None:
        """Run a few steps of silence on every row (first calls are slow: lazy imports, allocations).

        Call it before serving; every row is reset again when a conversation joins it.
        """
        if self.slots.active:
            raise RuntimeError("warm up before any conversation joins")
        n = self.max_conversations
        with self._step_lock:
            for row in range(n):
                self.pipeline.reset(row, SamplingParams(seed=0))
            for _ in range(steps):
                self.pipeline.step(np.zeros((n, self.frame_size), np.float32), np.ones(n, dtype=bool))

    def close(self) -> None:
        self.pipeline.stop()


ReplyListener = Callable[[Reply], None]
EvictionListener = Callable[[str], None]


class AsyncEngine:
    """Runs a :class:`DuplexEngine` from an event loop; replies go to per-conversation listeners."""

    def __init__(self, engine: DuplexEngine) -> None:
        self.engine = engine
        self._listeners: dict[int, ReplyListener] = {}
        self._on_evicted: dict[int, EvictionListener] = {}
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="duplex-engine")
        self._task: asyncio.Task | None = None

    def join(
        self,
        params: SamplingParams | None,
        listener: ReplyListener,
        on_evicted: EvictionListener | None = None,
    ) -> Conversation:
        """Take a slot; ``listener`` gets its replies, ``on_evicted`` the reason if the engine evicts it."""
        conversation = self.engine.join(params)
        self._listeners[conversation.id] = listener
        if on_evicted is not None:
            self._on_evicted[conversation.id] = on_evicted
        return conversation

    def leave(self, conversation: Conversation) -> None:
        self._listeners.pop(conversation.id, None)
        self._on_evicted.pop(conversation.id, None)
        self.engine.leave(conversation)

    def push(self, conversation: Conversation, pcm: np.ndarray) -> None:
        if self.engine.push(conversation, pcm):
            self._wake.set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self.run(), name="duplex-engine")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        self._executor.shutdown(wait=True)
        self.engine.close()

    async def _wait(self, timeout: float | None) -> None:
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
        except TimeoutError:
            pass
        self._wake.clear()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        slots = self.engine.slots
        period = self.engine.frame_period
        last_step = -float("inf")
        while True:
            if not slots.any_ready():
                await self._wait(None)
                continue
            deadline = last_step + period
            while not slots.all_ready() and (remaining := deadline - time.monotonic()) > 0:
                await self._wait(remaining)
            last_step = time.monotonic()
            try:
                replies = await loop.run_in_executor(self._executor, self.engine.step)
            except Exception:
                log.exception("engine step failed")
                replies = []
            self._tell_evicted()
            for reply in replies:
                listener = self._listeners.get(reply.conversation.id)
                if listener is not None and not reply.conversation.closed:
                    listener(reply)

    def _tell_evicted(self) -> None:
        while self.engine.evicted:
            conversation = self.engine.evicted.popleft()
            self._listeners.pop(conversation.id, None)
            on_evicted = self._on_evicted.pop(conversation.id, None)
            if on_evicted is not None:
                on_evicted(conversation.failure or "evicted by the engine")
