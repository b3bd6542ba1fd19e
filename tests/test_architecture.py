"""The package's shape: dependencies point one way and no module imports itself in a circle.

Imports are read from the sources (top-level and function-local, not ``TYPE_CHECKING``
blocks, which never run), with each folder named as it installs (pyproject's package-dir).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = {  # folder -> installed package
    "pipeline/_root": "tansaku",
    "index": "tansaku.index",
    "retrieve": "tansaku.retrieve",
    "rerank": "tansaku.rerank",
    "pipeline": "tansaku.pipeline",
}
# Which stages each stage may import (besides itself): retrieve and rerank build on index,
# never on each other; only the pipeline composes them.
ALLOWED = {
    "tansaku.index": set(),
    "tansaku.retrieve": {"tansaku.index"},
    "tansaku.rerank": {"tansaku.index"},
    "tansaku.pipeline": {"tansaku.index", "tansaku.retrieve", "tansaku.rerank", "tansaku"},
    # the root facade: `tansaku.open` is the pipeline's open_index
    "tansaku": {"tansaku.pipeline"},
}


def modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for folder, package in PACKAGES.items():
        root = REPO / folder
        for path in root.rglob("*.py"):
            rel = path.relative_to(root).with_suffix("").parts
            if folder == "pipeline" and rel[0] == "_root":
                continue
            parts = rel[:-1] if rel[-1] == "__init__" else rel
            found[".".join((package, *parts))] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> Iterator[str]:
    """The tansaku modules ``name`` imports when it runs (longest known module prefix)."""
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for stmt in block.body
        for node in ast.walk(stmt)
    }
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".") if is_package else name.split(".")[:-1]
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            targets = [f"{base}.{alias.name}" for alias in node.names]
        for target in targets:
            parts = target.split(".")
            while parts and ".".join(parts) not in known:
                parts.pop()
            if parts and ".".join(parts) != name:
                yield ".".join(parts)


def stage_of(module: str) -> str:
    return max((p for p in ALLOWED if module == p or module.startswith(p + ".")), key=len)


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: set(imports(name, path, known)) for name, path in known.items()}


def test_the_sources_are_all_seen(graph):
    assert len(graph) > 60
    assert graph["tansaku.pipeline.search"] >= {"tansaku.rerank.base", "tansaku.retrieve"}


def test_dependencies_point_one_way(graph):
    wrong = sorted(
        f"{source} imports {target}"
        for source, targets in graph.items()
        for target in targets
        if stage_of(target) != stage_of(source) and stage_of(target) not in ALLOWED[stage_of(source)]
    )
    assert not wrong, "\n".join(wrong)


def test_no_import_circles(graph):
    # Tarjan's strongly connected components: any component of two or more is a circle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    assert not circles, circles
