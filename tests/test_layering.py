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
