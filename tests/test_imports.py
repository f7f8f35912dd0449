"""The library stays light: no Ray, websockets, faster-whisper or OpenCV at module top."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("ray", "websockets", "faster_whisper", "cv2")

_SCRIPT = """
import importlib, pkgutil, sys
import magtkd_stream
names = [m.name for m in pkgutil.walk_packages(magtkd_stream.__path__, "magtkd_stream.")]
for name in names:
    importlib.import_module(name)
heavy = [m for m in {heavy!r} if m in sys.modules]
print(len(names), ",".join(heavy))
"""


def test_library_imports_without_heavy_dependencies() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT.format(heavy=HEAVY)], capture_output=True, text=True, check=True
    ).stdout.split()
    count = int(out[0])
    loaded = out[1] if len(out) > 1 else ""
    assert count >= 5, "walked too few modules: the check would prove nothing"
    assert loaded == "", f"module-top imports of {loaded} in magtkd_stream"


def _imports(package: str) -> list[tuple[str, str, int]]:
    """(module file, imported module, line) for every import statement of a top-level package, lazy ones too."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = []
    for path in sorted((root / package).rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                out += [(str(path.relative_to(root)), a.name, node.lineno) for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [f"{node.module}.{a.name}" for a in node.names]
                out += [(str(path.relative_to(root)), n, node.lineno) for n in names]
    return out


# The library's CLI dispatches to the service (actors/) lazily: the one place the library reaches up.
LIBRARY_EXCEPTIONS = {"magtkd_stream/cli.py"}


def test_the_layers_import_only_downwards() -> None:
    """magtkd_stream <- training, actors <- demo: the library imports neither actors nor training (but its CLI's
    lazy dispatch), training and actors never import each other, and demo uses only public names."""
    found = {pkg: _imports(pkg) for pkg in ("magtkd_stream", "training", "actors", "demo")}
    assert all(found.values()), "walked no imports: the check would prove nothing"
    up = [(f, m, n) for f, m, n in found["magtkd_stream"] if m.split(".")[0] in ("actors", "training", "demo")
          and f not in LIBRARY_EXCEPTIONS]
    assert not up, f"the library imports the layers above it: {up}"
    across = [(f, m, n) for f, m, n in found["training"] if m.split(".")[0] in ("actors", "demo")]
    across += [(f, m, n) for f, m, n in found["actors"] if m.split(".")[0] in ("training", "demo")]
    assert not across, f"training and actors import each other (or demo): {across}"
    private = [(f, m, n) for f, m, n in found["demo"] if m.split(".")[0] in ("magtkd_stream", "training", "actors")
               and any(part.startswith("_") and not part.startswith("__") for part in m.split(".")[1:])]
    assert not private, f"demo imports private names: {private}"


def _module_graph(package: str) -> dict[str, set[str]]:
    """module -> modules of the package it imports when it is first imported (module-level statements only)."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    files = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        files[".".join(parts)] = path
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in tree.body:  # lazy imports inside functions are not edges of the import-time graph
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in files else node.module
                           for a in node.names]
            graph[name].update(t for t in targets if t in files and t != name)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle of the graph (a list of modules, first == last), or [] when there is none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return []

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return []


def test_the_cycle_finder_finds_a_planted_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) == []


def test_the_library_has_no_import_cycle() -> None:
    """A module-level import cycle works only in some import orders; the library has none."""
    graph = _module_graph("magtkd_stream")
    assert len(graph) > 20 and sum(map(len, graph.values())) > 20, "walked too little: the check would prove nothing"
    assert _cycle(graph) == []
