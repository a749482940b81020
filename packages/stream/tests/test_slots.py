import numpy as np
import pytest
from duplex.stream.slots import SamplingParams, ServerFull, SlotTable


def frames(n: int, value: float = 0.0) -> np.ndarray:
    return np.full(n * 1920, value, dtype=np.float32)


def test_join_fills_free_slots_and_refuses_beyond_them():
    table = SlotTable(2, frame_size=1920, frame_rate=12.5)
    a, b = table.join(), table.join()
    assert (a.slot, b.slot) == (0, 1) and table.active == 2
    with pytest.raises(ServerFull, match="all 2 conversation slots are in use"):
        table.join()
    table.leave(a)
    c = table.join()
    assert c.slot == 0 and c.id != a.id and c.needs_reset
    assert not table.is_current(a) and table.is_current(c)


def test_push_cuts_whole_frames_and_keeps_the_rest():
    table = SlotTable(1, frame_size=1920, frame_rate=12.5)
    conv = table.join()
    assert table.push(conv, np.ones(1000, np.float32)) == 0
    assert table.push(conv, np.ones(3000, np.float32)) == 2
    assert len(conv.pending) == 4000 - 2 * 1920
    occupants, taken = table.take()
    assert occupants[0] is conv and taken[0].index == 0 and taken[0].pcm.shape == (1920,)


def test_too_fast_audio_is_capped_by_dropping_the_oldest_frames():
    table = SlotTable(2, frame_size=1920, frame_rate=12.5, max_backlog_frames=3)
    fast, calm = table.join(), table.join()
    for i in range(5):
        table.push(fast, frames(1, value=i), now=0.0)
    table.push(calm, frames(1), now=0.0)
    assert fast.frames_dropped == 2 and table.total_dropped == 2
    assert [f.pcm[0] for f in fast.frames] == [2.0, 3.0, 4.0]  # the newest are kept
    assert calm.frames_dropped == 0 and len(calm.frames) == 1


def test_late_frames_are_counted_once_per_gap():
    table = SlotTable(1, frame_size=1920, frame_rate=12.5, late_tolerance_s=0.2)
    conv = table.join()
    for i in range(3):
        table.push(conv, frames(1), now=0.08 * i)
    assert conv.frames_late == 0
    table.push(conv, frames(1), now=1.0)  # a one-second hiccup
    assert conv.frames_late == 1
    table.push(conv, frames(1), now=1.08)  # back on the (restarted) schedule
    assert conv.frames_late == 1 and table.total_late == 1


def test_readiness_and_closed_conversations():
    table = SlotTable(2, frame_size=1920, frame_rate=12.5)
    a, b = table.join(), table.join()
    assert not table.any_ready() and not table.all_ready()
    table.push(a, frames(1))
    assert table.any_ready() and not table.all_ready()
    table.push(b, frames(1))
    assert table.all_ready()
    table.leave(b)
    assert table.push(b, frames(1)) == 0


def test_sampling_params_hold_only_the_seed():
    assert SamplingParams(seed=3).seed == 3 and SamplingParams().seed is None
    with pytest.raises(TypeError, match="takes only seed, not temp, top_k_text: .* whole engine"):
        SamplingParams(temp=0.8, top_k_text=3)
