"""Windowed causal attention kernels: the torch op against the reference attention module (bit for
bit, batch and ring-buffer streaming), and the Triton kernel (run by Triton's CPU interpreter,
forced with ``backend="triton"``) against the torch op."""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"  # Triton kernels on CPU: must precede the first import of triton

import pytest
import torch
from duplex.codec.kernels import (
    BACKEND_ENV,
    attention,
    attention_torch,
    enable_triton_interpreter,
    select_kernels,
)
from duplex.codec.nn import RotaryEmbedding
from moshi.modules.rope import RotaryEmbedding as ReferenceRope
from moshi.modules.rope import apply_rope as reference_apply_rope
from moshi.modules.transformer import StreamingMultiheadAttention
from moshi.utils.compile import no_compile  # the eager reference: torch.compile's fusions round differently

enable_triton_interpreter()  # fails clearly if triton was loaded before without the interpreter

TOLERANCE = {torch.float32: 2e-5, torch.bfloat16: 2e-2, torch.float16: 4e-3}


def ring_buffer_positions(end_offsets: list[int], capacity: int) -> torch.Tensor:
    """Absolute position held by each slot of a ring buffer after ``end_offset`` writes (-1: empty)."""
    positions = torch.full((len(end_offsets), capacity), -1, dtype=torch.long)
    for item, end in enumerate(end_offsets):
        for position in range(max(0, end - capacity), end):
            positions[item, position % capacity] = position
    return positions


