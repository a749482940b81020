"""duplex-lm: the Moshi speech-text language model (temporal + depth transformer).

::

    from duplex.lm import LMGen, load_checkpoint

    bundle = load_checkpoint("kyutai/moshiko-pytorch-bf16")
    lm = bundle.lm(dtype=torch.bfloat16)
    gen = LMGen.from_config(lm)

    words = Transcriber.from_checkpoint("kyutai/stt-1b-en_fr").transcribe([pcm])[0]
    speech = Synthesizer.from_checkpoint("kyutai/tts-1.6b-en_fr").generate(["Hi!"], [["voice"]])[0]
"""

from duplex.lm.checkpoint import CheckpointBundle, load_checkpoint
from duplex.lm.config import GenerationConfig, LMConfig
from duplex.lm.generate import LMGen
from duplex.lm.model import LMModel, LMOutput
from duplex.lm.registry import BACKBONES
from duplex.lm.synthesizer import Synthesizer
from duplex.lm.tokenizer import TextTokenizer
from duplex.lm.transcriber import Transcriber
from duplex.lm.translator import Translator

__version__ = "0.1.0"

__all__ = [
    "BACKBONES",
    "CheckpointBundle",
    "GenerationConfig",
    "LMConfig",
    "LMGen",
    "LMModel",
    "LMOutput",
    "Synthesizer",
    "TextTokenizer",
    "Transcriber",
    "Translator",
    "__version__",
    "load_checkpoint",
]
