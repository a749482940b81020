"""Ogg/Opus in and out, 24 kHz mono, through sphn.

sphn's writer only accepts whole Opus frames (960 samples at 24 kHz), so :class:`OpusEncoder`
buffers any remainder. Its first output carries the OpusHead and OpusTags pages: one encoder per
connection, as the web decoder needs the headers at the start of every stream.
"""

from __future__ import annotations

import numpy as np
import sphn

SAMPLE_RATE = 24_000
OPUS_FRAME = 960  # 40 ms at 24 kHz, the packet size sphn writes


class OpusError(ValueError):
    """Bytes that are not a valid Ogg/Opus stream."""


class OpusEncoder:
    def __init__(self, sample_rate: int = SAMPLE_RATE) -> None:
        self.sample_rate = sample_rate
        self._writer = sphn.OpusStreamWriter(sample_rate)
        self._pending = np.zeros(0, dtype=np.float32)

    def encode(self, pcm: np.ndarray) -> bytes:
        """Append mono float32 PCM; returns the Ogg pages completed so far (maybe empty)."""
        pcm = np.asarray(pcm, dtype=np.float32)
        if pcm.ndim != 1:
            raise ValueError(f"expected mono PCM of shape [T], got {list(pcm.shape)}")
        self._pending = np.concatenate([self._pending, pcm])
        usable = len(self._pending) - len(self._pending) % OPUS_FRAME
        if usable == 0:
            return b""
        chunk, self._pending = self._pending[:usable], self._pending[usable:]
        return bytes(self._writer.append_pcm(chunk))


class OpusDecoder:
    def __init__(self, sample_rate: int = SAMPLE_RATE) -> None:
        self.sample_rate = sample_rate
        self._reader = sphn.OpusStreamReader(sample_rate)

    def decode(self, data: bytes) -> np.ndarray:
        """Feed any slice of an Ogg/Opus stream; returns the PCM decoded so far (maybe empty)."""
        try:
            pcm = self._reader.append_bytes(bytes(data))
        except ValueError as exc:
            raise OpusError(f"invalid Ogg/Opus data: {exc}") from None
        return np.asarray(pcm, dtype=np.float32).reshape(-1)


def encode_file(pcm: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bytes:
    """A whole Ogg/Opus stream for ``pcm`` (zero-padded to whole Opus frames)."""
    encoder = OpusEncoder(sample_rate)
    pad = (-len(pcm)) % OPUS_FRAME
    return encoder.encode(np.concatenate([np.asarray(pcm, np.float32), np.zeros(pad, np.float32)]))
