"""The import structure of harness/: rooms in layers along the data flow, no upward import, no import circle.

Every import counts, also those inside functions and under TYPE_CHECKING: a lazy import hides a dependency, it does
not remove it. A new subpackage or top-level module must be placed in LAYERS (the test says so)."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Lowest first: a room may import its own modules and those of rooms listed before it, never after.
LAYERS = ["core", "model", "math", "config", "data", "method", "resolve", "store", "train", "dispatch", "report", "cli"]
# What methods/ may use: a method is written against the method API and the math, never the loop or the dispatch.
METHOD_ROOMS = {"core", "model", "math", "config", "data", "method"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def harness_imports(path: Path, known: set[str]) -> list[tuple[str, int]]:
    """(imported harness module, line) for every import in `path`, resolved to the longest known module name."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            while name.startswith("harness.") and name not in known:
                name = name.rsplit(".", 1)[0]
            if name.startswith("harness."):
                out.append((name, node.lineno))
    return out


def room(module: str) -> str:
    return module.split(".")[1]


def import_graph(root: Path = ROOT) -> dict[str, list[tuple[str, int]]]:
    files = {module_name(p): p for p in (root / "harness").rglob("*.py")}
    return {m: [(t, line) for t, line in harness_imports(p, set(files)) if t != m] for m, p in files.items()}


def upward_imports(graph: dict[str, list[tuple[str, int]]], layers: list[str]) -> list[str]:
    rank = {r: i for i, r in enumerate(layers)}
    return [f"{m} (line {line}) imports {t}: room {room(m)!r} is below {room(t)!r}"
            for m, targets in graph.items() if m != "harness"
            for t, line in targets if rank[room(t)] > rank[room(m)]]


def circle(graph: dict[str, list[tuple[str, int]]]) -> list[str] | None:
    """One import circle among the modules, or None."""
    try:
        graphlib.TopologicalSorter({m: {t for t, _ in ts} for m, ts in graph.items()}).prepare()
    except graphlib.CycleError as exc:
        return exc.args[1]
    return None


def test_every_module_is_in_a_room_of_the_layers():
    rooms = {room(m) for m in import_graph() if m != "harness"}
    assert not rooms - set(LAYERS), f"rooms not placed in LAYERS (tests/test_architecture.py): {rooms - set(LAYERS)}"


def test_no_room_imports_a_higher_one():
    assert upward_imports(import_graph(), LAYERS) == []


def test_no_import_circle():
    assert circle(import_graph()) is None


def test_methods_use_only_the_method_api_and_the_layers_below():
    known = set(import_graph())
    bad = [f"{p.name} (line {line}) imports {t}" for p in sorted((ROOT / "methods").glob("*.py"))
           for t, line in harness_imports(p, known) if room(t) not in METHOD_ROOMS]
    assert bad == []


def test_the_checks_catch_a_circle_and_an_upward_import():
    graph = {"harness.core.io": [("harness.report.tables", 3)], "harness.report.tables": [("harness.core.io", 5)]}
    assert upward_imports(graph, LAYERS) == [
        "harness.core.io (line 3) imports harness.report.tables: room 'core' is below 'report'"]
    assert set(circle(graph)) == {"harness.core.io", "harness.report.tables"}
    assert circle({"harness.core.io": [], "harness.report.tables": [("harness.core.io", 5)]}) is None


def test_the_method_api_is_one_short_import():
    from harness.method import Method, TaskData, register  # noqa: F401  (what methods/*.py and docs/adding-a-method.md use)

    with pytest.raises(TypeError, match="needs `name`"):
        register(type("Nameless", (Method,), {}))
