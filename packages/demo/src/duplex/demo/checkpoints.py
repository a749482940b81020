"""The checkpoints and the example input that duplex ships.

- The trained demo (``demo_model/``, written by ``examples/train_demo.py --ship``): a small Mimi
  and a small Moshi LM trained from nothing to answer a few dozen scripted questions
  (docs/architecture.md §8), with the ``results.json`` of the run that made it: the commands'
  default.
- A tiny checkpoint with random weights (``build_tiny_checkpoint``, from a fixed seed): the
  default where no trained demo is shipped, and the one of the tests and benchmarks. It runs the
  whole pipeline at toy size on a laptop CPU, built in a second, but it babbles.

Both hold what an official checkpoint holds:

    config.json                   LM config + loader keys (mimi_name, mimi_config_name, tokenizer_name)
    model.safetensors             LM weights (official key names)
    mimi.safetensors              Mimi weights (official key names)
    mimi_config.json              the Mimi config, in the reference's nested form
    tokenizer.model               a SentencePiece model (<unk> 0, <s> 1, </s> 2, <pad> 3)
"""

from __future__ import annotations

import os
from pathlib import Path

BUNDLED_DEMO = Path(__file__).parent / "demo_model"
EXAMPLE_VOICE = "en-us+Annie"  # a held-out voice of duplex data speech / conversations
EXAMPLE_RATE = 24000
EXAMPLE_ANSWER_ROOM_S = 4.0
TINY_SEED = 1234
TINY_VERSION = "3"  # bump when the tiny checkpoint changes: the cached copy is rebuilt
TEXT_VOCAB = 64
MIMI_CODEBOOKS = 4


def tiny_lm_config() -> dict:
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


def build_tiny_checkpoint(directory: str | Path, seed: int = TINY_SEED) -> Path:
    """Write the tiny checkpoint to ``directory`` (same seed, same files); returns the directory."""
    from duplex.demo.random_checkpoint import write_random_checkpoint
    from duplex.lm.config import LMConfig

    return write_random_checkpoint(directory, LMConfig.model_validate(tiny_lm_config()), seed=seed)


def cache_root() -> Path:
    """Where duplex keeps what it builds once for the user: ``$XDG_CACHE_HOME/duplex`` (default
    ``~/.cache/duplex``)."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "duplex"


def default_checkpoint() -> Path:
    """What the commands use without ``--checkpoint``: the trained demo once one is shipped in
    ``demo_model/`` (``examples/train_demo.py --ship``), else the random tiny checkpoint, built once
    into the user's cache directory."""
    if (BUNDLED_DEMO / "config.json").is_file():
        return BUNDLED_DEMO
    cache = cache_root() / f"demo-tiny-v{TINY_VERSION}"
    if not (cache / "config.json").is_file():
        partial = cache.with_name(cache.name + f".partial-{os.getpid()}")
        build_tiny_checkpoint(partial)
        try:
            partial.rename(cache)
        except OSError:  # another process got there first
            pass
    return cache


def example_wav(path: str | Path = "examples/hello.wav") -> Path:
    """The demo's first scripted question, "Hello, how are you today?", spoken by espeak-ng in a voice
    the demo never heard, followed by room for the answer (written once, if missing): 24 kHz mono
    over a quiet noise floor, as the demo's users were recorded."""
    path = Path(path)
    if path.is_file():
        return path
    import numpy as np
    import soundfile
    import torch
    from duplex.codec.audio import resample
    from duplex.demo.data.conversations import SCRIPT
    from duplex.demo.data.speech.espeak import Prosody, speak
    from duplex.demo.data.speech.noise import noise_floor

    wav, rate = speak(SCRIPT[0].question, EXAMPLE_VOICE, Prosody(rate_wpm=160))
    speech = resample(torch.from_numpy(wav), rate, EXAMPLE_RATE).numpy()
    speech *= 0.1 / max(float(np.abs(speech).max()), 1e-9)
    lead, room = round(0.5 * EXAMPLE_RATE), round(EXAMPLE_ANSWER_ROOM_S * EXAMPLE_RATE)
    audio = noise_floor(lead + len(speech) + room, -60.0, 0.5, np.random.default_rng(0), EXAMPLE_RATE)
    audio[lead : lead + len(speech)] += speech
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + f".partial-{os.getpid()}.wav")
    soundfile.write(str(partial), audio, EXAMPLE_RATE, subtype="PCM_16")
    partial.replace(path)
    return path
