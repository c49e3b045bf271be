"""The folder layout is the architecture (docs/architecture.md): checked, not hoped for.

Every import between tracekit's modules, lazy ones inside functions included: no two
modules import each other, and the pure model never reaches up into the exporter, the
recorder, the CLI or the I/O adapters.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

PACKAGE = Path(__file__).parents[2] / "tracekit"
#: Packages the pure model may not import (they depend on it, or do I/O).
ABOVE_MODEL = ("tracekit.export", "tracekit.record", "tracekit.cli", "tracekit.vm", "tracekit.gdb")


def imports() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        module = module.removesuffix(".__init__")
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.ImportFrom)
                and node.module
                and node.module.startswith("tracekit")
            ):
                deps.add(node.module)
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("tracekit")}
        graph[module] = deps - {module}
    return graph


def test_no_two_modules_import_each_other() -> None:
    graph = imports()
    cycles = sorted(
        {tuple(sorted((a, b))) for a in graph for b in graph[a] if a in graph.get(b, ())}
    )
    assert cycles == []


def test_the_model_does_not_import_upward() -> None:
    graph = imports()
    upward = {m: sorted(d for d in deps if d.startswith(ABOVE_MODEL))
              for m, deps in graph.items() if m.startswith("tracekit.model")}  # fmt: skip
    assert {m: d for m, d in upward.items() if d} == {}


def test_phases_and_classes_are_defined_once() -> None:
    defined = [
        path.name
        for path in PACKAGE.rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id in ("PHASES", "CLASSES") for t in node.targets)
    ]
    assert defined == ["vocabulary.py", "vocabulary.py"]
