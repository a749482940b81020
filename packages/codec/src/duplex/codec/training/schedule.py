"""The learning-rate schedule of the training runs: linear warmup, then cosine decay."""

from __future__ import annotations

import math


def warmup_cosine(step: int, total_steps: int | None, warmup_steps: int, final_ratio: float) -> float:
    """The factor on the base learning rate at ``step`` (0-based) of a ``total_steps`` run.

    It rises linearly over ``warmup_steps``, then follows a half cosine from 1 down to ``final_ratio``
    at the last step (``final_ratio`` 1: constant after the warmup). Past ``total_steps`` it stays at
    ``final_ratio``, so a run extended on resume keeps its last rate. A run of no known length
    (``total_steps`` None) stays at 1 after the warmup."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if total_steps is None:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
