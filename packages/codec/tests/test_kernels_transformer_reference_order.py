"""The reference-order transformer step (kernels/transformer_reference_order.c, nn/reference_step.py):
each op gives torch's bits, whole streams give the eager step's bits, and it runs only where it may."""

from __future__ import annotations

import platform

import pytest
import torch
from duplex.codec.kernels import reference_matmuls, transformer_reference_order, use_backend
from duplex.codec.nn import StreamingTransformer, TransformerConfig, reference_step
from duplex.codec.nn.eager_step import eager_step
from duplex.codec.nn.rope import RotaryEmbedding
from torch.nn import functional as F

X86 = platform.machine().lower() in ("x86_64", "amd64")


def math() -> transformer_reference_order.TorchMath:
    found = transformer_reference_order.torch_math()
    assert found is not None, "torch's LayerNorm, attention or complex product is not followed here"
    return found


def test_torchs_kernels_are_followed_on_x86_wheels() -> None:
    """On torch's x86 wheels every op finds the vector width that gives torch's bits; where one
    does not, the step never runs."""
    found = transformer_reference_order.torch_math()
    if found is None:
        assert not X86, "torch's LayerNorm, attention or complex product is not followed on this x86 CPU"
        assert not reference_step.matches_eager_step()
        return
    assert found.norm_lanes in (8, 16) and found.attention_lanes in (8, 16)
    assert found.complex_pairs in (4, 8, 16)
    assert reference_step.matches_eager_step()


@pytest.mark.parametrize("n", [512, 2048, 16, 100, 37, 7])
def test_layer_norm_gives_torchs_bits(n: int) -> None:
    generator = torch.Generator().manual_seed(n)
    x = torch.randn(9, n, generator=generator) * torch.rand(9, 1, generator=generator) * 8
    x += torch.randn(9, 1, generator=generator) * 3  # an offset: the moments' cancellation shows
    weight, bias = torch.randn(n, generator=generator), torch.randn(n, generator=generator)
    got = transformer_reference_order.layer_norm(x, weight, bias, 1e-5, math().norm_lanes)
    assert torch.equal(got, F.layer_norm(x, (n,), weight, bias, 1e-5))


@pytest.mark.parametrize("head_dim", [64, 8, 24])
def test_rotation_gives_torchs_complex_product(head_dim: int) -> None:
    rope = RotaryEmbedding()
    x = torch.randn(1, 3, 4, head_dim, generator=torch.Generator().manual_seed(head_dim)) * 3
    rotation = rope.rotation(torch.tensor([[0, 7, 3000]]), head_dim)
    pairs = torch.view_as_real(rotation)[0, :, 0].contiguous()
    got = transformer_reference_order.rotate(x[0], pairs, math().complex_pairs)
    assert torch.equal(got, rope.rotate(x, rotation)[0])


@pytest.mark.parametrize(("heads", "head_dim"), [(8, 64), (2, 8)])
@pytest.mark.parametrize("length", [1, 2, 3])
def test_attention_gives_sdpa_bits_over_a_ring_cache(heads: int, head_dim: int, length: int) -> None:
    """Every key count up to a full ring (vector tails included), queries masked causally and by
    the context, as the module path calls torch's CPU flash attention."""
    generator = torch.Generator().manual_seed(heads * length)
    capacity, context = 250, 240
    for used in [*range(length, 40), 127, 249, 250]:
        qk = torch.randn(length, 2 * heads, head_dim, generator=generator) * 2
        keys = torch.randn(heads, capacity, head_dim, generator=generator) * 2
        values = torch.randn(heads, capacity, head_dim, generator=generator)
        delta = torch.arange(used - length, used)[:, None] - torch.arange(used)[None]
        allowed = (delta >= 0) & (delta < context)
        got = transformer_reference_order.attention(qk, keys, values, allowed, math().attention_lanes)
        bias = torch.zeros(allowed.shape).masked_fill_(~allowed, float("-inf"))[None, None]
        expected = F.scaled_dot_product_attention(
            qk[None, :, :heads].transpose(1, 2), keys[None, :, :used], values[None, :, :used], attn_mask=bias
        )
        assert torch.equal(got, expected.transpose(1, 2).flatten(2)[0]), used


def test_the_c_gelu_is_torchs_where_it_says_so() -> None:
    """Where torch's exact GELU is oneDNN's AVX-512 kernel, the C one gives its bits; elsewhere the
    step keeps torch's GELU (test_the_step_with_torchs_gelu_between_parts...)."""
    x = torch.cat([torch.randn(4096, generator=torch.Generator().manual_seed(1)) * s for s in (0.1, 1, 4)])
    same = torch.equal(transformer_reference_order.gelu(x), F.gelu(x))
    assert same == bool(math().onednn_gelu)
    assert not bool(math().onednn_gelu) or same