def random_qkv(batch, heads, kv_heads, q_len, k_len, head_dim, dtype=torch.float32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, q_len, head_dim, generator=generator)
    k = torch.randn(batch, kv_heads, k_len, head_dim, generator=generator)
    v = torch.randn(batch, kv_heads, k_len, head_dim, generator=generator)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def triton_attention(q: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """The fast set's attention with Triton forced (interpreted on the CPU)."""
    return select_kernels("fast", q.device, q.dtype, backend="triton").attention(q, *args, **kwargs)


def both_paths(*args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """(Triton, torch) attention of the same inputs; the torch one through the public op."""
    expected = attention(*args, **kwargs, numerics="reference")
    return triton_attention(*args, **kwargs), expected


def assert_close(got: torch.Tensor, expected: torch.Tensor) -> None:
    tolerance = TOLERANCE[expected.dtype]
    assert got.dtype == expected.dtype and got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=tolerance, atol=tolerance)


# Prefill / training: q_pos = k_pos = arange(T).
PREFILL_CASES = [
    # batch, heads, kv_heads, T, Dh, context
    (1, 1, 1, 1, 16, None),
    (2, 3, 3, 37, 24, None),  # T and Dh not multiples of the tiles
    (2, 3, 3, 37, 24, 5),  # a window shorter than a tile
    (1, 2, 2, 70, 64, 40),  # Mimi's head dim, two query tiles, a ragged last key tile
    (2, 4, 2, 19, 32, 7),  # grouped kv heads
]


@pytest.mark.parametrize(("batch", "heads", "kv_heads", "length", "head_dim", "context"), PREFILL_CASES)
def test_triton_prefill_matches_torch(batch, heads, kv_heads, length, head_dim, context) -> None:
    q, k, v = random_qkv(batch, heads, kv_heads, length, length, head_dim, seed=length)
    positions = torch.arange(length).expand(batch, length)
    assert_close(*both_paths(q, k, v, positions, positions, context))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_triton_half_precision_matches_torch(dtype: torch.dtype) -> None:
    q, k, v = random_qkv(2, 2, 2, 33, 32, 32, dtype=dtype, seed=1)
    q_pos = torch.arange(33).expand(2, 33)
    k_pos = torch.arange(-1, 31).expand(2, 32)  # keys one step behind, first slot empty
    assert_close(*both_paths(q, k, v, q_pos, k_pos, 20, scale=0.3))


@pytest.mark.parametrize(
    ("end_offsets", "steps", "capacity", "context"),
    [
        ([1, 5], 1, 8, 8),  # a buffer still filling up, items at different offsets
        ([13, 30], 1, 8, 8),  # wrapped around
        ([31, 6], 2, 10, 10),  # two new queries per call (Mimi: 2 steps per 80 ms frame)
        ([70, 3], 3, 20, None),  # no window: the buffer capacity limits what is seen
    ],
)
def test_triton_ring_buffer_step_matches_torch(end_offsets, steps, capacity, context) -> None:
    batch = len(end_offsets)
    q, k, v = random_qkv(batch, 2, 2, steps, capacity, 24, seed=sum(end_offsets))
    k_pos = ring_buffer_positions(end_offsets, capacity)
    q_pos = torch.tensor(end_offsets)[:, None] - steps + torch.arange(steps)
    assert_close(*both_paths(q, k, v, q_pos, k_pos, context))


@pytest.mark.parametrize(
    ("num_splits", "dtype", "context"), [(2, torch.float32, None), (3, torch.bfloat16, 40)]
)
def test_triton_key_slices_match_torch(num_splits: int, dtype: torch.dtype, context: int | None) -> None:
    # A streaming step over a long ring buffer splits the keys over programs (flash-decoding);
    # item 1 has an empty tail, and its queries see only part of the slices.
    from duplex.codec.kernels import attention_triton

    q, k, v = random_qkv(2, 2, 2, 2, 150, 32, dtype=dtype, seed=num_splits)
    k_pos = ring_buffer_positions([300, 100], 150)
    q_pos = torch.tensor([[298, 299], [98, 99]])
    expected = attention_torch.attention(q, k, v, q_pos, k_pos, context)
    got = attention_triton.attention(q, k, v, q_pos, k_pos, context, num_splits=num_splits)
    assert_close(got, expected)


def test_key_slices_fill_the_gpu_only_when_heads_alone_do_not(monkeypatch: pytest.MonkeyPatch) -> None:
    from duplex.codec.kernels import attention_triton

    monkeypatch.setattr(attention_triton, "_multiprocessors", lambda device: 132)
    cuda = torch.device("cuda")
    assert attention_triton.default_splits(programs=32, key_tiles=47, device=cuda) == 9  # Moshi step, B=1
    assert attention_triton.default_splits(programs=8, key_tiles=4, device=cuda) == 2  # Mimi step, B=1
    assert attention_triton.default_splits(programs=512, key_tiles=47, device=cuda) == 1  # batch of 16
    assert attention_triton.default_splits(programs=1, key_tiles=1000, device=cuda) == 64


def test_queries_that_see_nothing_get_zeros_on_both_paths() -> None:
    q, k, v = random_qkv(1, 2, 2, 3, 4, 16, seed=2)
    q_pos = torch.tensor([[0, 1, 5]])
    k_pos = torch.tensor([[2, 3, 4, -1]])
    got, expected = both_paths(q, k, v, q_pos, k_pos, None)
    assert_close(got, expected)
    assert torch.equal(got[:, :, :2], torch.zeros_like(got[:, :, :2]))


def test_non_contiguous_inputs() -> None:
    # [B, T, H, Dh] projections viewed as [B, H, T, Dh], as attention modules produce them.
    generator = torch.Generator().manual_seed(3)
    q, k, v = torch.randn(3, 2, 21, 3, 16, generator=generator).transpose(2, 3).unbind(0)
    positions = torch.arange(21).expand(2, 21)
    assert not q.is_contiguous()
    assert_close(*both_paths(q, k, v, positions, positions, 6))


def test_the_public_op_runs_the_forced_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    # fast on the CPU is torch's op; $DUPLEX_KERNELS=triton makes the public op run the kernel
    q, k, v = random_qkv(2, 2, 2, 9, 9, 16, seed=8)
    positions = torch.arange(9).expand(2, 9)
    reference = attention(q, k, v, positions, positions, 4, numerics="reference")
    assert torch.equal(attention(q, k, v, positions, positions, 4), reference)
    monkeypatch.setenv(BACKEND_ENV, "triton")
    got = attention(q, k, v, positions.int(), positions.int(), 4)  # int32 positions are widened
    assert torch.equal(got, triton_attention(q, k, v, positions, positions, 4))
    assert_close(got, reference)


def test_triton_runs_torch_for_gradients_and_for_shapes_it_does_not_tile() -> None:
    # forward only: a call that needs gradients gets torch's numbers and torch's gradients
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 9, 16, generator=generator, requires_grad=True) for _ in range(3))
    positions = torch.arange(9)[None]
    grads = []
    for op in (attention_torch.attention, triton_attention):
        out = op(q, k, v, positions, positions, 4)
        grads.append((out, *torch.autograd.grad(out.square().sum(), (q, k, v))))
    for expected, got in zip(*grads, strict=True):
        assert torch.equal(got, expected)
    # a head dimension past the kernel's tiles: torch's op, bit for bit
    q, k, v = random_qkv(1, 1, 1, 5, 5, 264, seed=9)
    positions = torch.arange(5)[None]
    got = triton_attention(q, k, v, positions, positions, None)
    assert torch.equal(got, attention_torch.attention(q, k, v, positions, positions, None))


