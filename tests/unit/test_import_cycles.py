"""No csud module imports another in a cycle, counting every kind of import.

A function-level import, an ``if TYPE_CHECKING:`` import or an ``importlib.import_module`` by
name hides a cycle from the interpreter, not from a reader: the modules still cannot be
understood (or tested) apart. So all three count: an import anywhere in a module's body, and a
string constant that is exactly the dotted name of a csud module (a dynamic import by name).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "csud"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    name = module_name(path)
    return imports_in(path.read_text(encoding="utf-8"), name, path.name == "__init__.py", modules)


def imports_in(source: str, name: str, is_package: bool, modules: set[str]) -> set[str]:
    """The csud modules module ``name`` imports, anywhere in its body (a package counts as its
    ``__init__``; ``from pkg import mod`` counts as importing ``pkg.mod``)."""
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("csud."):
            found.add(node.value)  # importlib.import_module("csud.x.y"), or a table of such names
        elif isinstance(node, ast.Import):
            for alias in node.names:
                found.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.add(target)
            for alias in node.names:
                found.add(f"{target}.{alias.name}")
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(source))
    return {m for m in found if m in modules and m != name}


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    return {module_name(p): imports_of(p, modules) for p in paths}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected component of more than one module (Tarjan)."""
    return [_cycle_through(graph, set(c)) for c in find_components(graph)]


def find_components(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module, sorted (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return components


def _cycle_through(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """One concrete cycle inside ``component`` (breadth-first back to its first module)."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & component):
                if w == start:
                    return [*paths[v], start]
                if w not in paths:
                    paths[w] = [*paths[v], w]
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no cycle in {component}")  # pragma: no cover: a component has one


def test_no_import_cycles_in_csud() -> None:
    graph = import_graph()
    components = find_components(graph)
    assert not components, "import cycles:\n" + "\n".join(
        f"{' -> '.join(_cycle_through(graph, set(c)))} (modules in the cycle: {', '.join(c)})"
        for c in components
    )


def test_the_cycle_finder_finds_function_level_and_relative_imports() -> None:
    """The checker itself: imports in functions, under TYPE_CHECKING, relative, and by name."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []

    source = (
        "from typing import TYPE_CHECKING\n"
        "from csud.recording import segmenter\n"
        "if TYPE_CHECKING:\n    from csud.service import metrics\n"
        "def f():\n    from .timeline import Timeline\n"
        "PLUGINS = ['csud.cli.check']\n"
    )
    modules = {
        "csud.recording",
        "csud.recording.segmenter",
        "csud.recording.timeline",
        "csud.service",
        "csud.service.metrics",
        "csud.cli.check",
        "csud.cli.main",
    }
    found = imports_in(source, "csud.recording.probe", False, modules)
    assert found == modules - {"csud.cli.main"}


def test_the_index_and_verify_load_neither_pyav_nor_aiofiles() -> None:
    """``csud verify`` and ``csud segments`` open the index: that must not load the muxer."""
    import subprocess
    import sys

    code = (
        "import sys, csud.store.index, csud.evidence.verify, csud.cli.main; "
        "print(sorted(m for m in ('av', 'aiofiles', 'aiortsp') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


def test_sim_faults_do_not_reach_into_the_server() -> None:
    """The faults module changes a session's numbering through its methods, never by assignment,
    and does not import the server (the old faults <-> server cycle)."""
    graph = import_graph()
    assert "csud.sim.server" not in graph["csud.sim.faults"]
    source = (Path(__file__).resolve().parents[2] / "csud" / "sim" / "faults.py").read_text()
    assert "session.seq =" not in source and "session.ssrc =" not in source
