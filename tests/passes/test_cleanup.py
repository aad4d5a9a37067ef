"""cleanup: Identity, inference Dropout and dead nodes go; outputs keep their names."""

from __future__ import annotations

import numpy as np

from graphcomp.passes.cleanup import CleanupPass
from tests import graphs


def test_cleanup_removes_noops_and_dead_nodes_exactly():
    model = graphs.build(graphs.IDENTITY_DROPOUT)
    out, result = graphs.apply(model, CleanupPass())
    record = result.records[0].result
    assert sorted(n.op_type for n in out.graph.node) == ["Identity", "MatMul", "Relu"]
    assert [o.name for o in out.graph.output] == ["y", "z"]
    assert len(record.changes) == 3
    reason = "connects a graph input or constant straight to a graph output"
    assert record.skipped[0].reason == reason
    assert record.notes["dead_nodes_removed"] == 1
    feeds = graphs.feeds_for(model)
    for ref, new in zip(graphs.run(model, feeds), graphs.run(out, feeds), strict=True):
        np.testing.assert_array_equal(ref, new)


def test_training_dropout_is_kept():
    text = """
    g (float[N, 4] x) => (float[N, 4] y) {
        ratio = Constant <value = float {0.5}> ()
        train = Constant <value = bool {1}> ()
        r = Relu (x)
        y = Dropout (r, ratio, train)
    }
    """
    out, result = graphs.apply(graphs.build(text), CleanupPass())
    assert graphs.op_count(out, "Dropout") == 1
    assert "training_mode" in result.records[0].result.skipped[0].reason
