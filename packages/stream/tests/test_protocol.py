import json

import numpy as np
import pytest
from duplex.stream import protocol
from duplex.stream.opus import OPUS_FRAME, OpusDecoder, OpusEncoder, OpusError, encode_file
from duplex.stream.protocol import Control, Kind, ProtocolError


def test_messages_are_one_kind_byte_then_the_payload():
    assert protocol.handshake() == b"\x00"
    assert protocol.audio(b"OggS...") == b"\x01OggS..."
    assert protocol.text(" héllo") == b"\x02" + " héllo".encode()
    assert protocol.error("full") == b"\x05full"
    assert protocol.control(Control.PAUSE) == b"\x03\x02"
    assert json.loads(protocol.metadata({"a": 1})[1:]) == {"a": 1}
    # The numbering is the official one (docs/architecture.md §6.1).
    assert [k.value for k in Kind] == list(range(8))


def test_decode_round_trips_every_valid_message():
    for raw in (b"\x00", b"\x01OggS", b"\x02hi", b"\x03\x00", b"\x04{}", b"\x05no", b"\x06", b"\x07\x01x"):
        message = protocol.decode(raw)
        assert message.encode() == raw


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"", "empty message"),
        (b"\x09abc", "unknown message kind 9"),
        (b"\xff", "unknown message kind 255"),
        (b"\x01", "without Ogg/Opus payload"),
        (b"\x03", "control message must carry one byte"),
        (b"\x03\x07", "control message must carry one byte"),
        (b"\x02\xff\xfe", "not UTF-8"),
        (b"\x01" + bytes(100), "exceeds the limit of 64 bytes"),
        ("text", "must be binary"),
    ],
)
def test_decode_names_what_is_wrong(raw, problem):
    with pytest.raises(ProtocolError, match=problem):
        protocol.decode(raw, max_bytes=64)


def test_opus_round_trip_keeps_the_signal():
    t = np.arange(24_000) / 24_000
    pcm = (0.4 * np.sin(2 * np.pi * 330 * t)).astype(np.float32)
    encoder, decoder = OpusEncoder(), OpusDecoder()
    out = []
    for start in range(0, len(pcm), 700):  # odd chunk sizes: the encoder buffers to whole frames
        pages = encoder.encode(pcm[start : start + 700])
        if pages:
            out.append(decoder.decode(pages))
    decoded = np.concatenate(out)
    assert len(decoded) == len(pcm) - len(pcm) % OPUS_FRAME
    # Opus is lossy and delays the signal a little: compare energy and correlation, not samples.
    assert abs(np.sqrt(np.mean(decoded**2)) - np.sqrt(np.mean(pcm**2))) < 0.05
    lag = int(np.argmax(np.correlate(decoded[4800:9600], pcm[4800 : 4800 + 2400], "valid")))
    aligned = decoded[4800 + lag : 4800 + lag + 2400]
    assert np.corrcoef(aligned, pcm[4800:7200])[0, 1] > 0.9


def test_opus_decoder_accepts_any_slicing_and_rejects_garbage():
    stream = encode_file(np.zeros(9600, np.float32))
    assert stream.startswith(b"OggS")
    decoder = OpusDecoder()
    total = sum(len(decoder.decode(stream[i : i + 37])) for i in range(0, len(stream), 37))
    assert total == 9600
    with pytest.raises(OpusError, match="invalid Ogg/Opus"):
        OpusDecoder().decode(b"this is not an ogg stream at all")
    with pytest.raises(ValueError, match="mono"):
        OpusEncoder().encode(np.zeros((2, 960), np.float32))
