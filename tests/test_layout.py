"""The folder tree is the architecture: layers import downwards only, and no module cycles.

Every import counts, at module level or inside a function: an import moved into a
function to dodge a cycle is still a cycle.
"""

from __future__ import annotations

import ast
import importlib.util
import os
from pathlib import Path

import pytest

import graphcomp

PACKAGE = Path(graphcomp.__file__).resolve().parent
ROOT_NAME = "graphcomp"
# layer of each subpackage, low to high; a module may import its own layer or lower
LAYERS = {
    "graphcomp.core": 0,
    "graphcomp.measure": 1,
    "graphcomp.passes": 2,
    "graphcomp": 3,  # the run driver: pipeline, verify, report, api
    "graphcomp.bench": 4,
    "graphcomp.cli": 5,
    "graphcomp.__main__": 5,
}


def _modules() -> dict[str, Path]:
    out = {}
    paths = [Path(d, f) for d, _, files in os.walk(PACKAGE, followlinks=True) for f in files]
    for path in sorted(p for p in paths if p.suffix == ".py"):
        rel = path.relative_to(PACKAGE).with_suffix("")
        parts = [ROOT_NAME, *rel.parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    skip = {id(n) for n in ast.walk(tree) if isinstance(n, ast.If) and _is_type_checking(n)}
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            skipped.update(id(c) for c in ast.walk(node))
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in modules)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                if full in modules:
                    found.add(full)
                elif node.module in modules:
                    found.add(node.module)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, modules) - {name} for name, path in modules.items()}


def _layer(module: str) -> tuple[str, int]:
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return best, LAYERS[best]


def test_package_has_no_import_cycle() -> None:
    graph = _graph()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [])
    assert cycles == []


def test_layers_import_downwards_only() -> None:
    bad = []
    for module, targets in _graph().items():
        if module == ROOT_NAME:
            continue  # the package's __init__ re-exports the API
        own = _layer(module)[1]
        bad += [f"{module} -> {t}" for t in sorted(targets) if _layer(t)[1] > own]
    assert bad == []


def test_no_top_level_passes_module_is_installed() -> None:
    spec = importlib.util.find_spec("graphcomp.passes")
    assert spec is not None and spec.origin is not None
    assert Path(spec.origin).resolve().parent.name == "passes"


@pytest.mark.parametrize("family", ["prune", "svd", "qdq", "dfq"])
def test_each_family_is_a_subpackage(family: str) -> None:
    assert (PACKAGE / "passes" / family / "__init__.py").is_file()


def test_the_wheel_installs_passes_inside_graphcomp_only(tmp_path):
    import subprocess
    import sys
    import zipfile

    root = PACKAGE.parent
    done = subprocess.run(  # build isolation: the build backend comes from pyproject.toml
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(root)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    (wheel,) = tmp_path.glob("graphcomp-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"graphcomp"}
    assert "graphcomp/passes/__init__.py" in names
    assert "graphcomp/passes/dfq/dfq.py" in names and "passes/__init__.py" not in names