def test_layers_of_one_call_share_the_torch_mask() -> None:
    q, k, v = random_qkv(2, 2, 2, 3, 8, 16, seed=10)
    k_pos = ring_buffer_positions([11, 5], 8)
    q_pos = torch.tensor([[8, 9, 10], [2, 3, 4]])
    expected = attention_torch.attention(q, k, v, q_pos, k_pos, 6)
    shared: dict = {}
    first = attention_torch.attention(q, k, v, q_pos, k_pos, 6, shared=shared)
    mask = shared["attention_bias"]
    assert mask.shape == (2, 1, 3, 8) and torch.equal(first, expected)
    assert torch.equal(mask, attention_torch.attention_bias(q_pos, k_pos, 6, q.dtype))
    second = attention_torch.attention(q * 0.5, k, v, q_pos, k_pos, 6, shared=shared)  # the next layer
    assert shared["attention_bias"] is mask
    assert torch.equal(second, attention_torch.attention(q * 0.5, k, v, q_pos, k_pos, 6))
    # the Triton kernel takes the dict too (it builds no mask)
    assert_close(triton_attention(q, k, v, q_pos, k_pos, 6, shared={}), expected)


def test_rotary_embedding_equals_reference_bit_for_bit() -> None:
    # the attention modules rotate q and k before the op; the reference-module tests below rely on it
    q, k, _ = random_qkv(2, 3, 3, 7, 7, 32, seed=4)
    offsets = torch.tensor([0, 1234])
    positions = offsets[:, None] + torch.arange(7)
    with no_compile():
        reference_q, reference_k = reference_apply_rope(q, k, offsets, max_period=10_000)
    got_q, got_k = RotaryEmbedding(10_000).apply(q, k, positions)
    assert torch.equal(got_q, reference_q)
    assert torch.equal(got_k, reference_k)


def _reference_attention_module(embed_dim: int, heads: int, context: int) -> StreamingMultiheadAttention:
    torch.manual_seed(5)
    return StreamingMultiheadAttention(
        embed_dim, heads, causal=True, context=context, rope=ReferenceRope(interleave=True)
    ).eval()


def _project(module: StreamingMultiheadAttention, x: torch.Tensor, heads: int):
    projected = torch.nn.functional.linear(x, module.in_projs[0].weight)
    batch, length, _ = projected.shape
    return projected.view(batch, length, 3, heads, -1).permute(2, 0, 3, 1, 4).unbind(0)


