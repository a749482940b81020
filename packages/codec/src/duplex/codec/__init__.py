"""duplex-codec: the Mimi streaming neural audio codec, weight-compatible with the official checkpoints."""

from duplex.codec.presets import PresetConfig
from duplex.codec.registry import CODECS, Registry, UnknownComponentError
from duplex.codec.streaming import StreamingModule, StreamingState

__version__ = "0.1.0"

__all__ = [
    "CODECS",
    "PresetConfig",
    "Registry",
    "StreamingModule",
    "StreamingState",
    "UnknownComponentError",
    "__version__",
]
