"""duplex-lm: the Moshi speech-text language model (temporal + depth transformer).

::

    from duplex.lm import LMGen, load_checkpoint

    bundle = load_checkpoint("kyutai/moshiko-pytorch-bf16")
    lm = bundle.lm(dtype=torch.bfloat16)
    gen = LMGen.from_config(lm)
"""

from duplex.lm.checkpoint import CheckpointBundle, load_checkpoint
from duplex.lm.config import GenerationConfig, LMConfig
from duplex.lm.generate import LMGen
from duplex.lm.model import LMModel, LMOutput
from duplex.lm.registry import BACKBONES
from duplex.lm.tokenizer import TextTokenizer

__version__ = "0.1.0"

__all__ = [
    "BACKBONES",
    "CheckpointBundle",
    "GenerationConfig",
    "LMConfig",
    "LMGen",
    "LMModel",
    "LMOutput",
    "TextTokenizer",
    "__version__",
    "load_checkpoint",
]
