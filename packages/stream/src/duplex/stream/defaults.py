"""The checkpoint the commands use without ``--checkpoint``: the one a package registers in the
``duplex.default_checkpoints`` entry-point group (``duplex-demo`` registers its bundled demo)."""

from __future__ import annotations

from pathlib import Path

from duplex.codec.registry import Registry, add_registry

DEFAULT_CHECKPOINTS: Registry = add_registry(Registry("default checkpoint", "duplex.default_checkpoints"))


def default_checkpoint() -> Path:
    """The registered default checkpoint's directory (the first by name when several are)."""
    names = DEFAULT_CHECKPOINTS.names()
    if not names:
        raise FileNotFoundError(
            "no default checkpoint is installed: pass --checkpoint DIR (or a Hugging Face repo id), "
            "or install duplex-demo for the bundled demo"
        )
    return Path(DEFAULT_CHECKPOINTS.get(names[0])())
