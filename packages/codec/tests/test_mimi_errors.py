"""Bad input gets a clear error naming the problem, never silent truncation."""

from __future__ import annotations

import pytest
import torch
from duplex.codec import Mimi, MimiConfig


@pytest.fixture(scope="module")
def mimi() -> Mimi:
    torch.manual_seed(0)
    return Mimi(MimiConfig.from_preset("tiny")).eval()


@pytest.mark.parametrize(
    ("wav", "error", "match"),
    [
        (torch.zeros(1920), ValueError, r"shape \[B, 1, T\].*wav\[None, None\]"),
        (torch.zeros(2, 1920), ValueError, r"shape \[B, 1, T\].*channel dim"),
        (torch.zeros(1, 2, 1920), ValueError, r"shape \[B, 1, T\], got \[1, 2, 1920\]"),
        (torch.zeros(1, 1, 1920, dtype=torch.int16), TypeError, "float audio.*int16.*32768"),
        (torch.zeros(1, 1, 1920, dtype=torch.int64), TypeError, "float audio"),
        (torch.full((1, 1, 1920), float("nan")), ValueError, "NaN or Inf"),
        (torch.tensor([[[0.0, float("inf")]]]), ValueError, "NaN or Inf"),
        (torch.zeros(1, 1, 0), ValueError, "empty audio"),
        ([0.0] * 1920, TypeError, "torch.Tensor"),
    ],
)
def test_bad_audio(mimi, wav, error, match):
    with pytest.raises(error, match=match):
        mimi.encode(wav)


@pytest.mark.parametrize(
    ("codes", "error", "match"),
    [
        (torch.zeros(1, 8, 3), TypeError, "integer codes, got torch.float32"),
        (torch.zeros(8, 3, dtype=torch.long), ValueError, r"shape \[B, K, F\]"),
        (torch.zeros(1, 9, 3, dtype=torch.long), ValueError, "9 codebooks; this Mimi has 1..8"),
        (torch.zeros(1, 0, 3, dtype=torch.long), ValueError, "0 codebooks"),
        (torch.full((1, 8, 3), 32, dtype=torch.long), ValueError, r"out of range.*\[32, 32\].*0..31"),
        (torch.full((1, 8, 3), -1, dtype=torch.long), ValueError, "out of range"),
        (torch.zeros(1, 8, 0, dtype=torch.long), ValueError, "zero frames"),
    ],
)
def test_bad_codes(mimi, codes, error, match):
    with pytest.raises(error, match=match):
        mimi.decode(codes)


@pytest.mark.parametrize("value", [0, 9, -1, 2.0, True])
def test_num_codebooks_range(mimi, value):
    with pytest.raises(ValueError, match=r"num_codebooks must be an integer in \[1, 8\]"):
        mimi.num_codebooks = value


def test_num_codebooks_controls_encode(mimi):
    wav = torch.randn(1, 1, 1920 * 2) * 0.1
    try:
        for k in (1, 3, 8):
            mimi.num_codebooks = k
            assert mimi.encode(wav).shape == (1, k, 2)
    finally:
        mimi.num_codebooks = 8


def test_facts(mimi):
    assert (mimi.sample_rate, mimi.frame_rate, mimi.frame_size) == (24000, 12.5, 1920)
    assert mimi.total_codebooks == 8 and mimi.cardinality == 32


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"seanet": {"causal": False}}, "only the causal"),
        ({"seanet": {"activation": "NoSuchAct"}}, "not a torch.nn activation"),
        ({"quantizer": {"n_q": 1}}, "greater than or equal to 2"),
        ({"frame_rate": 10.0}, "integer multiple"),
        ({"transformer": {"num_heads": 3}}, "not divisible by num_heads"),
        ({"seanet": {"dimension": 256}}, "must equal seanet.dimension"),
        ({"unknown_field": 1}, "Extra inputs are not permitted"),
    ],
)
def test_bad_config(fields, match):
    with pytest.raises(ValueError, match=match):
        MimiConfig(**fields)
