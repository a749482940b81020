"""Module boundaries of the four packages, read from the sources: every import counts, at module
level, inside functions (lazy) and under ``TYPE_CHECKING``.

* no import cycle between modules, not even through a lazy import inside a function;
* imports only go downward between packages: codec < lm < stream < demo < cli;
* no module imports a name starting with ``_`` from another package (share it publicly instead).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("codec", "lm", "stream", "demo", "cli")  # a package may import only from itself and those before it


def _modules() -> dict[str, Path]:
    """``duplex.<package>.<...>`` -> source file, for every module of the four packages."""
    modules = {}
    for package in LAYERS:
        src = ROOT / "packages" / package / "src"
        for path in sorted((src / "duplex" / package).rglob("*.py")):
            parts = path.relative_to(src).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


MODULES = _modules()


def _package(module: str) -> str:
    return module.split(".")[1]


def _imports(module: str, source: str, is_package: bool = False) -> list[tuple[str, list[str], int]]:
    """``(imported module, names taken from it, line)`` for every import in ``source``, at any depth.

    ``from duplex.x import y`` where ``duplex.x.y`` is a module counts as importing that module (not
    ``duplex.x``: a parent package is always imported first, by any import of its submodules)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([base] if base else []))
            names = [alias.name for alias in node.names]
            submodules = [name for name in names if f"{base}.{name}" in MODULES]
            found += [(f"{base}.{name}", [], node.lineno) for name in submodules]
            if rest := [name for name in names if name not in submodules]:
                found.append((base, rest, node.lineno))
    return [(target, names, line) for target, names, line in found if target.split(".")[0] == "duplex"]


def _resolve(target: str) -> str | None:
    """The module of ours that ``target`` names (or its closest parent that is one)."""
    while target and target not in MODULES:
        target = target.rpartition(".")[0]
    return target or None


IMPORTS = {
    module: _imports(module, path.read_text(), path.name == "__init__.py") for module, path in MODULES.items()
}


def _where(module: str, line: int) -> str:
    return f"{MODULES[module].relative_to(ROOT)}:{line}"


def test_the_walk_sees_every_package_and_lazy_imports():
    assert {_package(module) for module in MODULES} == set(LAYERS)
    source = (
        "import duplex.codec.audio\n"
        "from . import format\n"
        "def f():\n"
        "    from duplex.codec import checkpoint, CheckpointError\n"
        "    from ..training.run import _hidden\n"
    )
    assert _imports("duplex.lm.data.synth", source) == [
        ("duplex.codec.audio", [], 1),
        ("duplex.lm.data.format", [], 2),
        ("duplex.codec.checkpoint", [], 4),
        ("duplex.codec", ["CheckpointError"], 4),
        ("duplex.lm.training.run", ["_hidden"], 5),
    ]


def test_imports_only_go_downward_between_packages():
    upward = []
    for module, imports in IMPORTS.items():
        for target, _, line in imports:
            resolved = _resolve(target)
            if resolved is None:
                upward.append(f"{_where(module, line)}: {target} is not a module of the four packages")
            elif LAYERS.index(_package(resolved)) > LAYERS.index(_package(module)):
                upward.append(f"{_where(module, line)}: {_package(module)} imports {resolved}")
    assert not upward, "imports going up:\n" + "\n".join(upward)


def test_no_private_names_across_packages():
    private = []
    for module, imports in IMPORTS.items():
        for target, names, line in imports:
            resolved = _resolve(target)
            if resolved is None or _package(resolved) == _package(module):
                continue
            hidden = [part for part in target.split(".") if part.startswith("_") and part != "__init__"]
            hidden += [name for name in names if name.startswith("_")]
            if hidden:
                private.append(f"{_where(module, line)}: {', '.join(hidden)} from {target}")
    assert not private, "private names imported from another package:\n" + "\n".join(private)


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycles_between_modules():
    graph: dict[str, set[str]] = {module: set() for module in MODULES}
    for module, imports in IMPORTS.items():
        for target, _, _ in imports:
            resolved = _resolve(target)
            if resolved is not None and resolved != module:
                graph[module].add(resolved)
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_checks_catch_what_they_are_for():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
    assert _resolve("duplex.codec.checkpoint.CheckpointError") == "duplex.codec.checkpoint"
