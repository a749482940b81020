"""A tiny checkpoint in the official layout, for tests, benchmarks and the quickstart.

The weights are random (from a fixed seed), so the model babbles; what it shows is the whole
pipeline (Mimi, the LM, the tokenizer, the engine, the server) running end to end on a laptop CPU
without downloading anything. The directory holds what an official checkpoint holds:

    config.json                   LM config + loader keys (mimi_name, mimi_config_name, tokenizer_name)
    model.safetensors             LM weights (official key names)
    mimi.safetensors              Mimi weights (official key names)
    mimi_config.json              the Mimi config, in the reference's nested form
    tokenizer.model               a SentencePiece model (<unk> 0, <s> 1, </s> 2, <pad> 3)
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import torch

DEMO_VERSION = "2"  # bump when the demo changes: the cached copy is rebuilt
DEMO_SEED = 1234
TEXT_VOCAB = 64
MIMI_CODEBOOKS = 4

# Words the tokenizer learns its pieces from (its vocabulary is all it needs to be realistic).
_CORPUS = (
    "hello there how are you doing today",
    "i would like to talk about the weather",
    "it is a fine day to go outside for a walk",
    "what did you have for breakfast this morning",
    "the quick brown fox jumps over the lazy dog",
    "can you hear me well enough on this line",
)


def demo_lm_config() -> dict:
    """The official LM structure at toy size, matched to the tiny Mimi (32 bins, 8 codebooks)."""
    from duplex.lm.config import LMConfig

    config = LMConfig.from_preset(
        "tiny",
        text_card=TEXT_VOCAB,
        card=32,
        n_q=2 * MIMI_CODEBOOKS,
        dep_q=MIMI_CODEBOOKS,
        delays=[0, 0] + [1] * (MIMI_CODEBOOKS - 1) + [0] + [1] * (MIMI_CODEBOOKS - 1),
        context=50,
    )
    return config.to_dict()


def build_demo_checkpoint(directory: str | Path, seed: int = DEMO_SEED) -> Path:
    """Write the tiny checkpoint to ``directory`` (same seed, same files); returns the directory."""
    from duplex.codec import Mimi, MimiConfig
    from duplex.codec.calibration import calibrate_untrained
    from duplex.lm.config import LMConfig
    from duplex.lm.data.text_tokenizer import train_tokenizer
    from duplex.lm.model import LMModel
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        mimi_config = MimiConfig.from_preset("tiny")
        mimi = Mimi(mimi_config, numerics="reference")
        calibrate_untrained(mimi, seed=seed)
        lm_fields = demo_lm_config()
        lm = LMModel(LMConfig.model_validate(lm_fields))
    finally:
        torch.random.set_rng_state(generator_state)

    mimi.save_pretrained(directory / "mimi.safetensors")
    (directory / "mimi_config.json").write_text(json.dumps(mimi_config.to_dict(), indent=2) + "\n")
    weights = {k: v.detach().float().contiguous() for k, v in lm.state_dict().items()}
    save_file(weights, str(directory / "model.safetensors"), metadata={"format": "pt"})
    train_tokenizer(
        _CORPUS * 4,
        directory / "tokenizer.model",
        TEXT_VOCAB,
        model_type="bpe",
        normalization="identity",
        num_threads=1,
    )
    config = {
        **lm_fields,
        "moshi_name": "model.safetensors",
        "mimi_name": "mimi.safetensors",
        "mimi_config_name": "mimi_config.json",
        "tokenizer_name": "tokenizer.model",
    }
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return directory


def cache_root() -> Path:
    """Where duplex keeps what it builds once for the user: ``$XDG_CACHE_HOME/duplex`` (default
    ``~/.cache/duplex``)."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "duplex"


def default_checkpoint() -> Path:
    """The bundled tiny checkpoint, built once into the user's cache directory."""
    cache = cache_root() / f"demo-tiny-v{DEMO_VERSION}"
    if not (cache / "config.json").is_file():
        partial = cache.with_name(cache.name + f".partial-{os.getpid()}")
        build_demo_checkpoint(partial)
        try:
            partial.rename(cache)
        except OSError:  # another process got there first
            pass
    return cache


def example_wav(path: str | Path = "examples/hello.wav") -> Path:
    """An example utterance spoken by espeak-ng (written once, if missing)."""
    path = Path(path)
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        text = "Hello! How are you doing today? I would like to talk about the weather."
        try:
            subprocess.run(["espeak-ng", "-w", str(path), text], check=True, capture_output=True)
        except FileNotFoundError:
            raise RuntimeError(
                "espeak-ng is needed to make the example wav (apt install espeak-ng)"
            ) from None
    return path