def _output(module: StreamingMultiheadAttention, out: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.linear(out.transpose(1, 2).flatten(2), module.out_projs[0].weight)


def _attention(backend: str):
    if backend == "triton":
        return triton_attention
    return lambda *args: attention(*args, numerics=backend)  # reference and fast: torch's op on the CPU


BACKENDS = ["reference", "fast", "triton"]


def _assert_matches_reference(backend: str, got: torch.Tensor, expected: torch.Tensor) -> None:
    if backend == "triton":
        torch.testing.assert_close(got, expected, rtol=2e-5, atol=2e-5)
    else:
        assert torch.equal(got, expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_attention_equals_reference_module(backend: str) -> None:
    embed_dim, heads, context, length = 32, 2, 6, 23
    module = _reference_attention_module(embed_dim, heads, context)
    x = torch.randn(2, length, embed_dim, generator=torch.Generator().manual_seed(6))
    with torch.no_grad(), no_compile():
        expected = module(x, x, x)
        q, k, v = _project(module, x, heads)
        positions = torch.arange(length).expand(2, length)
        q, k = RotaryEmbedding().apply(q, k, positions)
        got = _output(module, _attention(backend)(q, k, v, positions, positions, context))
    _assert_matches_reference(backend, got, expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ring_buffer_streaming_equals_reference_module(backend: str) -> None:
    # Steps per call 1 and 2 with capacity = context: reproduces the reference's ring-buffer
    # behaviour, including its overwrite-before-attend quirk once the buffer wraps
    # (docs/architecture.md §2.3).
    embed_dim, heads, context, batch = 32, 2, 5, 2
    module = _reference_attention_module(embed_dim, heads, context)
    chunks = [1, 2, 2, 1, 2, 2, 2, 1, 2]
    x = torch.randn(batch, sum(chunks), embed_dim, generator=torch.Generator().manual_seed(7))
    head_dim = embed_dim // heads
    keys = torch.zeros(batch, heads, context, head_dim)
    values = torch.zeros_like(keys)
    rope = RotaryEmbedding()
    written = 0
    with torch.no_grad(), no_compile(), module.streaming(batch):
        for steps in chunks:
            chunk = x[:, written : written + steps]
            expected = module(chunk, chunk, chunk)
            q, k, v = _project(module, chunk, heads)
            q_pos = (written + torch.arange(steps)).expand(batch, steps)
            q, k = rope.apply(q, k, q_pos)
            slots = (written + torch.arange(steps)) % context
            keys[:, :, slots], values[:, :, slots] = k, v
            written += steps
            k_pos = ring_buffer_positions([written] * batch, context)
            got = _output(module, _attention(backend)(q, keys, values, q_pos, k_pos, context))
            _assert_matches_reference(backend, got, expected)


def test_bad_inputs_name_the_problem() -> None:
    q, k, v = random_qkv(1, 2, 2, 3, 3, 8)
    positions = torch.arange(3)[None]
    with pytest.raises(ValueError, match=r"q must be \[B, H, T, Dh\]"):
        attention(q[0], k, v, positions, positions, None)
    with pytest.raises(ValueError, match="k_pos must be"):
        attention(q, k, v, positions, positions[:, :2], None)
    with pytest.raises(TypeError, match="integer positions"):
        attention(q, k, v, positions.float(), positions, None)
    with pytest.raises(ValueError, match="context must be a positive int"):
        attention(q, k, v, positions, positions, 0)
    with pytest.raises(ValueError, match="not a multiple"):
        attention(q, k[:, :1].repeat(1, 3, 1, 1), v[:, :1].repeat(1, 3, 1, 1), positions, positions, None)
    with pytest.raises(TypeError, match="share a dtype"):
        attention(q, k.double(), v, positions, positions, None)
    with pytest.raises(ValueError, match="numerics must be 'fast' or 'reference'"):
        attention(q, k, v, positions, positions, None, numerics="exact")
