"""The native transformer_step op (all layers of a streaming call in one C call) against the layers
run one by one with torch's ops, and the cases where it must step aside."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from duplex.codec.kernels import select_kernels, transformer_native, use_kernels
from duplex.codec.nn import StreamingTransformer, TransformerConfig

MIMI_LIKE = dict(
    d_model=64, num_heads=4, num_layers=3, dim_feedforward=256, context=7, layer_scale=0.5,
    norm="layer_norm", gating="none", positional_embedding="rope",
)  # fmt: skip
LM_LIKE = dict(
    d_model=64, num_heads=4, num_layers=2, dim_feedforward=256, context=9, norm="rms_norm_f32",
    gating="silu", positional_embedding="rope", kv_repeat=2,
)  # fmt: skip
DEPFORMER_LIKE = dict(
    d_model=32, num_heads=4, num_layers=2, dim_feedforward=128, norm="rms_norm_f32", gating="silu",
    positional_embedding="none", weights_per_step=4, weights_per_step_schedule=[0, 1, 1, 2],
)  # fmt: skip
PLAIN = dict(
    d_model=48, num_heads=3, num_layers=2, dim_feedforward=96, context=5, norm="rms_norm",
    gating="silu", positional_embedding="sin",
)  # fmt: skip


def make(config: dict[str, Any], seed: int = 0, numerics: str = "fast") -> StreamingTransformer:
    torch.manual_seed(seed)
    model = StreamingTransformer(TransformerConfig(**config)).eval()
    use_kernels(model, select_kernels(numerics, "cpu"))
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 1 or param.shape[0] == 1:  # norms and layer scales away from their init
                param.add_(0.3 * torch.randn_like(param))
    return model


def stream(model: StreamingTransformer, x: torch.Tensor, per_call: int) -> torch.Tensor:
    with model.streaming(x.shape[0]):
        return torch.cat([model(x[:, t : t + per_call]) for t in range(0, x.shape[1], per_call)], dim=1)


@pytest.fixture
def native_calls(monkeypatch) -> list[int]:
    """How many times the C step ran."""
    calls: list[int] = []
    step = transformer_native.step

    def spy(*args, **kwargs):
        calls.append(1)
        return step(*args, **kwargs)

    monkeypatch.setattr(transformer_native, "step", spy)
    return calls


@torch.no_grad()
@pytest.mark.parametrize("config", [MIMI_LIKE, LM_LIKE, PLAIN], ids=["mimi-like", "lm-like", "sin-rms"])
@pytest.mark.parametrize("per_call", [1, 2, 3])
def test_native_step_equals_the_module_path_past_the_context(config, per_call, native_calls) -> None:
    model = make(config)
    x = torch.randn(2, 24, config["d_model"])  # several times the context: the ring wraps
    got = stream(model, x, per_call)
    assert len(native_calls) == 24 // per_call
    use_kernels(model, select_kernels("reference", "cpu"))
    expected = stream(model, x, per_call)
    assert len(native_calls) == 24 // per_call
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # and the batch (non-streaming) forward, up to the first call that overwrites keys in the window
    exact = config["context"] // per_call * per_call
    torch.testing.assert_close(got[:, :exact], model(x[:, :exact]), rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_slots_reset_masked_or_mixed_with_the_module_path_keep_one_state(native_calls) -> None:
    model = make(LM_LIKE)
    x = torch.randn(2, 12, 64)

    def run() -> list[torch.Tensor]:
        outs = []
        with model.streaming(2):
            for t in range(12):
                if t == 5:
                    model.reset_streaming(torch.tensor([True, False]))
                if t == 8:  # slot 1 pauses: a partial mask takes the module path
                    model.set_exec_mask(torch.tensor([True, False]))
                if t == 10:
                    model.set_exec_mask(torch.tensor([True, True]))
                outs.append(model(x[:, t : t + 1]))
        return outs

    got = run()
    assert 0 < len(native_calls) < 12  # both paths ran, one after the other
    use_kernels(model, select_kernels("reference", "cpu"))
    expected = run()
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_gradients_and_other_dtypes_take_the_module_path(native_calls) -> None:
    model = make(MIMI_LIKE)
    x = torch.randn(1, 2, 64, requires_grad=True)
    with model.streaming(1):
        y = model(x)
    assert y.requires_grad and not native_calls
    y.sum().backward()
    assert x.grad is not None
    model.double()
    with torch.no_grad(), model.streaming(1):
        model(x.detach().double())
    assert not native_calls


@torch.no_grad()
def test_weights_are_packed_once_per_streaming_session(native_calls) -> None:
    """Packed when streaming starts; a session after the weights changed sees the new weights."""
    x = torch.randn(1, 4, 64)
    model = make(MIMI_LIKE)
    stream(model, x, 2)
    with model.streaming(1):
        model(x[:, :2])
        assert len(model.streaming_state.packed) == 1
    layer = model.layers[0]
    layer.linear1.weight.data = torch.zeros_like(layer.linear1.weight)  # a new tensor
    layer.self_attn.in_proj_weight.mul_(0.5)  # in place: same memory, new values
    got = stream(model, x, 2)
    assert len(native_calls) == 5
    use_kernels(model, select_kernels("reference", "cpu"))
    torch.testing.assert_close(got, stream(model, x, 2), rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_per_step_weight_sets_are_packed_per_set(native_calls) -> None:
    """The depformer's layers: one position per call, each through its weight set, restarted per frame."""
    model = make(DEPFORMER_LIKE)
    x = torch.randn(3, 4, 32)
    outputs = {}
    for numerics in ("fast", "reference"):
        use_kernels(model, select_kernels(numerics, "cpu"))
        with model.streaming(3):
            frames = []
            for _ in range(2):
                model.reset_streaming()
                frames.append(torch.cat([model(x[:, k : k + 1]) for k in range(4)], dim=1))
            outputs[numerics] = torch.cat(frames, dim=1)
            packed = len(model.streaming_state.packed)
    assert len(native_calls) == 8
    torch.testing.assert_close(outputs["fast"], outputs["reference"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(outputs["reference"][:, :4], model(x), rtol=1e-5, atol=1e-5)
    assert packed == 0  # the reference set packs nothing


@torch.no_grad()
def test_more_rows_than_the_kernel_takes_use_the_module_path(native_calls) -> None:
    model = make(PLAIN)
    x = torch.randn(9, 4, 48)  # 36 rows > 32
    got = stream(model, x, 4)
    assert not native_calls
    use_kernels(model, select_kernels("reference", "cpu"))
    torch.testing.assert_close(got, stream(model, x, 4), rtol=0, atol=0)
