from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from duplex.demo.checkpoints import build_tiny_checkpoint
from duplex.stream.audio import load_mono

# The test modules import their helpers (stream_helpers.py) from this directory.
sys.path.insert(0, str(Path(__file__).parent))

SAMPLE_RATE = 24_000


@pytest.fixture(scope="session")
def demo_checkpoint(tmp_path_factory) -> Path:
    return build_tiny_checkpoint(tmp_path_factory.mktemp("demo") / "tiny")


@pytest.fixture(scope="session")
def speech_wav(tmp_path_factory) -> Path:
    """About 2.5 s of espeak-ng speech (22.05 kHz, as espeak writes it)."""
    path = tmp_path_factory.mktemp("speech") / "hello.wav"
    subprocess.run(["espeak-ng", "-w", str(path), "Hello there, how are you today?"], check=True)
    return path


@pytest.fixture(scope="session")
def speech(speech_wav) -> np.ndarray:
    return load_mono(speech_wav, SAMPLE_RATE)
