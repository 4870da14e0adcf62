"""csud/rtsp and csud/sim: no import cycle (imports inside functions and ``TYPE_CHECKING``
blocks count: they are cycles a reader has to untangle all the same) and no module over 600
lines. The graph is built over the whole of csud, so a cycle through another package is found
too; only cycles touching these two packages are this test's business."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CSUD = Path(__file__).resolve().parents[2] / "csud"
PACKAGES = ("csud.rtsp", "csud.sim")
MAX_LINES = 600


def module_name(path: Path) -> str:
    parts = path.relative_to(CSUD.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in CSUD.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            for target in targets:
                if target in modules and target != name:
                    edges.add(target)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_cycle_finder_finds_cycles() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_touches_rtsp_or_sim() -> None:
    graph = import_graph()
    assert "csud.sim.server" in graph["csud.sim.cli"]  # the graph sees csud's own imports
    bad = [c for c in cycles(graph) if any(m.startswith(PACKAGES) for m in c)]
    assert bad == []


def test_faults_do_not_reach_into_the_server() -> None:
    graph = import_graph()
    assert "csud.sim.server" not in graph["csud.sim.faults"]
    source = (CSUD / "sim" / "faults.py").read_text()
    # A fault changes a session's numbering through its methods, never by assignment.
    assert "session.seq =" not in source and "session.ssrc =" not in source


@pytest.mark.parametrize("package", ["rtsp", "sim"])
def test_no_module_over_600_lines(package: str) -> None:
    sizes = {p.name: len(p.read_text().splitlines()) for p in (CSUD / package).glob("*.py")}
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}
