from __future__ import annotations

from pathlib import Path

import pytest
from duplex.demo.checkpoints import build_tiny_checkpoint


@pytest.fixture(scope="session")
def demo_checkpoint(tmp_path_factory) -> Path:
    """The tiny random checkpoint in the official layout."""
    return build_tiny_checkpoint(tmp_path_factory.mktemp("demo") / "tiny")
