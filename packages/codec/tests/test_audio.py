"""Audio helpers: any soundfile format to 24 kHz mono float32, and wav writing."""

from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile
import torch
from duplex.codec import load_audio, save_audio
from duplex.codec.audio import resample


def _tone(freq: float, rate: int, seconds: float) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return np.sin(2 * np.pi * freq * t)


@pytest.mark.parametrize("orig", [8000, 16000, 22050, 44100, 48000])
def test_resample_keeps_in_band_tones(orig):
    wav = torch.from_numpy(_tone(1000.0, orig, 0.5)).float()
    out = resample(wav, orig, 24000)
    assert out.shape == (math.ceil(wav.shape[-1] * 24000 / orig),)
    expected = torch.from_numpy(_tone(1000.0, 24000, 0.5)).float()[: out.shape[-1]]
    inner = slice(500, -500)  # away from the zero-padded edges
    assert (out[inner] - expected[inner]).abs().max() < 1e-3


def test_resample_removes_tones_above_the_new_nyquist():
    wav = torch.from_numpy(_tone(15000.0, 48000, 0.5)).float()
    out = resample(wav, 48000, 24000)
    assert out[500:-500].abs().max() < 1e-3


def test_resample_keeps_leading_dims_and_identity():
    x = torch.randn(2, 3, 4410)
    assert resample(x, 44100, 24000).shape == (2, 3, 2400)
    assert resample(x, 24000, 24000) is x
    with pytest.raises(TypeError, match="float audio"):
        resample(torch.zeros(10, dtype=torch.int16), 16000, 24000)
    with pytest.raises(ValueError, match="positive"):
        resample(x, 0, 24000)


@pytest.mark.parametrize(("fmt", "subtype"), [("WAV", "PCM_16"), ("FLAC", "PCM_24"), ("OGG", "VORBIS")])
def test_load_audio_downmixes_and_resamples_any_format(tmp_path, fmt, subtype):
    left, right = 0.5 * _tone(440.0, 44100, 1.0), 0.25 * _tone(440.0, 44100, 1.0)
    path = tmp_path / f"stereo.{fmt.lower()}"
    soundfile.write(str(path), np.stack([left, right], axis=1), 44100, format=fmt, subtype=subtype)
    wav = load_audio(path)
    assert wav.dtype == torch.float32 and wav.shape == (1, 24000)
    expected = 0.375 * torch.from_numpy(_tone(440.0, 24000, 1.0)).float()
    tolerance = 2e-2 if fmt == "OGG" else 2e-3  # lossy codec
    assert (wav[0, 1000:-1000] - expected[1000:-1000]).abs().max() < tolerance


def test_save_then_load_round_trip(tmp_path):
    wav = 0.5 * torch.sin(torch.linspace(0, 2000, 24000))[None]
    path = save_audio(tmp_path / "out" / "x.wav", wav)
    info = soundfile.info(str(path))
    assert (info.samplerate, info.channels, info.subtype) == (24000, 1, "PCM_16")
    torch.testing.assert_close(load_audio(path), wav, atol=1 / 32768, rtol=0)
    save_audio(tmp_path / "f.wav", wav[None], subtype="FLOAT")
    torch.testing.assert_close(load_audio(tmp_path / "f.wav"), wav)
    save_audio(tmp_path / "loud.wav", 3 * wav)  # PCM clips rather than wraps
    assert load_audio(tmp_path / "loud.wav").abs().max() <= 1.0


def test_audio_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="audio file not found"):
        load_audio(tmp_path / "nope.wav")
    (tmp_path / "bad.wav").write_bytes(b"not audio")
    with pytest.raises(ValueError, match="cannot read"):
        load_audio(tmp_path / "bad.wav")
    with pytest.raises(ValueError, match="mono"):
        save_audio(tmp_path / "s.wav", torch.zeros(2, 100))
    with pytest.raises(ValueError, match="NaN or Inf"):
        save_audio(tmp_path / "s.wav", torch.tensor([0.0, float("nan")]))
    with pytest.raises(TypeError, match="float tensor"):
        save_audio(tmp_path / "s.wav", torch.zeros(100, dtype=torch.int16))
