"""Shared streaming building blocks of duplex: convolutions, attention, transformer (docs/nn-api.md)."""

from duplex.codec.nn.conv import StreamingConv1d, StreamingConvTranspose1d

__all__ = [
    "StreamingConv1d",
    "StreamingConvTranspose1d",
]
