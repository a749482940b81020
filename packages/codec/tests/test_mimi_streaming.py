"""Streaming behaviour of a tiny Mimi: any chunking, buffering, resets, batch items, the reference."""

from __future__ import annotations

import pytest
import torch
from duplex.codec import Mimi, MimiConfig
from moshi.models.loaders import get_mimi

FRAME = 1920


def _randomized(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = model.state_dict()
    for key, value in state.items():
        if key.endswith("embedding_sum"):
            state[key] = torch.randn(value.shape, generator=g)
        elif key.endswith("cluster_usage"):
            state[key] = torch.rand(value.shape, generator=g) + 0.5
    return state


@pytest.fixture(scope="module")
def pair() -> tuple[torch.nn.Module, Mimi]:
    torch.manual_seed(0)
    config = MimiConfig.from_preset("tiny")
    reference = get_mimi(None, config.to_dict()).eval()
    state = _randomized(reference, 0)
    reference.load_state_dict(state)
    ours = Mimi(config).eval()
    ours.load_state_dict(state)
    reference.set_num_codebooks(8)
    ours.num_codebooks = 8
    return reference, ours


def _audio(batch: int, frames: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.3 * torch.randn(batch, 1, frames * FRAME, generator=g)


def _stream_encode(model: Mimi, wav: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    pieces, pos, i = [], 0, 0
    with model.streaming(wav.shape[0]):
        while pos < wav.shape[-1]:
            pieces.append(model.encode(wav[..., pos : pos + sizes[i % len(sizes)]]))
            pos += sizes[i % len(sizes)]
            i += 1
    return torch.cat(pieces, -1)


@torch.no_grad()
def test_streaming_equals_reference_one_frame_per_call_past_ten_seconds(pair):
    reference, ours = pair
    frames = 160  # 12.8 s
    wav = _audio(2, frames)
    with reference.streaming(2):
        ref_latent = torch.cat(
            [
                reference._encode_to_unquantized_latent(wav[..., i * FRAME : (i + 1) * FRAME])
                for i in range(frames)
            ],
            -1,
        )
    with ours.streaming(2):
        latent = torch.cat(
            [ours.encode_latent(wav[..., s : s + 4321]) for s in range(0, frames * FRAME, 4321)], -1
        )
    torch.testing.assert_close(latent, ref_latent, rtol=1e-5, atol=1e-5)


@torch.no_grad()
@pytest.mark.parametrize("sizes", [[1], [FRAME], [FRAME - 1, FRAME + 1], [5 * FRAME + 7, 3], [100_000]])
def test_any_chunking_gives_the_same_codes(pair, sizes):
    _, ours = pair
    wav = _audio(2, 12, seed=1)
    if sizes == [1]:
        wav = wav[..., : 3 * FRAME]  # one sample per call: keep it short
    expected = _stream_encode(ours, wav, [FRAME])
    assert torch.equal(_stream_encode(ours, wav, sizes), expected)


@torch.no_grad()
def test_streaming_equals_batch_within_ten_seconds(pair):
    _, ours = pair
    wav = _audio(3, 20, seed=2)
    assert torch.equal(_stream_encode(ours, wav, [3000]), ours.encode(wav))
    codes = ours.encode(wav)
    with ours.streaming(3):
        audio = torch.cat([ours.decode(codes[..., i : i + 3]) for i in range(0, 20, 3)], -1)
    torch.testing.assert_close(audio, ours.decode(codes), rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_partial_frames_are_buffered_not_dropped_or_padded(pair):
    _, ours = pair
    wav = _audio(1, 3, seed=3)
    with ours.streaming(1):
        assert ours.encode(wav[..., :1000]).shape == (1, 8, 0)
        assert ours.encode(wav[..., 1000:1919]).shape == (1, 8, 0)
        assert ours.encode(wav[..., 1919:1920]).shape == (1, 8, 1)
        assert ours.encode(wav[..., 1920:5000]).shape == (1, 8, 1)  # 1160 samples stay buffered
        assert ours.streaming_state.pending.shape[-1] == 5000 - 2 * FRAME
        assert ours.encode(wav[..., 5000:]).shape == (1, 8, 1)
        assert ours.decode(torch.zeros(1, 8, 0, dtype=torch.long)).shape == (1, 1, 0)


@torch.no_grad()
def test_batch_items_are_independent(pair):
    _, ours = pair
    wav = _audio(3, 6, seed=4)
    together = _stream_encode(ours, wav, [2500])
    for b in range(3):
        assert torch.equal(_stream_encode(ours, wav[b : b + 1], [2500]), together[b : b + 1])


@torch.no_grad()
def test_reset_streaming_starts_over(pair):
    _, ours = pair
    wav = _audio(2, 4, seed=5)
    fresh = _stream_encode(ours, wav, [FRAME])
    codes = ours.encode(wav)
    with ours.streaming(2):
        ours.encode(_audio(2, 3, seed=6)[..., :-700])  # leaves a partial frame buffered
        ours.decode(codes[..., :2])
        ours.reset_streaming()
        again = ours.encode(wav)
        audio = ours.decode(codes)
    assert torch.equal(again, fresh)
    with ours.streaming(2):
        assert torch.allclose(ours.decode(codes), audio, atol=1e-6)


@torch.no_grad()
def test_per_slot_reset_restarts_only_that_slot(pair):
    _, ours = pair
    wav = _audio(2, 4, seed=7)
    with ours.streaming(2):
        ours.encode(wav[..., : 2 * FRAME])
        ours.reset_streaming(torch.tensor([True, False]))
        codes = ours.encode(wav[..., 2 * FRAME :])
    fresh_slot0 = _stream_encode(ours, wav[:1, :, 2 * FRAME :], [FRAME])
    continued_slot1 = _stream_encode(ours, wav[1:], [FRAME])[..., 2:]
    assert torch.equal(codes[:1], fresh_slot0)
    assert torch.equal(codes[1:], continued_slot1)
    with ours.streaming(2):
        ours.encode(wav[..., :100])
        with pytest.raises(RuntimeError, match="partial frame"):
            ours.reset_streaming(torch.tensor([True, False]))


def test_streaming_batch_size_mismatch_is_an_error(pair):
    _, ours = pair
    with ours.streaming(2), pytest.raises(ValueError, match="batch size 1.*started with 2"):
        ours.encode(torch.zeros(1, 1, FRAME))


@torch.no_grad()
def test_one_streaming_frame_compiles_to_one_graph_with_the_eager_codes_and_audio():
    """``torch.compile(fullgraph=True)`` of Mimi's streaming encode and decode of one frame (the
    reference set: the CPU's C kernels are opaque to dynamo) gives the eager codes and audio."""
    torch.manual_seed(0)
    mimi = Mimi(MimiConfig.from_preset("tiny"), numerics="reference").eval()
    frame = mimi.frame_size
    wav = torch.randn(2, 1, frame * 8)
    outs = {}
    for mode in ("eager", "compiled"):
        compiled = mode == "compiled"
        with mimi.streaming(2):
            encode = (
                torch.compile(mimi.encode, fullgraph=True, backend="aot_eager") if compiled else mimi.encode
            )
            codes = [mimi.encode(wav[..., :frame])] + [
                encode(wav[..., i * frame : (i + 1) * frame]) for i in range(1, 8)
            ]
        with mimi.streaming(2):
            decode = (
                torch.compile(mimi.decode, fullgraph=True, backend="aot_eager") if compiled else mimi.decode
            )
            audio = [mimi.decode(codes[0])] + [decode(c) for c in codes[1:]]
        outs[mode] = torch.cat(codes, -1), torch.cat(audio, -1)
    assert torch.equal(outs["compiled"][0], outs["eager"][0])
    assert torch.equal(outs["compiled"][1], outs["eager"][1])
