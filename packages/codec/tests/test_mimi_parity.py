"""Official-size Mimi against the reference package (moshi 0.2.13, test oracle), same random weights.

Batch: codes >= 99.9 % equal (near-tie flips allowed, docs/architecture.md §7.5), decode relative L2 <= 1e-4.
Streaming: over 12.4 s (past the 10 s where the transformer ring buffer starts dropping keys,
docs/architecture.md §2.3), our streaming output for several chunkings equals the reference fed
one frame per call.
"""

from __future__ import annotations

import math

import pytest
import torch
from duplex.codec import Mimi, MimiConfig
from moshi.models.loaders import get_mimi

FRAME = 1920
SECONDS = 12.4  # 155 frames, 310 transformer steps: 60 past the 250-step context
FRAMES = int(SECONDS * 12.5)


def speechlike(batch: int, samples: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(samples) / 24000
    f0 = 120 + 40 * torch.rand(batch, 1, generator=g)
    vibrato = 1 + 0.05 * torch.sin(2 * math.pi * 3 * t)
    wav = sum(torch.sin(2 * math.pi * f0 * k * vibrato * t) / k for k in range(1, 6))
    envelope = 0.5 + 0.5 * torch.sin(2 * math.pi * 0.7 * t + torch.rand(batch, 1, generator=g) * 6)
    noise = 0.02 * torch.randn(batch, samples, generator=g)
    return (0.2 * wav * envelope + noise)[:, None, :].float()


@pytest.fixture(scope="module")
def models() -> tuple[torch.nn.Module, Mimi]:
    """The reference and duplex with the same random weights. Fresh codebooks are all zeros, so
    they are first initialised from data (residuals of a calibration clip) to give informative codes."""
    torch.manual_seed(1234)
    config = MimiConfig()
    ours = Mimi(config, numerics="reference").eval()
    with torch.no_grad():
        latent = ours.encode_latent(speechlike(2, 4 * 24000, seed=99))
    ours.quantizer.init_codebooks(latent, torch.Generator().manual_seed(0))
    ours.num_codebooks = 8
    reference = get_mimi(None, config.to_dict(), device="cpu")
    reference.load_state_dict(ours.state_dict())  # official on-disk names, as in a checkpoint
    reference.eval()
    return reference, ours


def relative_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.fixture
def numerics(models, request):
    """Run a test with ``ours.numerics`` set to the test's parameter, then back to reference."""
    _, ours = models
    ours.numerics = request.param
    yield request.param
    ours.numerics = "reference"


def assert_near_ties(quantizer, latent: torch.Tensor, codes: torch.Tensor, expected: torch.Tensor) -> float:
    """Where ``codes`` differ from ``expected``, the two centroids at the first differing level
    are a near tie for the residual of ``latent`` there: distance gap <= 1e-4 relative.
    Returns the fraction of equal codes."""
    batch, levels, frames = codes.shape
    groups = [(quantizer.rvq_first, 0, quantizer.config.n_q_semantic)]
    groups.append((quantizer.rvq_rest, quantizer.config.n_q_semantic, levels))
    for rvq, start, stop in groups:
        projected = torch.nn.functional.conv1d(latent, rvq.input_proj.weight)
        residual = projected.transpose(1, 2).reshape(batch * frames, -1).double()
        ours = codes[:, start:stop].transpose(1, 2).reshape(batch * frames, -1)
        theirs = expected[:, start:stop].transpose(1, 2).reshape(batch * frames, -1)
        pending = torch.ones(batch * frames, dtype=torch.bool)  # no difference found yet
        for level, table in enumerate(rvq.centroid_table(stop - start).double()):
            differ = pending & (ours[:, level] != theirs[:, level])
            if differ.any():
                rows = residual[differ]
                mine = (rows - table[ours[differ, level]]).norm(dim=-1)
                other = (rows - table[theirs[differ, level]]).norm(dim=-1)
                gap = ((mine - other).abs() / other).max()
                assert gap <= 1e-4, f"level {start + level}: not a near tie (gap {float(gap):.2e})"
            pending &= ~differ
            residual = residual - table[theirs[:, level]]
    return float((codes == expected).float().mean())


def test_official_size_and_key_set(models):
    reference, ours = models
    assert sum(p.numel() for p in ours.parameters()) == 79_308_609
    persistent = sum(v.numel() for v in ours.state_dict().values())
    assert persistent - 79_308_609 == 16_842_784  # codebook statistics
    ours_state = ours.state_dict()
    assert len(ours_state) == 318
    # on-disk names: fused attention projections, everything else as in the reference
    ref_state = reference.state_dict()
    renamed = {
        k.replace("self_attn.in_projs.0.weight", "self_attn.in_proj_weight").replace(
            "self_attn.out_projs.0.weight", "self_attn.out_proj.weight"
        ): v
        for k, v in ref_state.items()
    }
    assert {k: tuple(v.shape) for k, v in ours_state.items()} == {
        k: tuple(v.shape) for k, v in renamed.items()
    }
    assert "encoder_transformer.transformer.layers.0.self_attn.in_proj_weight" in ours_state
    assert all(torch.equal(ours_state[k], renamed[k]) for k in renamed)


@torch.no_grad()
def test_reference_batch_encode_decode_equal_the_reference(models):
    reference, ours = models
    wav = speechlike(2, 3 * 24000 + 777, seed=1)  # not a whole number of frames: both pad
    ref_codes = reference.encode(wav)
    codes = ours.encode(wav)
    assert codes.shape == ref_codes.shape == (2, 8, 38)
    assert codes.dtype == torch.long
    assert torch.equal(codes, ref_codes)
    assert len(torch.unique(ref_codes[:, 0])) > 10  # informative codes, not a constant
    ref_audio = reference.decode(ref_codes)
    audio = ours.decode(ref_codes)
    assert audio.shape == (2, 1, 38 * FRAME)
    assert relative_l2(audio, ref_audio) <= 1e-5
    # all 32 codebooks (their last levels are the most tie-prone), and fewer decoded than encoded
    reference.set_num_codebooks(32)
    ours.num_codebooks = 32
    try:
        ref_codes = reference.encode(wav[..., : 10 * FRAME])
        assert torch.equal(ours.encode(wav[..., : 10 * FRAME]), ref_codes)
        assert relative_l2(ours.decode(ref_codes[:, :5]), reference.decode(ref_codes[:, :5])) <= 1e-5
    finally:
        reference.set_num_codebooks(8)
        ours.num_codebooks = 8


@torch.no_grad()
@pytest.mark.parametrize("numerics", ["fast"], indirect=True)
def test_fast_batch_encode_decode_within_rounding_of_the_reference(models, numerics):
    reference, ours = models
    wav = speechlike(2, 3 * 24000 + 777, seed=1)
    ref_codes = reference.encode(wav)
    codes = ours.encode(wav)
    assert assert_near_ties(ours.quantizer, ours.encode_latent(wav), codes, ref_codes) >= 0.99
    assert relative_l2(ours.decode(ref_codes), reference.decode(ref_codes)) <= 1e-4


@pytest.fixture(scope="module")
def reference_stream(models):
    """The reference streaming one 80 ms frame per call over 12.4 s: latent, codes, audio; and its
    batch latent."""
    reference, _ = models
    wav = speechlike(2, FRAMES * FRAME, seed=2)
    with torch.no_grad(), reference.streaming(2):
        latent = torch.cat(
            [
                reference._encode_to_unquantized_latent(wav[..., i * FRAME : (i + 1) * FRAME])
                for i in range(FRAMES)
            ],
            -1,
        )
    with torch.no_grad():
        batch_latent = reference._encode_to_unquantized_latent(wav)
        # streaming, reference.encode quantizes each call's frames: one frame per call here
        codes = torch.cat([reference.quantizer.encode(frame) for frame in latent.split(1, dim=-1)], -1)
    with torch.no_grad(), reference.streaming(2):
        audio = torch.cat([reference.decode(codes[..., i : i + 1]) for i in range(FRAMES)], -1)
    return wav, latent, codes, audio, batch_latent


def _chunks(total: int, sizes: list[int]) -> list[slice]:
    out, pos, i = [], 0, 0
    while pos < total:
        size = sizes[i % len(sizes)]
        out.append(slice(pos, min(pos + size, total)))
        pos += size
        i += 1
    return out


def _stream_encode(ours: Mimi, wav: torch.Tensor, sizes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes and latent of ``wav`` streamed in chunks of ``sizes`` samples."""
    codes, latents = [], []
    with ours.streaming(wav.shape[0]):
        for part in _chunks(wav.shape[-1], sizes):
            latent = ours.encode_latent(wav[..., part])
            latents.append(latent)
            if latent.shape[-1]:  # what encode does after the latent, frame by frame in reference
                codes += [ours.quantizer.encode(frame) for frame in latent.split(1, dim=-1)]
    return torch.cat(codes, -1), torch.cat(latents, -1)


@torch.no_grad()
@pytest.mark.parametrize(
    "sizes",
    [[FRAME], [1000, 3001, 17, 4000], [7 * FRAME]],
    ids=["one-frame", "ragged", "seven-frames"],
)
def test_reference_streaming_encode_equals_the_reference_past_ten_seconds(models, reference_stream, sizes):
    _, ours = models
    wav, ref_latent, ref_codes, _, batch_latent = reference_stream
    codes, latent = _stream_encode(ours, wav, sizes)
    assert codes.shape == ref_codes.shape == (2, 8, FRAMES)
    assert torch.equal(codes, ref_codes)
    assert torch.equal(latent, ref_latent)
    # past frame 125 the streaming latent departs from batch mode, like the reference's (the
    # ring-buffer quirk, docs/architecture.md §2.3)
    head_gap = relative_l2(latent[..., :125], batch_latent[..., :125])
    tail_gap = relative_l2(latent[..., 125:], batch_latent[..., 125:])
    assert head_gap <= 1e-4
    assert tail_gap > 10 * max(head_gap, 1e-6)


@torch.no_grad()
@pytest.mark.parametrize("numerics", ["fast"], indirect=True)
@pytest.mark.parametrize("sizes", [[FRAME], [5000, 17, 3001]], ids=["one-frame", "ragged"])
def test_fast_streaming_encode_gives_the_reference_codes_but_near_ties(
    models, reference_stream, numerics, sizes
):
    """The C kernels sum in another order: the latent stays within float rounding of the
    reference's, and a code differs only where the two centroids are a near tie."""
    _, ours = models
    wav, ref_latent, ref_codes, *_ = reference_stream
    with ours.streaming(2):
        codes = torch.cat([ours.encode(wav[..., part]) for part in _chunks(wav.shape[-1], sizes)], -1)
    _, latent = _stream_encode(ours, wav, [FRAME])
    assert relative_l2(latent, ref_latent) <= 1e-5
    assert assert_near_ties(ours.quantizer, latent, codes, ref_codes) >= 0.99


@torch.no_grad()
@pytest.mark.parametrize(
    "sizes", [[FRAME], [5000], [1000, 3001, 17, 4000]], ids=["one-frame", "5000", "ragged"]
)
def test_reference_streaming_encode_returns_the_reference_streaming_codes(models, reference_stream, sizes):
    """``Mimi.encode`` itself, however the audio is chunked."""
    _, ours = models
    wav, _, ref_codes, *_ = reference_stream
    with ours.streaming(2):
        codes = torch.cat([ours.encode(wav[..., s]) for s in _chunks(40 * FRAME, sizes)], -1)
    assert torch.equal(codes, ref_codes[..., :40])


@torch.no_grad()
@pytest.mark.parametrize("numerics", ["reference", "fast"], indirect=True)
@pytest.mark.parametrize("frames_per_call", [1, 5])
def test_streaming_decode_matches_reference_past_ten_seconds(
    models, reference_stream, numerics, frames_per_call
):
    _, ours = models
    _, _, ref_codes, ref_audio, _ = reference_stream
    tolerance = 1e-5 if numerics == "reference" else 1e-4
    with ours.streaming(2):
        pieces = [ours.decode(ref_codes[..., s]) for s in _chunks(FRAMES, [frames_per_call])]
    audio = torch.cat(pieces, -1)
    assert audio.shape == ref_audio.shape == (2, 1, FRAMES * FRAME)
    assert relative_l2(audio, ref_audio) <= tolerance
    assert relative_l2(audio[..., 130 * FRAME :], ref_audio[..., 130 * FRAME :]) <= tolerance
