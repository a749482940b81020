"""duplex-codec: the Mimi streaming neural audio codec, weight-compatible with the official checkpoints.

``Mimi`` and the audio helpers are imported on first use, so ``import duplex.codec`` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from duplex.codec.config import MimiConfig
from duplex.codec.presets import PresetConfig
from duplex.codec.registry import CODECS, Registry, UnknownComponentError
from duplex.codec.streaming import StreamingModule, StreamingState

if TYPE_CHECKING:
    from duplex.codec.audio import load_audio, save_audio
    from duplex.codec.checkpoint import CheckpointError
    from duplex.codec.mimi import Mimi

__version__ = "0.1.0"

_LAZY = {
    "Mimi": "duplex.codec.mimi",
    "load_audio": "duplex.codec.audio",
    "save_audio": "duplex.codec.audio",
    "CheckpointError": "duplex.codec.checkpoint",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'duplex.codec' has no attribute {name!r}")


__all__ = [
    "CODECS",
    "CheckpointError",
    "Mimi",
    "MimiConfig",
    "PresetConfig",
    "Registry",
    "StreamingModule",
    "StreamingState",
    "UnknownComponentError",
    "__version__",
    "load_audio",
    "save_audio",
]
