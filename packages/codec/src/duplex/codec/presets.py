"""Base class for pydantic configs with named presets.

A config class lists its presets with :meth:`PresetConfig.preset` and builds one with
:meth:`PresetConfig.from_preset`. Unknown fields are rejected, and a bad value fails with an
error naming the field and the value.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict


class PresetConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())

    _presets: ClassVar[dict[str, Callable[[], dict[str, Any]]]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._presets = {}

    @classmethod
    def preset(cls, name: str) -> Callable[[Callable[[], dict[str, Any]]], Callable[[], dict[str, Any]]]:
        """Decorator registering a function returning the field overrides of preset ``name``."""

        def add(fn: Callable[[], dict[str, Any]]) -> Callable[[], dict[str, Any]]:
            cls._presets[name] = fn
            return fn

        return add

    @classmethod
    def preset_names(cls) -> list[str]:
        return sorted(cls._presets)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> Self:
        if name not in cls._presets:
            known = ", ".join(cls.preset_names()) or "none"
            raise KeyError(f"unknown {cls.__name__} preset {name!r}; known presets: {known}")
        return cls(**{**cls._presets[name](), **overrides})
