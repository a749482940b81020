"""Fixtures shared by the CLI tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def built_lms(monkeypatch) -> list:
    """The LMs a command builds, as it builds them (to see, e.g., how their weights are stored)."""
    from duplex.lm.checkpoint import CheckpointBundle

    built, original = [], CheckpointBundle.lm

    def lm(self, *args, **kwargs):
        built.append(original(self, *args, **kwargs))
        return built[-1]

    monkeypatch.setattr(CheckpointBundle, "lm", lm)
    return built
