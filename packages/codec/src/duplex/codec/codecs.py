"""Building a codec by the name it is registered under in :data:`~duplex.codec.registry.CODECS`.

Every place that loads a codec goes through :func:`load_codec`, so a codec plugin (entry-point group
``duplex.codecs``, implementing :class:`~duplex.codec.interfaces.AudioCodec`) is used wherever
Mimi is: the LM's checkpoints, training, the servers and the CLI. A checkpoint directory says which
codec its weights are for with the ``codec`` key of its ``config.json`` (default ``mimi``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from duplex.codec.interfaces import AudioCodec, CodecClass
from duplex.codec.registry import CODECS

DEFAULT_CODEC = "mimi"
CODEC_KEY = "codec"  # the config.json key naming a checkpoint's codec


def codec_class(name: str = DEFAULT_CODEC) -> CodecClass:
    """The codec class registered as ``name`` (a one-line error lists the known ones)."""
    return CODECS.get(name)


def declared_codec(source: str | Path) -> str:
    """The codec a local checkpoint directory declares (``config.json``'s ``codec``), else the default.

    A file, a repo id or a directory without the key holds Mimi weights (the official layout)."""
    from duplex.codec.checkpoint import read_json_object

    config = Path(source) / "config.json"
    if not config.is_file():
        return DEFAULT_CODEC
    name = read_json_object(config, "checkpoint config").get(CODEC_KEY, DEFAULT_CODEC)
    if not isinstance(name, str):
        raise ValueError(f"{config}: 'codec' must name a registered codec, got {name!r}")
    return name


def load_codec(source: str | Path, name: str | None = None, **options: Any) -> AudioCodec:
    """The codec ``name`` (default: the one ``source`` declares) loaded from ``source``;
    ``options`` go to its ``from_pretrained`` (``num_codebooks``, ``device``, ``dtype``,
    ``config``, ``numerics``)."""
    return codec_class(name or declared_codec(source)).from_pretrained(source, **options)