MIMI_LIKE = dict(d_model=512, num_heads=8, num_layers=2, dim_feedforward=2048, context=10, layer_scale=0.01)


def _twins(**overrides) -> tuple[StreamingTransformer, StreamingTransformer]:
    config = TransformerConfig(**{**MIMI_LIKE, **overrides})
    torch.manual_seed(0)
    ours = StreamingTransformer(config).eval()
    with torch.no_grad():
        for parameter in ours.parameters():
            if parameter.dim() == 1:  # norms and layer scales away from their initial values
                parameter.add_(0.3 * torch.randn_like(parameter))
    twin = StreamingTransformer(config).eval()
    twin.load_state_dict(ours.state_dict())
    return ours, twin


@torch.no_grad()
@pytest.mark.parametrize("c_gelu", [True, False])
def test_the_step_gives_the_eager_steps_bits_past_the_context(c_gelu: bool, monkeypatch) -> None:
    """Mimi's layer shapes streamed through a ring of 10 in calls of 1-3 steps: the C step
    (one call, or one part per layer with torch's GELU between) equals the eager step bit for bit
    and advances the same state."""
    if not c_gelu:
        found = math()
        parts_only = transformer_reference_order.TorchMath(
            found.sgemm, found.norm_lanes, found.attention_lanes, found.complex_pairs, 0
        )
        monkeypatch.setattr(transformer_reference_order, "torch_math", lambda: parts_only)
    ours, twin = _twins()
    calls = []
    original = reference_step.reference_step
    monkeypatch.setattr(reference_step, "reference_step", lambda *a: calls.append(1) or original(*a))
    twin._eager_step_applies = lambda x, state: False  # the module path, whose bits eager_step has
    with reference_matmuls(), ours.streaming(1), twin.streaming(1):
        for steps in [2, 3, 1] * 4:
            x = torch.randn(1, steps, 512)
            assert torch.equal(ours(x), twin(x))
        cache = ours.layers[1].self_attn.streaming_state.cache
        twin_cache = twin.layers[1].self_attn.streaming_state.cache
        assert torch.equal(cache.keys, twin_cache.keys) and torch.equal(cache.positions, twin_cache.positions)
        assert cache.used == twin_cache.used == 10
        assert torch.equal(ours._streaming_state.offset, twin._streaming_state.offset)
    assert len(calls) == 12


@torch.no_grad()
def test_the_step_runs_only_where_it_reproduces_torch() -> None:
    """Outside reference_matmuls, with DUPLEX_KERNELS=torch, for two items, 4 steps per call, or
    with gradients, the transformer takes its other paths."""
    ours, _ = _twins(num_layers=1)
    with ours.streaming(1):
        ours(torch.randn(1, 2, 512))  # packs the layers
        native = ours._streaming_state.native
        assert native is not None
        with reference_matmuls():
            assert reference_step.applies(ours, native, torch.randn(1, 2, 512))
            assert reference_step.applies(ours, native, torch.randn(1, 3, 512))
            assert reference_step.applies(ours, native, torch.randn(1, 1, 512))
            assert not reference_step.applies(ours, native, torch.randn(1, 4, 512))
            assert not reference_step.applies(ours, native, torch.randn(1, 2, 512, dtype=torch.float64))
            with torch.enable_grad():
                assert not reference_step.applies(ours, native, torch.randn(1, 2, 512, requires_grad=True))
            with use_backend("torch"):
                assert not reference_step.applies(ours, native, torch.randn(1, 2, 512))
        assert not reference_step.applies(ours, native, torch.randn(1, 2, 512))
    with ours.streaming(2), reference_matmuls():
        ours(torch.randn(2, 1, 512))
        assert not reference_step.applies(ours, ours._streaming_state.native, torch.randn(2, 1, 512))


@torch.no_grad()
def test_eager_step_and_module_path_still_agree_where_the_step_declines() -> None:
    ours, twin = _twins(num_layers=1)
    twin._eager_step_applies = lambda x, state: False
    with reference_matmuls(), ours.streaming(2), twin.streaming(2):
        for steps in (1, 2, 4):
            x = torch.randn(2, steps, 512)
            positions = ours._streaming_state.offset[:, None] + torch.arange(steps)
            expected = twin(x)
            assert torch.equal(eager_step(ours, x, positions), expected)
            ours._streaming_state.offset += steps
