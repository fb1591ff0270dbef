"""The import graph of ``mtlbench/``: no cycles, no upward imports (function-level imports included).

Run as a script (``python tests/test_imports.py``) to print the graph's figures: module count, edges, cycles
and upward imports.
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mtlbench"

# Layers, lowest first: a module may import its own layer and the layers below it, never one above.
# A top-level module or package not listed here fails the test (place it when you add it).
LAYERS: dict[str, int] = {
    "mtlbench.errors": 0,
    "mtlbench.log": 0,
    "mtlbench.version": 0,
    "mtlbench.registry": 0,
    "mtlbench.factory": 0,
    "mtlbench.stages": 0,
    "mtlbench.config": 1,
    "mtlbench.metrics": 1,
    "mtlbench.rundir": 1,
    "mtlbench.data": 2,
    "mtlbench.datasets": 3,
    "mtlbench.models": 3,
    "mtlbench.weighting": 3,
    "mtlbench.analysis": 4,
    "mtlbench.training": 5,
    "mtlbench.report": 6,
    "mtlbench.cli": 7,
    "mtlbench": 8,  # the package's __init__: the public API re-exports
}


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (packages by their ``__init__``)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _resolve(name: str, mods: dict[str, Path]) -> str | None:
    """The most specific known module a dotted name lies in (``mtlbench.x.y.Cls`` -> ``mtlbench.x.y``)."""
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name or None


def _type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def import_nodes(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement that runs: module level, in functions and classes; not under ``if TYPE_CHECKING``."""
    out: list[ast.Import | ast.ImportFrom] = []
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out.append(node)
        children = node.orelse if _type_checking(node) else ast.iter_child_nodes(node)
        stack.extend(children)
    return out


def edges() -> dict[str, set[str]]:
    """Module -> the mtlbench modules it imports, wherever in the file the import is written."""
    mods = modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        is_pkg = path.name == "__init__.py"
        for node in import_nodes(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    pkg = mod if is_pkg else mod.rpartition(".")[0]
                    for _ in range(node.level - 1):
                        pkg = pkg.rpartition(".")[0]
                    base = f"{pkg}.{base}" if base else pkg
                targets = [f"{base}.{a.name}" for a in node.names]
            for t in targets:
                if t.split(".")[0] != "mtlbench":
                    continue
                dst = _resolve(t, mods)
                if dst and dst != mod:
                    graph[mod].add(dst)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def layer(mod: str) -> int:
    """The layer of a module: that of its longest listed prefix."""
    name = mod
    while name not in LAYERS:
        if "." not in name:
            raise KeyError(f"{mod} is in no layer: add it (or its package) to LAYERS in tests/test_imports.py")
        name = name.rpartition(".")[0]
    return LAYERS[name]


def upward(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Imports from a lower layer into a higher one."""
    return sorted((a, b) for a, targets in graph.items() for b in targets if layer(b) > layer(a))


def summary() -> dict:
    graph = edges()
    return {
        "modules": len(graph),
        "edges": sum(len(t) for t in graph.values()),
        "cycles": cycles(graph),
        "upward": upward(graph),
    }


def test_every_module_has_a_layer():
    for mod in modules():
        layer(mod)


def test_no_import_cycles():
    found = cycles(edges())
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_no_upward_imports():
    found = upward(edges())
    assert not found, "upward imports:\n" + "\n".join(f"{a} -> {b}" for a, b in found)


def test_data_never_reaches_training_or_report():
    graph = edges()
    bad = [
        (a, b)
        for a, t in graph.items()
        if a.startswith("mtlbench.data")
        for b in t
        if b.startswith(("mtlbench.training", "mtlbench.report", "mtlbench.cli"))
    ]
    assert not bad, bad


def test_walker_sees_function_level_and_relative_imports(tmp_path, monkeypatch):
    """The walker itself: a lazy import inside a function and a relative import both count."""
    pkg = tmp_path / "mtlbench"
    (pkg / "a").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a" / "__init__.py").write_text("")
    (pkg / "a" / "x.py").write_text("def f():\n    from mtlbench.b import thing\n")
    (pkg / "b.py").write_text(
        "from typing import TYPE_CHECKING\nfrom .a.x import f\nif TYPE_CHECKING:\n    import mtlbench.c\n"
    )
    (pkg / "c.py").write_text("")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", pkg)
    graph = edges()
    assert graph["mtlbench.a.x"] == {"mtlbench.b"}
    assert graph["mtlbench.b"] == {"mtlbench.a.x"}
    assert cycles(graph) == [["mtlbench.a.x", "mtlbench.b"]]


if __name__ == "__main__":
    print(json.dumps(summary(), indent=1))
