"""One generic registry: names -> components, filled in code or through Python entry points.

Every component kind (codecs, LM backbones, kernels, data sources, distillation teachers) has
one :class:`Registry`. A separately installed package adds a component by declaring an entry
point in the registry's group, e.g. in its ``pyproject.toml``::

    [project.entry-points."duplex.backbones"]
    my-backbone = "my_package.backbone:MyBackbone"

and ``BACKBONES.get("my-backbone")`` then returns ``MyBackbone`` without touching duplex.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from importlib.metadata import EntryPoint, entry_points
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownComponentError(KeyError):
    """Raised when a registry has no component of the requested name."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the message readable.
        return str(self.args[0])


class Registry(Generic[T]):
    """Resolves a name to a component; entry points in ``group`` are read on first use."""

    def __init__(self, kind: str, group: str) -> None:
        self.kind = kind
        self.group = group
        self._components: dict[str, T] = {}
        self._entry_points: dict[str, EntryPoint] | None = None
        self._listeners: list[Callable[[], None]] = []

    def accept(self, name: str, component: T) -> T:
        """What is stored for ``component`` registered as ``name`` (by code or an entry point);
        a registry of components with a declared interface checks it here."""
        return component

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` whenever a component is registered or the entry points are re-read
        (so a cached choice among the components is made again)."""
        self._listeners.append(listener)

    def _changed(self) -> None:
        for listener in self._listeners:
            listener()

    def register(self, name: str, component: T | None = None) -> Callable[[T], T] | T:
        """Register ``component`` under ``name``; without a component, acts as a decorator."""

        def add(obj: T) -> T:
            accepted = self.accept(name, obj)
            existing = self._components.get(name)
            if existing is not None and existing is not accepted and existing != accepted:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._components[name] = accepted
            self._changed()
            return obj

        return add if component is None else add(component)

    def _discovered(self) -> dict[str, EntryPoint]:
        if self._entry_points is None:
            self._entry_points = {ep.name: ep for ep in entry_points(group=self.group)}
        return self._entry_points

    def refresh(self) -> None:
        """Forget cached entry points, e.g. after installing a plugin in a running process."""
        self._entry_points = None
        self._changed()

    def unregister(self, name: str) -> None:
        """Remove a component registered in code (tests, a plugin being reloaded)."""
        self._components.pop(name, None)
        self._changed()

    def get(self, name: str) -> T:
        if name in self._components:
            return self._components[name]
        entry_point = self._discovered().get(name)
        if entry_point is None:
            known = ", ".join(self.names()) or "none"
            raise UnknownComponentError(
                f"unknown {self.kind} {name!r}; known {self.kind}s: {known} "
                f"(plugins add more through the {self.group!r} entry-point group)"
            )
        component = self.accept(name, entry_point.load())
        self._components[name] = component
        return component

    def names(self) -> list[str]:
        return sorted(set(self._components) | set(self._discovered()))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name in self._components or name in self._discovered())

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, group={self.group!r}, names={self.names()})"


CODECS: Registry = Registry("codec", "duplex.codecs")
TEACHERS: Registry = Registry("distillation teacher", "duplex.teachers")

ALL_REGISTRIES: list[Registry] = [CODECS, TEACHERS]


def add_registry(registry: Registry) -> Registry:
    """Make a registry of another package visible to ``duplex info`` and friends."""
    if registry not in ALL_REGISTRIES:
        ALL_REGISTRIES.append(registry)
    return registry
