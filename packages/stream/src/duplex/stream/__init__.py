"""duplex-stream: the full-duplex engine, server and clients.

Names are imported on first use, so ``import duplex.stream`` stays light (no torch until needed).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from duplex.codec.interfaces import Pipeline, StepOutput
    from duplex.stream.client import talk
    from duplex.stream.engine import AsyncEngine, DuplexEngine, Reply
    from duplex.stream.offline import run_conversation
    from duplex.stream.pipeline import MoshiPipeline
    from duplex.stream.server import DuplexServer, ServerConfig
    from duplex.stream.slots import SamplingParams, ServerFull

__version__ = "0.1.0"

_LAZY = {
    "AsyncEngine": "duplex.stream.engine",
    "DuplexEngine": "duplex.stream.engine",
    "Reply": "duplex.stream.engine",
    "DuplexServer": "duplex.stream.server",
    "ServerConfig": "duplex.stream.server",
    "Pipeline": "duplex.codec.interfaces",
    "MoshiPipeline": "duplex.stream.pipeline",
    "StepOutput": "duplex.codec.interfaces",
    "SamplingParams": "duplex.stream.slots",
    "ServerFull": "duplex.stream.slots",
    "run_conversation": "duplex.stream.offline",
    "talk": "duplex.stream.client",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'duplex.stream' has no attribute {name!r}")


__all__ = [
    "AsyncEngine",
    "DuplexEngine",
    "DuplexServer",
    "Pipeline",
    "MoshiPipeline",
    "Reply",
    "SamplingParams",
    "ServerConfig",
    "ServerFull",
    "StepOutput",
    "__version__",
    "run_conversation",
    "talk",
]
