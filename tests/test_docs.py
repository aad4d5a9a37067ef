"""The docs say what the code does: the worked example pass runs, paths and links exist.

docs/architecture.md's "How to add a pass" holds a complete pass module and its test;
both are executed here exactly as written on the page.
"""

from __future__ import annotations

import re
import sys
import types
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import graphcomp
from graphcomp import pipeline
from graphcomp.core.pass_base import Pass
from tests import graphs

ROOT = Path(__file__).resolve().parents[1]
ARCHITECTURE = ROOT / "docs" / "architecture.md"
README_LIMIT = 15 * 1024  # bytes: the README is the newcomer's page, the rest is in docs/
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# repository paths the pages name in backticks, e.g. `passes/prune/walk.py`
PATH = re.compile(r"`((?:graphcomp|passes|scripts|tests|models|docs)/[\w./-]+)`")
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
# the files a reader creates when following "How to add a pass"
EXAMPLE_FILES = {"passes/drop_neutral.py", "tests/passes/test_drop_neutral.py"}

NEUTRAL = """
g (float[N, 4, 3, 3] x, float[1, 4, 1, 1] one, float zero) => (float[N, 4, 3, 3] y) {
    a = Mul (x, one)
    b = Relu (a)
    y = Add (zero, b)
}
"""
# the Mul would broadcast (5-D constant); the Add writes `y` while `b` is also read
NOT_REMOVABLE = """
g (float[N, 4, 3, 3] x, float[2, 1, 1, 1, 1] big, float zero)
    => (float[N, 4, 3, 3] y, float[2, N, 4, 3, 3] z) {
    b = Relu (x)
    y = Add (b, zero)
    m = Mul (b, big)
    z = Relu (m)
}
"""


def python_blocks(path: Path) -> list[str]:
    """The ```python blocks of a Markdown page, in order."""
    return re.findall(r"^```python\n(.*?)^```$", path.read_text(), flags=re.S | re.M)


def example_module() -> types.ModuleType:
    """The first ```python block of docs/architecture.md, executed as a module."""
    module = types.ModuleType("drop_neutral_from_docs")
    code = compile(python_blocks(ARCHITECTURE)[0], str(ARCHITECTURE), "exec")
    exec(code, module.__dict__)  # noqa: S102 - the documented example, run as written
    return module


def neutral_model(text: str = NEUTRAL, **fixed: np.ndarray):
    values = {
        "one": np.ones((1, 4, 1, 1), np.float32),
        "zero": np.zeros((), np.float32),
        "big": np.ones((2, 1, 1, 1, 1), np.float32),
    }
    names = set(re.findall(r"\b(one|zero|big)\b", text))
    return graphs.build(text, **{k: v for k, v in {**values, **fixed}.items() if k in names})


def test_example_pass_declares_the_contract():
    cls = example_module().DropNeutralPass
    assert issubclass(cls, Pass)
    assert cls.name == "drop-neutral" and cls.lossless is True
    assert cls.matches == frozenset({"Mul", "Add"}) and cls.creates == frozenset()


def test_example_pass_removes_neutral_nodes_exactly_through_the_pipeline():
    cls = example_module().DropNeutralPass
    model = neutral_model()
    result = pipeline.run(model, [cls()])
    out, record = result.model, result.records[0].result
    assert len(model.graph.node) == 3 and [n.op_type for n in out.graph.node] == ["Relu"]
    assert [c.op for c in record.changes] == ["Mul", "Add"] and not record.skipped
    assert [o.name for o in out.graph.output] == ["y"]
    for seed in (1, 2, 3):
        feeds = graphs.feeds_for(model, seed=seed)
        np.testing.assert_allclose(
            graphs.run(out, feeds)[0], graphs.run(model, feeds)[0], atol=1e-5
        )


def test_example_pass_skips_with_reason_where_removal_would_change_the_graph():
    cls = example_module().DropNeutralPass
    model = neutral_model(NOT_REMOVABLE)
    result = pipeline.run(model, [cls()])
    record = result.records[0].result
    assert not record.changes
    reasons = {s.op: s.reason for s in record.skipped}
    assert "broadcast" in reasons["Mul"] and "rename" in reasons["Add"]
    before = Counter(n.op_type for n in model.graph.node)
    assert Counter(n.op_type for n in result.model.graph.node) == before
    assert [o.name for o in result.model.graph.output] == ["y", "z"]


def test_example_pass_leaves_other_mul_and_add_alone():
    cls = example_module().DropNeutralPass
    model = neutral_model(one=np.full((1, 4, 1, 1), 2.0, np.float32))
    record = pipeline.run(model, [cls()]).records[0].result
    assert [c.op for c in record.changes] == ["Add"] and not record.skipped


def test_example_pass_runs_unregistered_through_compress_and_verifies():
    cls = example_module().DropNeutralPass
    out, report = graphcomp.compress(neutral_model(), passes=[cls()])
    assert report.to_dict()["verification"]["passed"] is True
    assert [n.op_type for n in out.graph.node] == ["Relu"]


def test_documented_test_of_the_example_passes(monkeypatch):
    """The page's test block, with the page's module standing in for the new file."""
    monkeypatch.setitem(sys.modules, "graphcomp.passes.drop_neutral", example_module())
    blocks = python_blocks(ARCHITECTURE)
    test_code = next(b for b in blocks if "def test_" in b)
    namespace: dict[str, object] = {}
    exec(compile(test_code, str(ARCHITECTURE), "exec"), namespace)  # noqa: S102
    tests = [f for name, f in namespace.items() if name.startswith("test_") and callable(f)]
    assert tests
    for test in tests:
        test()


def test_readme_stays_short():
    assert len((ROOT / "README.md").read_bytes()) <= README_LIMIT


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_paths_and_links_in_the_docs_exist(page):
    text = page.read_text()
    named = {m for m in PATH.findall(text) if not any(c in m for c in "{}<>*")} - EXAMPLE_FILES
    missing = sorted(p for p in named if not (ROOT / p.rstrip(".")).exists())
    links = [link for link in LINK.findall(text) if "://" not in link]
    missing += sorted(link for link in links if not (page.parent / link).exists())
    assert not missing, f"{page.name} names paths that do not exist: {missing}"
