"""A deterministic stand-in for the model pipeline: each row replies with its own previous frame.

Row r's reply to frame n is frame n-1 of the same row, halved, and every 5th frame it emits the
text " f<n-1>". Any mixing of rows, missed reset or skipped frame shows up in the numbers.
"""

from __future__ import annotations

import numpy as np
from duplex.stream.pipeline import StepOutput
from duplex.stream.slots import SamplingParams


class EchoPipeline:
    sample_rate = 24_000
    frame_rate = 12.5
    frame_size = 1920

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s

    def start(self, batch_size: int) -> None:
        self.previous = np.zeros((batch_size, self.frame_size), dtype=np.float32)
        self.count = np.zeros(batch_size, dtype=np.int64)

    def stop(self) -> None:
        pass

    def reset(self, row: int, params: SamplingParams) -> None:
        self.previous[row] = 0.0
        self.count[row] = 0

    def step(self, pcm: np.ndarray, active: np.ndarray) -> StepOutput:
        if self.delay_s:
            import time

            time.sleep(self.delay_s)
        has_reply = active & (self.count > 0)
        out = np.where(has_reply[:, None], 0.5 * self.previous, 0.0).astype(np.float32)
        text = [
            f" f{self.count[r] - 1}" if has_reply[r] and (self.count[r] - 1) % 5 == 0 else None
            for r in range(len(active))
        ]
        self.previous[active] = pcm[active]
        self.count[active] += 1
        return StepOutput(out, has_reply, text)
