"""The generic registry: names, entry-point plugins, clear errors."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
from duplex.codec.registry import Registry, UnknownComponentError


def _install_fake_distribution(root: Path, group: str, name: str, module: str, attr: str) -> None:
    """Write a package and its dist-info so importlib.metadata sees an installed plugin."""
    (root / f"{module}.py").write_text(
        textwrap.dedent(
            f"""
            class {attr}:
                plugin_name = {name!r}
            """
        )
    )
    dist_info = root / f"{module}_plugin-0.0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}-plugin\nVersion: 0.0.1\n")
    (dist_info / "entry_points.txt").write_text(f"[{group}]\n{name} = {module}:{attr}\n")


def test_plugin_registered_through_entry_point_resolves_by_name(tmp_path, monkeypatch):
    _install_fake_distribution(tmp_path, "duplex.test_things", "shiny", "shiny_plugin", "ShinyThing")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = Registry("thing", "duplex.test_things")

    assert "shiny" in registry.names()
    component = registry.get("shiny")
    assert component.plugin_name == "shiny"
    assert component.__module__ == "shiny_plugin"
    sys.modules.pop("shiny_plugin", None)


def test_real_registries_see_plugins(tmp_path, monkeypatch):
    from duplex.lm.registry import BACKBONES

    _install_fake_distribution(tmp_path, "duplex.backbones", "toy-backbone", "toy_backbone", "ToyBackbone")
    monkeypatch.syspath_prepend(str(tmp_path))
    BACKBONES.refresh()
    try:
        assert BACKBONES.get("toy-backbone").plugin_name == "toy-backbone"
    finally:
        BACKBONES.refresh()
        sys.modules.pop("toy_backbone", None)


def test_code_registration_and_decorator():
    registry: Registry = Registry("widget", "duplex.test_widgets_none")

    @registry.register("square")
    def square(x: int) -> int:
        return x * x

    registry.register("cube", lambda x: x**3)
    assert registry.get("square")(3) == 9
    assert registry.get("cube")(2) == 8
    assert registry.names() == ["cube", "square"]
    with pytest.raises(ValueError, match="already registered"):
        registry.register("square", lambda x: x)


def test_unknown_name_lists_known_ones():
    registry: Registry = Registry("widget", "duplex.test_widgets_none")
    registry.register("alpha", object())
    registry.register("beta", object())
    with pytest.raises(UnknownComponentError) as excinfo:
        registry.get("gamma")
    message = str(excinfo.value)
    assert "gamma" in message and "alpha, beta" in message and "duplex.test_widgets_none" in message


def test_builtin_components_are_registered_through_entry_points():
    from duplex.codec import Mimi
    from duplex.codec.registry import CODECS
    from duplex.lm.data.format import load_dataset
    from duplex.lm.registry import BACKBONES, DATA_SOURCES

    assert CODECS.get("mimi") is Mimi
    assert "helium" in BACKBONES.names()
    assert DATA_SOURCES.get("moshi-finetune") is load_dataset
