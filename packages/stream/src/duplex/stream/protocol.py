"""The websocket wire protocol of the official clients: one kind byte, then the payload.

Every message is a binary websocket frame. The server sends a handshake first, then audio
(Ogg/Opus pages) and text pieces; the client sends audio and, from the web client, control bytes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import IntEnum

# One Ogg page of 24 kHz mono Opus is well under a kilobyte; this leaves room for many pages in
# one message while keeping a hostile client from making the server buffer megabytes.
MAX_MESSAGE_BYTES = 64 * 1024


class Kind(IntEnum):
    HANDSHAKE = 0
    AUDIO = 1
    TEXT = 2
    CONTROL = 3
    METADATA = 4
    ERROR = 5
    PING = 6
    COLORED_TEXT = 7


class Control(IntEnum):
    START = 0
    END_TURN = 1
    PAUSE = 2
    RESTART = 3


_CONTROL_VALUES = frozenset(c.value for c in Control)


class ProtocolError(ValueError):
    """A client message that breaks the protocol; the message says what is wrong."""


@dataclass(frozen=True)
class Message:
    kind: Kind
    payload: bytes = b""

    def encode(self) -> bytes:
        return bytes([self.kind]) + self.payload


def handshake() -> bytes:
    # The Python reference sends the kind byte alone; the web client ignores any payload.
    return bytes([Kind.HANDSHAKE])


def audio(ogg_pages: bytes) -> bytes:
    return bytes([Kind.AUDIO]) + ogg_pages


def text(piece: str) -> bytes:
    return bytes([Kind.TEXT]) + piece.encode("utf-8")


def error(reason: str) -> bytes:
    return bytes([Kind.ERROR]) + reason.encode("utf-8")


def metadata(fields: dict) -> bytes:
    return bytes([Kind.METADATA]) + json.dumps(fields).encode("utf-8")


def control(action: Control) -> bytes:
    return bytes([Kind.CONTROL, action])


def decode(data: bytes, max_bytes: int = MAX_MESSAGE_BYTES) -> Message:
    """Parse one binary websocket message, raising :class:`ProtocolError` when it is malformed."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ProtocolError(f"messages must be binary, got {type(data).__name__}")
    data = bytes(data)
    if len(data) == 0:
        raise ProtocolError("empty message: every message starts with a kind byte")
    if len(data) > max_bytes:
        raise ProtocolError(f"message of {len(data)} bytes exceeds the limit of {max_bytes} bytes")
    try:
        kind = Kind(data[0])
    except ValueError:
        known = ", ".join(f"{k.value} {k.name.lower()}" for k in Kind)
        raise ProtocolError(f"unknown message kind {data[0]} (known kinds: {known})") from None
    payload = data[1:]
    if kind == Kind.AUDIO and not payload:
        raise ProtocolError("audio message without Ogg/Opus payload")
    if kind == Kind.CONTROL:
        if len(payload) != 1 or payload[0] not in _CONTROL_VALUES:
            raise ProtocolError(f"control message must carry one byte in 0..3, got {payload!r}")
    if kind in (Kind.TEXT, Kind.ERROR, Kind.METADATA):
        try:
            payload.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError(f"{kind.name.lower()} payload is not UTF-8: {exc}") from None
    return Message(kind, payload)
