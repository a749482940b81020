"""``torch.compile(fullgraph=True)`` of a streaming step with the fast kernels on the CPU: the C
kernels are torch ops (schema + fake tensor rule), so the whole step is one graph, and it gives the
eager step's tokens and audio. The ``aot_eager`` backend traces as Inductor does (fake tensors,
functionalization) without its minutes of code generation; benchmarks/bench_compile.py times
Inductor."""

from __future__ import annotations

import pytest
import torch
from duplex.codec import Mimi, MimiConfig
from duplex.codec.kernels.dispatch import native_usable
from duplex.lm import LMGen
from duplex.lm.config import LMConfig
from duplex.lm.model import LMModel

pytestmark = pytest.mark.skipif(not native_usable(), reason="the fast CPU kernels need a C compiler")
STEPS = 8


class RecordingBackend:
    """``aot_eager``, noting which ops the captured graph calls."""

    def __init__(self) -> None:
        self.targets: set[str] = set()

    def __call__(self, graph: torch.fx.GraphModule, example_inputs):  # noqa: ANN204
        calls = [node for node in graph.graph.nodes if node.op == "call_function"]
        self.targets |= {str(node.target).removesuffix(".default") for node in calls}
        return torch._dynamo.lookup_backend("aot_eager")(graph, example_inputs)


def _steps(step, codes: torch.Tensor) -> list[torch.Tensor | None]:  # noqa: ANN001
    return [step(codes[t]) for t in range(codes.shape[0])]


@pytest.mark.parametrize("use_sampling", [False, True], ids=["greedy", "sampling"])
@torch.no_grad()
def test_the_compiled_fast_lm_step_gives_the_eager_tokens(use_sampling: bool) -> None:
    torch.manual_seed(0)
    model = LMModel(LMConfig.from_preset("tiny")).eval()
    assert model.numerics == "fast"
    codes = torch.randint(0, 32, (STEPS, 2, model.config.num_user_codebooks, 1))
    results = []
    for compiled in (False, True):
        torch._dynamo.reset()
        gen = LMGen(model, use_sampling=use_sampling)
        backend = RecordingBackend()
        with gen.streaming(2):
            gen.set_seed(0, 11)
            gen.set_seed(1, 12)
            step = torch.compile(gen.step, fullgraph=True, backend=backend) if compiled else gen.step
            results.append(_steps(step, codes))
        assert model.transformer.kernels.backends["linear"] == "native"
    assert "duplex.linear_rows" in backend.targets  # the C linear, inside the one graph
    for eager, compiled in zip(*results, strict=True):
        assert (eager is None and compiled is None) or torch.equal(eager, compiled)
    assert sum(tokens is not None for tokens in results[1]) >= STEPS - model.config.max_delay


@torch.no_grad()
def test_the_compiled_fast_mimi_frame_gives_the_eager_codes_and_audio() -> None:
    torch.manual_seed(0)
    mimi = Mimi(MimiConfig.from_preset("tiny")).eval()
    frames = (0.1 * torch.randn(STEPS, 1, 1, mimi.frame_size)).unbind(0)
    results = []
    for compiled in (False, True):
        torch._dynamo.reset()
        backend = RecordingBackend()
        with mimi.streaming(1):
            encode, decode = mimi.encode, mimi.decode
            if compiled:
                encode = torch.compile(mimi.encode, fullgraph=True, backend=backend)
                decode = torch.compile(mimi.decode, fullgraph=True, backend=backend)
            codes = [encode(frame) for frame in frames]
            results.append((codes, [decode(c) for c in codes]))
    assert {"duplex.linear_rows", "duplex.rvq_encode_f32"} <= backend.targets
    (eager_codes, eager_audio), (codes, audio) = results
    assert all(torch.equal(a, b) for a, b in zip(eager_codes, codes, strict=True))
    assert max((a - b).abs().max().item() for a, b in zip(eager_audio, audio, strict=True)) <= 1e-5


@torch.no_grad()
def test_the_triton_kernels_compile_as_ops_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Triton kernels (run by Triton's interpreter on the CPU here) are torch ops as well: a
    compiled streaming Mimi frame with the Triton set captures them and gives the eager codes."""
    from duplex.codec.kernels import BACKEND_ENV

    monkeypatch.setenv(BACKEND_ENV, "triton")
    torch.manual_seed(0)
    mimi = Mimi(MimiConfig.from_preset("tiny")).eval()
    frames = (0.1 * torch.randn(3, 1, 1, mimi.frame_size)).unbind(0)
    results = []
    for compiled in (False, True):
        torch._dynamo.reset()
        backend = RecordingBackend()
        with mimi.streaming(1):
            assert mimi.quantizer.rvq_first.kernels.backends["rvq_encode"] == "triton"
            encode = torch.compile(mimi.encode, fullgraph=True, backend=backend) if compiled else mimi.encode
            results.append([encode(frame) for frame in frames])
    assert {"duplex.rvq_encode_triton", "duplex.attention_triton"} <= backend.targets
    assert all(torch.equal(a, b) for a, b in zip(*results, strict=True))
