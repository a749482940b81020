"""On-disk cache of codec tokens, so the codec runs once per audio file.

An entry is keyed by the SHA-256 of the audio file's bytes and by a fingerprint of the codec
(its weights, class and number of codebooks): editing the audio or changing the codec gives a
new key, and the stale entry is never read again.
"""

from __future__ import annotations

import hashlib
import time
import warnings
from pathlib import Path
from typing import Protocol

import numpy as np
import soundfile
import torch
from duplex.codec.audio import resample
from duplex.lm.data.format import DatasetError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

ORPHAN_AGE_S = 600.0
"""A ``.partial`` cache file this old is an orphan of a crash: no entry takes that long to write."""


class AudioTokenizer(Protocol):
    sample_rate: int

    def encode(self, wav: torch.Tensor) -> torch.Tensor: ...


def file_digest(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def codec_fingerprint(codec: torch.nn.Module) -> str:
    """A digest of the codec's class, active codebooks and every tensor of its state dict."""
    digest = hashlib.sha256(type(codec).__qualname__.encode())
    digest.update(str(getattr(codec, "num_codebooks", "")).encode())
    for name, tensor in sorted(codec.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class TokenCache:
    """Encodes stereo wavs to codes ``[2, K, F]`` (channel 0 left = model, 1 right = user)."""

    def __init__(self, root: str | Path, codec: AudioTokenizer, sample_rate: int | None = None) -> None:
        self.root = Path(root)
        self.codec = codec
        self.sample_rate = sample_rate or int(codec.sample_rate)
        self.fingerprint = codec_fingerprint(codec)  # type: ignore[arg-type]
        self.encoded_files = 0  # how many files the codec actually ran on
        self.clean_orphans()

    def clean_orphans(self, older_than_s: float = ORPHAN_AGE_S) -> int:
        """Delete the ``.partial`` files a crash left behind (those older than ``older_than_s``: a
        younger one may be another process's write in progress); returns how many."""
        now, removed = time.time(), 0
        for orphan in self.root.glob("*.partial") if self.root.is_dir() else ():
            try:
                if now - orphan.stat().st_mtime > older_than_s:
                    orphan.unlink()
                    removed += 1
            except FileNotFoundError:  # another process cleaned or finished it
                pass
        return removed

    def path_for(self, audio_path: str | Path) -> Path:
        return self.root / f"{file_digest(audio_path)[:24]}-{self.fingerprint[:16]}.safetensors"

    def codes(self, audio_path: str | Path) -> torch.Tensor:
        cached = self.path_for(audio_path)
        if cached.is_file():
            try:
                return load_file(str(cached))["codes"].long()
            except (SafetensorError, OSError, KeyError) as error:
                warnings.warn(f"{cached} is corrupt ({error}); encoding {audio_path} again", stacklevel=2)
        codes = self._encode(Path(audio_path))
        self.root.mkdir(parents=True, exist_ok=True)
        partial = cached.with_suffix(".partial")
        save_file({"codes": codes.contiguous()}, str(partial))
        partial.replace(cached)  # atomic: a crash never leaves a truncated entry
        return codes.long()

    @torch.no_grad()
    def _encode(self, audio_path: Path) -> torch.Tensor:
        wav, rate = soundfile.read(str(audio_path), dtype="float32", always_2d=True)
        if wav.shape[1] != 2:
            raise DatasetError(f"{audio_path}: expected stereo audio, got {wav.shape[1]} channel(s)")
        stereo = resample(torch.from_numpy(np.ascontiguousarray(wav.T)), rate, self.sample_rate)[:, None]
        parameter = next(iter(self.codec.parameters()), None)  # type: ignore[attr-defined]
        if parameter is not None:
            stereo = stereo.to(parameter.device)
        codes = self.codec.encode(stereo).cpu().to(torch.int16 if self._fits_int16() else torch.int64)
        self.encoded_files += 1
        return codes

    def _fits_int16(self) -> bool:
        return int(getattr(self.codec, "cardinality", 2048)) < 2**15
