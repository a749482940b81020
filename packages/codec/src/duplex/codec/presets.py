"""Base class for pydantic configs with named presets.

A config class lists its presets with :meth:`PresetConfig.preset` and builds one with
:meth:`PresetConfig.from_preset`. Unknown fields are rejected, and a bad value fails with an
error naming the field and the value.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
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

    @classmethod
    def from_preset_with(cls, name: str, settings: Mapping[str, Any], **overrides: Any) -> Self:
        """Preset ``name`` with ``settings`` (nested, as a config file holds them) merged in field by
        field: ``{"codec": {"seanet": {"n_filters": 8}}}`` changes that one field of the preset's
        codec. ``overrides`` then replace whole top-level fields, as in :meth:`from_preset`."""
        merged = _deep_merge(cls.from_preset(name).model_dump(), settings)
        return cls.model_validate({**merged, **overrides})


def _deep_merge(base: dict[str, Any], settings: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in settings.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged
