"""Per-step weights (the depformer): step ``t`` of a sequence uses weight set ``schedule[t]`` (or ``t``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def weight_set_count(weights_per_step: int, schedule: Sequence[int] | None) -> int:
    """How many weight sets a module holds (``mult``): 1, ``weights_per_step`` or ``max(schedule) + 1``."""
    if not weights_per_step:
        if schedule is not None:
            raise ValueError("weights_per_step_schedule needs weights_per_step > 0")
        return 1
    if schedule is None:
        return weights_per_step
    if len(schedule) != weights_per_step:
        raise ValueError(
            f"weights_per_step_schedule has {len(schedule)} entries, "
            f"expected weights_per_step={weights_per_step}"
        )
    if min(schedule) < 0:
        raise ValueError(f"weights_per_step_schedule entries must be >= 0, got {list(schedule)}")
    return max(schedule) + 1


def apply_per_step(
    fn: Callable[[int, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    first_step: int,
    weights_per_step: int,
    schedule: Sequence[int] | None,
) -> torch.Tensor:
    """Apply ``fn(weight_index, x_run)`` over ``x [B, T, ...]`` whose step ``t`` is ``first_step + t``.

    Consecutive steps sharing a weight set go through ``fn`` together.
    """
    length = x.shape[1]
    if first_step + length > weights_per_step:
        raise ValueError(
            f"steps {first_step}..{first_step + length - 1} exceed weights_per_step={weights_per_step}; "
            "reset the stream between sequences"
        )
    if length == 1:  # one streaming step: the common case, without slicing
        return fn(schedule[first_step] if schedule is not None else first_step, x)
    steps = range(first_step, first_step + length)
    indices = [schedule[s] for s in steps] if schedule is not None else list(steps)
    outputs, start = [], 0
    for end in range(1, length + 1):
        if end == length or indices[end] != indices[start]:
            outputs.append(fn(indices[start], x[:, start:end]))
            start = end
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=1)
