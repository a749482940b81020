"""duplex-stream: the full-duplex engine, server and clients."""

__version__ = "0.1.0"
