"""StepGraph: a streaming step recorded once after its warm-up, then replayed from buffers.

CUDA graphs need a GPU (benchmarks/gpu_check.py records real ones); here the recorder is replaced
by one that replays by running the step again on the recorded buffers, which checks everything
around the recording: warm-up, input buffers, shape checks, copied outputs, and that the
models' steady-state steps give the eager results when their inputs arrive through buffers.
"""

from __future__ import annotations

import pytest
import torch
from duplex.codec import Mimi, MimiConfig, graphs
from duplex.codec.graphs import StepGraph


def rerun_recorder(recorded: list[int]):
    def record(step, inputs):
        recorded.append(1)
        return lambda: step(*inputs)

    return record


@pytest.fixture
def recorded(monkeypatch) -> list[int]:
    """Every StepGraph made in the test records with :func:`rerun_recorder`."""
    calls: list[int] = []
    monkeypatch.setattr(graphs, "record_cuda_graph", rerun_recorder(calls))
    return calls


def test_warm_up_then_record_once_then_replay_from_buffers(recorded) -> None:
    total = torch.zeros(3)

    def step(x: torch.Tensor) -> torch.Tensor:
        total.add_(x)  # state updated in place, as a streaming step does
        return total * 2

    graph = StepGraph(step, warmup=2)
    outputs = [graph(torch.full((3,), float(i))) for i in range(5)]
    assert graph.recorded and len(recorded) == 1 and graph.eager_calls == 2
    assert [float(o[0]) for o in outputs] == [0.0, 2.0, 6.0, 12.0, 20.0]
    outputs[-1].zero_()  # a copy: the next replay is unaffected
    assert float(graph(torch.ones(3))[0]) == 22.0
    with pytest.raises(ValueError, match=r"recorded with torch.float32 \[3\]"):
        graph(torch.ones(4))
    with pytest.raises(ValueError, match="warmup must be >= 1"):
        StepGraph(step, warmup=0)


def test_recording_cpu_tensors_in_a_cuda_graph_is_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match="CUDA tensors only"):
        graphs.record_cuda_graph(lambda x: x, [torch.ones(2)])


@torch.no_grad()
def test_mimi_replays_its_one_frame_steps_with_the_eager_numbers(recorded) -> None:
    torch.manual_seed(0)
    eager = Mimi(MimiConfig.from_preset("tiny")).eval()
    graphed = Mimi(MimiConfig.from_preset("tiny"), cuda_graph=True).eval()
    graphed.load_state_dict(eager.state_dict())
    frame = eager.frame_size
    wav = torch.randn(2, 1, 9 * frame)
    outs = {}
    for name, mimi in (("eager", eager), ("graphed", graphed)):
        with mimi.streaming(2):
            codes = [mimi.encode(wav[..., i * frame : (i + 1) * frame]) for i in range(6)]
            mimi.reset_streaming([1])  # per-slot restarts reach the recorded step (state in place)
            codes += [mimi.encode(wav[..., i * frame : (i + 1) * frame]) for i in range(6, 9)]
        with mimi.streaming(2):
            audio = [mimi.decode(c) for c in codes]
        outs[name] = torch.cat(codes, -1), torch.cat(audio, -1)
    assert len(recorded) == 2  # the encode and the decode step, once each
    assert torch.equal(outs["graphed"][0], outs["eager"][0])
    assert torch.equal(outs["graphed"][1], outs["eager"][1])
