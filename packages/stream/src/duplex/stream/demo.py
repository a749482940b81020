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

import os
import subprocess
from pathlib import Path

DEMO_VERSION = "3"  # bump when the demo changes: the cached copy is rebuilt
DEMO_SEED = 1234
TEXT_VOCAB = 64
MIMI_CODEBOOKS = 4


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
    from duplex.lm.config import LMConfig
    from duplex.lm.random_checkpoint import write_random_checkpoint

    return write_random_checkpoint(directory, LMConfig.model_validate(demo_lm_config()), seed=seed)


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
