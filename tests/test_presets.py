"""Pydantic configs with named presets fail loudly on bad input."""

from __future__ import annotations

import pytest
from duplex.codec.presets import PresetConfig
from pydantic import ValidationError, field_validator


class ToyConfig(PresetConfig):
    dim: int = 8
    name: str = "toy"

    @field_validator("dim")
    @classmethod
    def _positive(cls, value: int) -> int:
        if value <= 0:
            raise ValueError("must be positive")
        return value


@ToyConfig.preset("wide")
def _wide() -> dict:
    return {"dim": 64, "name": "wide"}


def test_preset_builds_and_accepts_overrides():
    assert ToyConfig.from_preset("wide").dim == 64
    assert ToyConfig.from_preset("wide", dim=32).dim == 32
    assert ToyConfig.preset_names() == ["wide"]


def test_unknown_preset_lists_known():
    with pytest.raises(KeyError, match="known presets: wide"):
        ToyConfig.from_preset("narrow")


def test_invalid_value_names_field_and_value():
    with pytest.raises(ValidationError) as excinfo:
        ToyConfig(dim=-3)
    text = str(excinfo.value)
    assert "dim" in text and "-3" in text


def test_unknown_field_is_rejected_by_name():
    with pytest.raises(ValidationError, match="colour"):
        ToyConfig(colour="red")
