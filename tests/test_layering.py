"""Imports only go downward: spec -> machine -> kernels -> model -> engine -> perf -> report/cli/server."""

import ast
from pathlib import Path

import waferllm

LAYERS = ["spec", "machine", "kernels", "model", "engine", "perf", "report", "cli", "server"]
RANK = {name: i for i, name in enumerate(LAYERS)}
RANK.update({"report": 6, "cli": 7, "server": 7})  # report below the front ends; cli and server are peers
ROOT = Path(waferllm.__file__).parent


def _imports(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


def test_no_upward_imports():
    bad = []
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT).parts
        if len(rel) < 2 or rel[0] not in RANK:
            continue
        me = RANK[rel[0]]
        for mod in _imports(path):
            parts = mod.split(".")
            if parts[0] == "waferllm" and len(parts) > 1 and parts[1] in RANK and RANK[parts[1]] > me:
                bad.append(f"{path.relative_to(ROOT)} imports {mod}")
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_every_layer_exists():
    for name in ["spec", "machine", "kernels", "perf", "report", "cli"]:
        assert (ROOT / name / "__init__.py").exists(), name


def _module_name(path: Path) -> str:
    parts = ("waferllm",) + path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, dict[str, str]]:
    """waferllm module -> {waferllm module it imports: 'file:line'}, at module level or inside functions.

    `from pkg import name` counts pkg, and pkg.name when that is a module; relative imports are resolved.
    A package's own __init__ is not counted as imported by its submodules unless they import it by name.
    """
    paths = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph = {}
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps = {}
        for node in ast.walk(ast.parse(path.read_text())):
            where = f"{path.relative_to(ROOT.parent)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Import):
                deps.update((a.name, where) for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                deps[base] = where
                deps.update((f"{base}.{a.name}", where) for a in node.names)
        graph[name] = {d: w for d, w in sorted(deps.items()) if d in paths and d != name}
    return graph


def _cycles(graph: dict[str, dict | set]) -> list[list[str]]:
    """One concrete cycle (a -> b -> ... -> a) per strongly connected component with more than one module."""
    index, low, stack, on, comps = {}, {}, [], set(), []

    def visit(v):  # Tarjan's algorithm (the graph has ~100 nodes: recursion is fine)
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
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(comp)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    out = []
    for comp in comps:  # the shortest way back to the component's first module, for the message
        start = min(comp)
        paths, seen = [[start]], {start}
        while paths:
            path = paths.pop(0)
            nxt = sorted(set(graph[path[-1]]) & comp)
            if start in nxt:
                out.append(path + [start])
                break
            for w in nxt:
                if w not in seen:
                    seen.add(w)
                    paths.append(path + [w])
    return sorted(out)


def test_no_import_circles():
    """No module imports itself back through others, counting imports inside functions (a lazy import
    hides a circle; it does not break it)."""
    graph = _import_graph()
    cycles = _cycles(graph)
    lines = [" -> ".join(c) + "\n" + "\n".join(f"    {a} imports {b} at {graph[a][b]}" for a, b in zip(c, c[1:]))
             for c in cycles]
    assert not cycles, f"{len(cycles)} import circle(s):\n" + "\n".join(lines)


def test_cycle_finder_finds_a_function_level_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
