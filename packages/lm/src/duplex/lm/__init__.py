"""duplex-lm: the Moshi speech-text language model (temporal + depth transformer)."""

from duplex.lm.registry import BACKBONES

__version__ = "0.1.0"

__all__ = ["BACKBONES", "__version__"]
