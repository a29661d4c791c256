"""The package's layering: the import graph of ``src/multijet`` (imports inside functions included) has no
cycle, the core never imports the benchmark harness, and ``import multijet`` loads no framework.

The graph is built from the source with ``ast``, not by importing anything: one node per module (a package is
its ``__init__``), one edge per ``import`` / ``from … import`` (relative imports resolved; ``from . import x``
points at the submodule ``x`` when there is one, else at the package), and per ``importlib.import_module``
call with a literal name. Imports under ``if TYPE_CHECKING:`` never run and are left out. Importing a
submodule also runs its parent packages' ``__init__``; those implicit edges are left out, since the parent
is always loaded first.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "multijet"
#: modules allowed to use the benchmark harness: the harness itself and the command line above it
NON_CORE = ("multijet.bench", "multijet.cli", "multijet.__main__")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted((SRC / PACKAGE).rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk_runtime(node: ast.AST):
    """``ast.walk`` without the bodies of ``if TYPE_CHECKING:`` blocks."""
    stack = [node]
    while stack:
        n = stack.pop()
        yield n
        if isinstance(n, ast.If) and _is_type_checking(n.test):
            stack.extend(n.orelse)
            continue
        stack.extend(ast.iter_child_nodes(n))


def _imports(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, int]]:
    """The intra-package modules ``name`` imports, each with the line of the import."""
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rpartition(".")[0]

    def resolve(target: str) -> str | None:
        """The module ``target`` names, or its nearest enclosing module (``a.b.attr`` → ``a.b``)."""
        while target and target not in modules:
            target = target.rpartition(".")[0]
        return target or None

    out: list[tuple[str, int]] = []
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in _walk_runtime(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == PACKAGE or alias.name.startswith(PACKAGE + "."):
                    out.append((resolve(alias.name), node.lineno))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                if node.level > 1:
                    base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts)
                if node.module:
                    base = f"{base}.{node.module}"
            else:
                base = node.module or ""
            if not (base == PACKAGE or base.startswith(PACKAGE + ".")):
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.append((sub if sub in modules else resolve(base), node.lineno))
        elif isinstance(node, ast.Call) and node.args:
            fn = node.func
            fname = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", None)
            arg = node.args[0]
            if fname in ("import_module", "__import__") and isinstance(arg, ast.Constant):
                target = str(arg.value)
                if target.startswith("."):
                    continue  # relative to a run-time package argument; not resolved here
                if target == PACKAGE or target.startswith(PACKAGE + "."):
                    out.append((resolve(target), node.lineno))
    return [(t, line) for t, line in out if t is not None and t != name]  # a module importing itself is no cycle


def import_graph() -> dict[str, dict[str, int]]:
    """module → {imported module: first line}, for every module of the package."""
    modules = _modules()
    graph: dict[str, dict[str, int]] = {}
    for name, path in modules.items():
        edges: dict[str, int] = {}
        for target, line in _imports(name, path, modules):
            edges.setdefault(target, line)
        graph[name] = edges
    return graph


def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One concrete cycle (``[a, b, …, a]``) per strongly connected component that has one (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0

    def strongconnect(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph.get(v, {}):
                components.append(comp)

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)

    cycles = []
    for comp in components:
        members = set(comp)
        start = min(comp)
        # breadth-first search from start back to start inside the component: a shortest cycle through it
        prev: dict[str, str] = {}
        frontier = [start]
        found = None
        while frontier and found is None:
            nxt = []
            for v in frontier:
                for w in sorted(graph[v]):
                    if w not in members:
                        continue
                    if w == start:
                        found = v
                        break
                    if w not in prev:
                        prev[w] = v
                        nxt.append(w)
                if found is not None:
                    break
            frontier = nxt
        path = [start]
        v = found
        while v is not None and v != start:
            path.append(v)
            v = prev.get(v)
        cycles.append([start, *reversed(path[1:]), start])
    return cycles


def _describe(cycle: list[str], graph: dict[str, dict[str, int]]) -> str:
    steps = [f"{a} (line {graph[a][b]}) -> {b}" for a, b in zip(cycle[:-1], cycle[1:], strict=True)]
    return "\n    ".join(steps)


def _reachable(graph: dict[str, dict[str, int]], start: str) -> dict[str, str]:
    """Modules reachable from ``start``, each with the module that imports it on a path from ``start``."""
    seen = {start: ""}
    todo = [start]
    while todo:
        v = todo.pop()
        for w in graph.get(v, {}):
            if w not in seen:
                seen[w] = v
                todo.append(w)
    return seen


def _is_bench(name: str) -> bool:
    return name == "multijet.bench" or name.startswith("multijet.bench.")


def test_graph_sees_the_package():
    graph = import_graph()
    for name in ("multijet", "multijet.api", "multijet.autotune", "multijet.compare", "multijet.bench",
                 "multijet.timing", "multijet.backends", "multijet.cli"):  # fmt: skip
        assert name in graph, sorted(graph)
    # spot checks of the resolution rules: relative, function-level, ``from . import submodule``
    assert "multijet.api" in graph["multijet.autotune"]  # from . import api
    assert "multijet.autotune" in graph["multijet"]  # inside a function of __init__
    assert "multijet.errors" in graph["multijet.backends"]  # from ..errors import BackendError
    assert "multijet" in graph["multijet.cli"]  # from . import __version__ (not a submodule)


def test_import_graph_has_no_cycle():
    graph = import_graph()
    cycles = find_cycles(graph)
    report = "\n".join(f"  cycle {i}:\n    {_describe(c, graph)}" for i, c in enumerate(cycles, 1))
    assert not cycles, f"the import graph of src/multijet has {len(cycles)} cycle(s):\n{report}"


def test_find_cycles_reports_a_cycle():
    graph = {"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3, "d": 4}, "d": {}, "e": {"e": 5}}
    cycles = find_cycles(graph)
    assert sorted(map(tuple, cycles)) == [("a", "b", "c", "a"), ("e", "e")]


def test_core_never_imports_the_benchmark_harness():
    graph = import_graph()
    core = [m for m in graph if not any(m == n or m.startswith(n + ".") for n in NON_CORE)]
    assert "multijet.api" in core and "multijet.autotune" in core and "multijet.timing" in core
    bad = []
    for m in core:
        via = _reachable(graph, m)
        for target in sorted(t for t in via if _is_bench(t)):
            chain = [target]
            while via[chain[-1]]:
                chain.append(via[chain[-1]])
            bad.append(" -> ".join(reversed(chain)))
    assert not bad, "core modules reach multijet.bench:\n  " + "\n  ".join(bad)


def test_engine_imports_no_framework():
    """``engine/`` (with the Taylor arithmetic, derivative tables and registry) never imports torch or jax."""
    core = ("multijet.taylor", "multijet.derivatives", "multijet.extend")
    bad = []
    for name, path in _modules().items():
        if not (name == "multijet.engine" or name.startswith("multijet.engine.") or name in core):
            continue
        for node in _walk_runtime(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                targets = [node.module or ""]
            else:
                continue
            bad += [f"{name} (line {node.lineno}) imports {t}" for t in targets if t.split(".")[0] in ("torch", "jax")]
    assert "multijet.engine.outputs" in _modules()
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("statement", ["import multijet", "import multijet.api, multijet.cli"])
def test_import_loads_no_framework_and_no_bench(statement):
    heavy = ("torch", "jax", "multijet.bench", "multijet.compare", "multijet.autotune")
    if "cli" in statement:
        heavy = ("torch", "jax", "matplotlib", "rich")  # the CLI may load the harness, never a framework
    code = f"import sys; {statement}; print([m for m in {heavy!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", f"{statement!r} imported {out.stdout.strip()}"


def test_backend_auto_goes_through_the_registered_resolver():
    """api does not import autotune; the package registers the resolver that ``backend="auto"`` calls."""
    import numpy as np

    import multijet as mj
    from multijet import api

    assert api._auto_backend is mj._auto_backend  # the package's lazy loader of multijet.autotune
    calls = []

    def resolver(op, f, x, **kwargs):
        calls.append(kwargs)
        return "numpy"

    previous = api.register_auto_backend(resolver)
    try:
        out = mj.laplacian(lambda x: (x**3).sum(), np.ones(3), backend="auto")
        api.register_auto_backend(None)
        with pytest.raises(mj.BackendError, match="auto"):
            mj.laplacian(lambda x: (x**3).sum(), np.ones(3), backend="auto")
    finally:
        api.register_auto_backend(previous)
    assert float(out) == 18.0
    assert calls == [{"method": "collapsed", "samples": None, "distribution": None}]  # planner picks
