"""StreamingTransformer against the reference moshi StreamingTransformer built with the same kwargs."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from duplex.codec.nn import RotaryEmbedding, StreamingTransformer, TransformerConfig, sinusoidal_embedding
from moshi.modules.transformer import StreamingTransformer as RefTransformer

TOL = 1e-5

MIMI_SMALL = dict(
    d_model=512, num_heads=8, num_layers=2, dim_feedforward=2048, context=10, layer_scale=0.01,
    norm="layer_norm", gating="none", positional_embedding="rope", max_period=10_000,
)  # fmt: skip
LM_MAIN_SMALL = dict(
    d_model=128, num_heads=4, num_layers=2, dim_feedforward=4 * 128, context=12, norm="rms_norm_f32",
    gating="silu", positional_embedding="rope", max_period=10_000,
)  # fmt: skip
DEPFORMER_SMALL = dict(
    d_model=64, num_heads=2, num_layers=2, dim_feedforward=96, norm="rms_norm_f32", gating="silu",
    weights_per_step=3, weights_per_step_schedule=[0, 1, 1],
)  # fmt: skip


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These models are tiny: one thread avoids spinning on a shared CI machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


def make_pair(seed: int = 0, **kwargs: Any) -> tuple[RefTransformer, StreamingTransformer]:
    """A reference transformer with randomised norms / scales, and ours loaded from its state dict."""
    torch.manual_seed(seed)
    ref = RefTransformer(causal=True, **kwargs).eval()
    with torch.no_grad():
        for name, param in ref.named_parameters():
            if param.dim() == 1 or name.endswith("alpha"):
                param.add_(0.3 * torch.randn_like(param))
    ours = StreamingTransformer(TransformerConfig(**kwargs)).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


def stream(module: torch.nn.Module, x: torch.Tensor, per_call: int) -> torch.Tensor:
    with module.streaming(x.shape[0]):
        return torch.cat([module(x[:, t : t + per_call]) for t in range(0, x.shape[1], per_call)], dim=1)


@torch.no_grad()
def test_mimi_config_batch_and_two_steps_per_call_past_the_context():
    ref, ours = make_pair(**MIMI_SMALL)
    x = torch.randn(2, 30, 512)
    batch = ours(x)
    assert rel_l2(batch, ref(x)) <= TOL
    ours_stream, ref_stream = stream(ours, x, 2), stream(ref, x, 2)
    assert rel_l2(ours_stream, ref_stream) <= TOL
    # the ring-buffer quirk (docs/architecture.md §2.3): equal to batch up to the context, then every
    # other step differs
    assert rel_l2(ours_stream[:, :10], batch[:, :10]) <= TOL
    step_error = (ours_stream - batch).norm(dim=-1).amax(dim=0) / batch.norm(dim=-1).amax(dim=0)
    assert (step_error[10:12] > 1e-3).tolist() == [True, False]
    assert (step_error[12::2] > 1e-3).all()


@torch.no_grad()
def test_one_step_per_call_equals_batch_for_any_length():
    ref, ours = make_pair(**MIMI_SMALL)
    x = torch.randn(1, 25, 512)
    assert rel_l2(stream(ours, x, 1), ref(x)) <= TOL
    assert rel_l2(stream(ours, x, 3), stream(ref, x, 3)) <= TOL


@torch.no_grad()
def test_lm_main_style():
    ref, ours = make_pair(seed=1, **LM_MAIN_SMALL)
    x = torch.randn(3, 20, 128)
    expected = ref(x)
    assert rel_l2(ours(x), expected) <= TOL
    assert rel_l2(stream(ours, x, 1), expected) <= TOL
    assert rel_l2(stream(ours, x, 1), stream(ref, x, 1)) <= TOL


@pytest.mark.parametrize("positional", ["none", "sin"])
@torch.no_grad()
def test_depformer_style_weights_per_step(positional: str):
    ref, ours = make_pair(seed=2, positional_embedding=positional, **DEPFORMER_SMALL)
    x = torch.randn(2, 3, 64)
    expected = ref(x)
    assert rel_l2(ours(x), expected) <= TOL
    # one step per call, restarting every "frame" like the depformer inside the LM
    frames = torch.randn(3, 2, 3, 64)
    with ours.streaming(2):
        for frame in frames:
            ours.reset_streaming()
            ours_steps = torch.cat([ours(frame[:, t : t + 1]) for t in range(3)], dim=1)
            ref_steps = stream(ref, frame, 1)  # the reference cannot reset a batched per-step cache
            assert rel_l2(ours_steps, ref_steps) <= TOL
            assert rel_l2(ours_steps, ref(frame)) <= TOL


@torch.no_grad()
def test_depformer_refuses_more_steps_than_weight_sets():
    _, ours = make_pair(seed=2, positional_embedding="none", **DEPFORMER_SMALL)
    with pytest.raises(ValueError, match="weights_per_step=3"):
        ours(torch.randn(1, 4, 64))


@torch.no_grad()
def test_bfloat16_close_to_the_reference():
    ref, ours = make_pair(seed=8, **LM_MAIN_SMALL)
    ref, ours = ref.to(torch.bfloat16), ours.to(torch.bfloat16)
    x = torch.randn(2, 12, 128, dtype=torch.bfloat16)
    ours_stream = stream(ours, x, 1)
    assert ours_stream.dtype == torch.bfloat16
    assert rel_l2(ours_stream.float(), stream(ref, x, 1).float()) <= 1e-2
    assert rel_l2(ours(x).float(), ref(x).float()) <= 1e-2


@torch.no_grad()
def test_kv_repeat():
    config = dict(LM_MAIN_SMALL, num_heads=4, kv_repeat=2)
    ref, ours = make_pair(seed=3, **config)
    assert ours.layers[0].self_attn.in_proj_weight.shape == (128 + 2 * 64, 128)
    x = torch.randn(2, 16, 128)
    expected = ref(x)
    assert rel_l2(ours(x), expected) <= TOL
    assert rel_l2(stream(ours, x, 1), stream(ref, x, 1)) <= TOL
    assert rel_l2(stream(ours, x, 2), stream(ref, x, 2)) <= TOL


@torch.no_grad()
def test_state_dict_uses_on_disk_names_and_round_trips_with_the_reference():
    ref, ours = make_pair(seed=4, positional_embedding="none", **DEPFORMER_SMALL)
    keys = set(ours.state_dict())
    assert "layers.0.self_attn.in_proj_weight" in keys
    assert ours.state_dict()["layers.0.self_attn.in_proj_weight"].shape == (2 * 3 * 64, 64)
    assert ours.state_dict()["layers.0.self_attn.out_proj.weight"].shape == (2 * 64, 64)
    assert "layers.1.gating.1.linear_in.weight" in keys and "layers.1.norm2.alpha" in keys
    assert not any("in_projs" in key or "out_projs" in key for key in keys)

    x = torch.randn(2, 3, 64)
    # ours -> reference: the fused names, and the reference's own per-set names after renaming
    for fused in (True, False):
        target = RefTransformer(causal=True, positional_embedding="none", **DEPFORMER_SMALL)
        state = ours.state_dict()
        if not fused:
            for key in [k for k in state if k.endswith(("in_proj_weight", "out_proj.weight"))]:
                split = key.replace("in_proj_weight", "in_projs").replace("out_proj.weight", "out_projs")
                for i, weight in enumerate(state.pop(key).view(2, -1, 64)):
                    state[f"{split}.{i}.weight"] = weight
        target.load_state_dict(state, strict=True)
        assert rel_l2(target(x), ref(x)) <= TOL
    # the reference's `in_proj.weight` spelling
    state = {k.replace("in_proj_weight", "in_proj.weight"): v for k, v in ours.state_dict().items()}
    again = StreamingTransformer(ours.config)
    again.load_state_dict(state, strict=True)
    assert rel_l2(again(x), ref(x)) <= TOL


@torch.no_grad()
def test_reset_one_slot_while_the_other_continues():
    _, ours = make_pair(seed=5, **dict(LM_MAIN_SMALL, positional_embedding="rope"))
    x = torch.randn(2, 20, 128)
    fresh = torch.randn(1, 8, 128)
    uninterrupted = stream(ours, x, 1)
    with ours.streaming(2):
        for t in range(12):
            ours(x[:, t : t + 1])
        ours.reset_streaming(torch.tensor([False, True]))
        continued = torch.cat(
            [ours(torch.stack([x[0, 12 + t : 13 + t], fresh[0, t : t + 1]])) for t in range(8)], dim=1
        )
    assert rel_l2(continued[0], uninterrupted[0, 12:]) <= TOL
    assert rel_l2(continued[1:], stream(ours, fresh, 1)) <= TOL


@pytest.mark.parametrize("positional", ["rope", "sin"])
@torch.no_grad()
def test_exec_mask_freezes_the_masked_items(positional: str):
    config = dict(MIMI_SMALL, num_layers=1, positional_embedding=positional)
    _, ours = make_pair(seed=6, **config)
    x = torch.randn(2, 16, 512)
    skipped = torch.randn(2, 2, 512)
    with ours.streaming(2):
        first = ours(x[:, :8])
        ours.set_exec_mask(torch.tensor([False, True]))
        ours(skipped)
        ours.set_exec_mask(torch.tensor([True, True]))
        second = ours(x[:, 8:])
    expected = stream(ours, x[:1], 8)
    assert rel_l2(torch.cat([first[:1], second[:1]], dim=1), expected) <= TOL

    # the streaming state's one mask, edited in place between calls, is honoured too
    with ours.streaming(2):
        mask = ours.streaming_state.exec_mask
        assert all(layer.self_attn.streaming_state.exec_mask is mask for layer in ours.layers)
        first = ours(x[:, :8])
        mask[0] = False
        ours(skipped)
        mask[0] = True
        second = ours(x[:, 8:])
    assert rel_l2(torch.cat([first[:1], second[:1]], dim=1), expected) <= TOL


def test_rope_and_sinusoidal_match_the_spec_formulas():
    torch.manual_seed(7)
    q, k = torch.randn(2, 3, 5, 8), torch.randn(2, 1, 5, 8)
    positions = torch.tensor([[0, 1, 2, 3, 4], [7, 8, 9, 10, 11]])
    rq, rk = RotaryEmbedding(10_000).apply(q, k, positions)
    freqs = 10_000 ** (-2 * torch.arange(4, dtype=torch.float64) / 8)
    angle = positions.double()[:, None, :, None] * freqs
    x0, x1 = q.double()[..., 0::2], q.double()[..., 1::2]
    expected = torch.stack([x0 * angle.cos() - x1 * angle.sin(), x0 * angle.sin() + x1 * angle.cos()], -1)
    assert rel_l2(rq.double(), expected.flatten(-2)) <= 1e-6
    assert rk.shape == k.shape
    emb = sinusoidal_embedding(positions, 8)
    period = 10_000 ** (torch.arange(4, dtype=torch.float64) / 3)
    phase = positions.double()[..., None] / period
    assert rel_l2(emb.double(), torch.cat([phase.cos(), phase.sin()], -1)) <= 1e-6


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        TransformerConfig(d_model=10, num_heads=3, num_layers=1, dim_feedforward=8)
    with pytest.raises(ValueError, match="gating.*swish|swish.*gating|Input should be .none., .silu."):
        TransformerConfig(d_model=8, num_heads=2, num_layers=1, dim_feedforward=8, gating="swish")
    with pytest.raises(ValueError, match="gated feed-forward"):
        TransformerConfig(d_model=8, num_heads=2, num_layers=1, dim_feedforward=8, weights_per_step=2)
    with pytest.raises(ValueError, match="extra"):
        TransformerConfig(d_model=8, num_heads=2, num_layers=1, dim_feedforward=8, dropout=0.1)
    mimi = TransformerConfig.from_preset("mimi")
    assert (mimi.d_model, mimi.context, mimi.layer_scale, mimi.gating) == (512, 250, 0.01, "none")
