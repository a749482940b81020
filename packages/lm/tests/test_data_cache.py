"""The token cache runs the codec once per file and is invalidated by audio or codec changes."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import sentencepiece
import soundfile
import torch
from duplex.lm.data import MultistreamDataset, TokenCache, load_dataset, text_stream
from duplex.lm.data.synth import synthesize_dataset
from torch import nn


class FrameCodec(nn.Module):
    """A stand-in codec: one linear read of each 80 ms frame, bucketed into 16 codes per codebook."""

    sample_rate = 24000
    cardinality = 16

    def __init__(self, num_codebooks: int = 3) -> None:
        super().__init__()
        self.proj = nn.Conv1d(1, num_codebooks, kernel_size=1920, stride=1920)

    def encode(self, wav: torch.Tensor) -> torch.Tensor:
        pad = -wav.shape[-1] % 1920
        x = self.proj(nn.functional.pad(wav, (0, pad)))
        return (x.abs() * 1000).long() % self.cardinality


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    synthesize_dataset(out, 2, seed=1, tokenizer_vocab_size=128)
    return out


def test_codes_match_the_codec_and_are_cached(synth_dir, tmp_path):
    torch.manual_seed(0)
    codec = FrameCodec()
    cache = TokenCache(tmp_path / "cache", codec)
    dialogue = load_dataset(synth_dir)[0]
    codes = cache.codes(dialogue.entry.audio_path)
    wav, _ = soundfile.read(str(dialogue.entry.audio_path), dtype="float32")
    expected = codec.encode(torch.from_numpy(np.ascontiguousarray(wav.T))[:, None])
    assert torch.equal(codes, expected)
    assert codes.shape == (2, 3, dialogue.audio.frames // 1920)
    assert cache.encoded_files == 1
    # A second cache over the same folder (a new process) reads the file instead of encoding.
    again = TokenCache(tmp_path / "cache", codec)
    assert torch.equal(again.codes(dialogue.entry.audio_path), codes)
    assert again.encoded_files == 0


def test_changes_invalidate(synth_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(synth_dir, data)
    torch.manual_seed(0)
    codec = FrameCodec()
    cache = TokenCache(tmp_path / "cache", codec)
    path = load_dataset(data)[0].entry.audio_path
    before = cache.codes(path)
    # New audio: re-encoded.
    wav, rate = soundfile.read(str(path), dtype="float32")
    soundfile.write(str(path), wav[::-1].copy(), rate, subtype="PCM_16")
    after_audio = cache.codes(path)
    assert cache.encoded_files == 2 and not torch.equal(before, after_audio)
    # New codec weights: re-encoded.
    with torch.no_grad():
        codec.proj.weight.mul_(2)
    changed = TokenCache(tmp_path / "cache", codec)
    assert changed.fingerprint != cache.fingerprint
    changed.codes(path)
    assert changed.encoded_files == 1


def test_dataset_segments(synth_dir, tmp_path):
    sp = sentencepiece.SentencePieceProcessor(model_file=str(synth_dir / "tokenizer.model"))
    torch.manual_seed(0)
    cache = TokenCache(tmp_path / "cache", FrameCodec())
    dataset = MultistreamDataset.from_folder(synth_dir, cache, sp.encode, num_codebooks=2, segment_frames=16)
    dialogues = load_dataset(synth_dir)
    frames = [d.audio.frames // 1920 for d in dialogues]
    assert len(dataset) == sum(-(-f // 16) for f in frames)
    assert all(item.shape == (5, 16) for item in dataset)
    # Reassemble the first dialogue: text, model codes (left) and user codes (right).
    first = torch.cat([dataset[i] for i in range(-(-frames[0] // 16))], dim=-1)
    codes = cache.codes(dialogues[0].entry.audio_path)
    assert torch.equal(first[0, : frames[0]], text_stream(dialogues[0].words, sp.encode, frames[0]))
    assert torch.equal(first[1:3, : frames[0]], codes[0, :2])
    assert torch.equal(first[3:5, : frames[0]], codes[1, :2])
    assert (first[:, frames[0] :] == -1).all()
    assert cache.encoded_files == 2


@pytest.mark.parametrize("pack", [False, True])
def test_overlapping_windows_cover_every_frame(pack):
    lengths = [7, 30, 12]
    sequences = [torch.arange(n).repeat(3, 1) + 100 * i for i, n in enumerate(lengths)]
    dataset = MultistreamDataset(sequences, segment_frames=10, hop_frames=4, pack=pack)
    windows = torch.stack([dataset[i] for i in range(len(dataset))])
    assert windows.shape[1:] == (3, 10)
    joined = torch.cat(sequences, dim=-1)
    if pack:  # end to end: only the very last window holds filler, and every window is data
        assert len(dataset) == 1 + -(-(joined.shape[-1] - 10) // 4)
        for i, window in enumerate(windows):
            expected = joined[:, 4 * i : 4 * i + 10]
            assert torch.equal(window[:, : expected.shape[-1]], expected)
        assert (windows[:-1] != -1).all()
    else:  # per dialogue: a short one is filled up, and no window mixes two dialogues
        assert torch.equal(windows[0, :, :7], sequences[0]) and (windows[0, :, 7:] == -1).all()
        for window in windows:
            owners = {int(v) // 100 for v in window[0] if v >= 0}
            assert len(owners) == 1
    # Every frame of every dialogue is in some window.
    seen = {int(v) for v in windows[:, 0].flatten() if v >= 0}
    assert seen == {int(v) for v in joined[0]}


def test_windows_reject_a_hop_longer_than_the_window():
    with pytest.raises(ValueError, match="hop_frames"):
        MultistreamDataset([torch.zeros(3, 20, dtype=torch.long)], segment_frames=10, hop_frames=11)


def test_a_corrupt_entry_is_encoded_again_and_orphans_are_cleaned(synth_dir, tmp_path):
    import os
    import time

    torch.manual_seed(0)
    codec = FrameCodec()
    audio = load_dataset(synth_dir)[0].entry.audio_path
    codes = TokenCache(tmp_path / "cache", codec).codes(audio)
    entry = TokenCache(tmp_path / "cache", codec).path_for(audio)
    entry.write_bytes(entry.read_bytes()[:40])  # a truncated entry (a disk that filled up)
    old, fresh = tmp_path / "cache" / "old.partial", tmp_path / "cache" / "fresh.partial"
    old.write_bytes(b"x")
    fresh.write_bytes(b"x")
    an_hour_ago = time.time() - 3600
    os.utime(old, (an_hour_ago, an_hour_ago))
    cache = TokenCache(tmp_path / "cache", codec)
    assert not old.exists() and fresh.exists()  # a young one may be another process's write
    with pytest.warns(UserWarning, match="is corrupt"):
        assert torch.equal(cache.codes(audio), codes)
    assert cache.encoded_files == 1 and torch.equal(TokenCache(tmp_path / "cache", codec).codes(audio), codes)
