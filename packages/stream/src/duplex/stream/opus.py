"""Ogg/Opus in and out, 24 kHz mono, through sphn.

sphn's writer only accepts whole Opus frames (960 samples at 24 kHz), so :class:`OpusEncoder`
buffers any remainder. Its first output carries the OpusHead and OpusTags pages: one encoder per
connection, as the web decoder needs the headers at the start of every stream.

What comes in from a client is read before sphn sees it: :class:`OggPageReader` cuts the bytes into
Ogg pages and reads from each Opus packet's TOC byte how much audio it holds (RFC 6716 §3.1), so a
server can bound the audio (and the decoding work) a message may cost before decoding it.
Structures sphn would turn into audio out of nothing are refused: an empty Opus packet (which sphn
decodes as 5 s of concealment) or a second logical stream. :class:`OpusDecoder` never returns more
audio than the packets it was given hold.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

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


OGG_HEADER = struct.Struct("<4sBBqIIIB")  # capture, version, flags, granule, serial, sequence, crc, segments
MAX_PACKET_UNITS = 48  # 120 ms in 2.5 ms units: the longest an Opus packet may be
# Frame duration of each TOC configuration in 2.5 ms units: SILK 10/20/40/60, hybrid 10/20, CELT 2.5-20 ms.
_FRAME_UNITS = (4, 8, 16, 24) * 3 + (4, 8) * 2 + (1, 2, 4, 8) * 4


def packet_units(packet: bytes) -> int:
    """The duration of one Opus packet in 2.5 ms units, from its TOC byte (RFC 6716 §3.1)."""
    if not packet:
        raise OpusError("empty Opus packet: every packet starts with a TOC byte")
    toc = packet[0]
    code = toc & 3
    if code == 0:
        frames = 1
    elif code in (1, 2):
        frames = 2
    elif len(packet) < 2 or packet[1] & 0x3F == 0:
        raise OpusError("Opus packet of code 3 without a frame count")
    else:
        frames = packet[1] & 0x3F
    units = frames * _FRAME_UNITS[toc >> 3]
    if units > MAX_PACKET_UNITS:
        raise OpusError(f"Opus packet of {units * 2.5:g} ms: packets hold at most 120 ms")
    return units


@dataclass(frozen=True)
class OggPage:
    data: bytes
    samples: int  # audio the packets that end in this page hold, at the reader's sample rate


class OggPageReader:
    """Cuts a byte stream into whole Ogg pages (keeping a partial one for the next call) and counts
    the audio each holds. The first two packets are the OpusHead and OpusTags headers (no audio)."""

    def __init__(self, sample_rate: int = SAMPLE_RATE) -> None:
        self.sample_rate = sample_rate
        self._pending = b""
        self._serial: int | None = None
        self._packets = 0
        self._partial = b""  # the start of a packet that continues on the next page

    def feed(self, data: bytes) -> list[OggPage]:
        buffer = self._pending + bytes(data)
        pages, offset = [], 0
        while len(buffer) - offset >= OGG_HEADER.size:
            capture, version, _flags, _granule, serial, _seq, _crc, segments = OGG_HEADER.unpack_from(
                buffer, offset
            )
            if capture != b"OggS" or version != 0:
                raise OpusError(
                    "invalid Ogg/Opus data: expected an Ogg page (capture pattern OggS, version 0)"
                )
            if self._serial is None:
                self._serial = serial
            elif serial != self._serial:
                raise OpusError("invalid Ogg/Opus data: one Ogg stream per connection, got a second serial")
            table_end = offset + OGG_HEADER.size + segments
            if len(buffer) < table_end:
                break
            lacing = buffer[offset + OGG_HEADER.size : table_end]
            end = table_end + sum(lacing)
            if len(buffer) < end:
                break
            samples = self._count(buffer[table_end:end], lacing)
            pages.append(OggPage(buffer[offset:end], samples))
            offset = end
        self._pending = buffer[offset:]
        return pages

    def _count(self, body: bytes, lacing: bytes) -> int:
        units, start, position = 0, 0, 0
        for size in lacing:
            position += size
            if size == 255:
                continue
            packet = self._partial + body[start:position]
            self._partial, start = b"", position
            if self._packets >= 2:
                units += packet_units(packet)
            self._packets += 1
        if start < position:  # the last packet goes on in the next page: keep what the TOC needs
            self._partial = (self._partial + body[start:position])[:2]
        return units * self.sample_rate // 400


class OpusDecoder:
    def __init__(self, sample_rate: int = SAMPLE_RATE) -> None:
        self.sample_rate = sample_rate
        self._reader = sphn.OpusStreamReader(sample_rate)
        self._pages = OggPageReader(sample_rate)
        self._owed = 0  # audio the pages fed so far hold that sphn has not returned yet

    def pages(self, data: bytes) -> list[OggPage]:
        """Cut a slice of the stream into whole pages, counting their audio (nothing is decoded)."""
        return self._pages.feed(data)

    def decode_pages(self, pages: list[OggPage]) -> np.ndarray:
        """Decode whole pages (from :meth:`pages`; some may be left out); never more audio than they hold."""
        if not pages:
            return np.zeros(0, dtype=np.float32)
        try:
            pcm = self._reader.append_bytes(b"".join(page.data for page in pages))
        except ValueError as exc:
            raise OpusError(f"invalid Ogg/Opus data: {exc}") from None
        self._owed += sum(page.samples for page in pages)
        pcm = np.asarray(pcm, dtype=np.float32).reshape(-1)[: self._owed]
        self._owed -= len(pcm)
        return pcm

    def decode(self, data: bytes) -> np.ndarray:
        """Feed any slice of an Ogg/Opus stream; returns the PCM decoded so far (maybe empty)."""
        return self.decode_pages(self.pages(data))


def encode_file(pcm: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bytes:
    """A whole Ogg/Opus stream for ``pcm`` (zero-padded to whole Opus frames)."""
    encoder = OpusEncoder(sample_rate)
    pad = (-len(pcm)) % OPUS_FRAME
    return encoder.encode(np.concatenate([np.asarray(pcm, np.float32), np.zeros(pad, np.float32)]))
