"""pipeline: passes run on a copy; a broken graph is caught and names the pass."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
import pytest

from graphcomp import pipeline
from graphcomp.core.errors import PassFailedError, UnsupportedModelError
from graphcomp.core.pass_base import ChannelStats, Pass, PassContext, PassResult
from graphcomp.passes.cleanup import CleanupPass
from graphcomp.passes.fold_bn import FoldBnPass
from tests import graphs


class _BadOp(Pass):
    name = "bad-op"

    def apply(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        graph.nodes[0].op = "NoSuchOp"
        return PassResult(self.name)


class _Crash(Pass):
    name = "crash"

    def apply(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        raise RuntimeError("boom")


class _Refuse(Pass):
    name = "refuse"

    def requires(self, graph: gs.Graph, ctx: PassContext) -> None:
        raise UnsupportedModelError("needs opset 99")


class _DupNames(Pass):
    name = "dup"

    def apply(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        for node in graph.nodes:
            node.name = "same"
        return PassResult(self.name)


@pytest.mark.parametrize(
    ("bad", "error", "message"),
    [
        (_BadOp(), PassFailedError, "pass 'bad-op' produced an invalid model"),
        (_Crash(), PassFailedError, "pass 'crash' failed: RuntimeError('boom')"),
        (_Refuse(), UnsupportedModelError, "pass 'refuse': needs opset 99"),
        (_DupNames(), PassFailedError, "pass 'dup' produced duplicate node names"),
    ],
)
def test_failures_name_the_pass_and_those_already_run(bad, error, message):
    model = graphs.build(graphs.CONV_BN_RELU)
    with pytest.raises(error) as info:
        pipeline.run(model, [FoldBnPass(), CleanupPass(), bad])
    assert message in str(info.value)
    assert str(info.value).endswith("(after fold-bn, cleanup)")


def test_records_size_and_time_per_pass_and_keeps_input():
    model = graphs.build(graphs.CONV_BN_RELU)
    before = model.SerializeToString()
    result = pipeline.run(model, [FoldBnPass(), CleanupPass()])
    first, second = result.records
    assert first.params == (128, 112)  # weight 108 + bias 4 + BN 16 -> 108 + 4
    assert first.macs == (6912, 6912) and second.params == (112, 112)
    assert result.lossless
    assert model.SerializeToString() == before


def test_nodes_without_names_get_unique_names():
    model = graphs.build(graphs.CONV_BN_RELU)
    for node in model.graph.node:
        node.name = ""
    result = pipeline.run(model, [CleanupPass()])
    names = [n.name for n in result.model.graph.node]
    assert all(names) and len(set(names)) == len(names)


def test_shapes_are_reinferred_after_each_pass():
    model = graphs.build(graphs.CONV_BN_RELU)
    result = pipeline.run(model, [FoldBnPass()])
    shapes = {
        v.name: [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim]
        for v in result.model.graph.value_info
    }
    assert shapes["n"] == ["N", 4, 8, 8]
    feeds = graphs.feeds_for(model)
    np.testing.assert_allclose(
        graphs.run(result.model, feeds)[0], graphs.run(model, feeds)[0], rtol=1e-5, atol=1e-5
    )


class _Writes(Pass):
    """Writes ctx.stats[key]; declares it only when `declared`."""

    name = "writes"

    def __init__(self, key="c", declared=True, change=False):
        super().__init__()
        self.key, self.change = key, change
        if declared:
            self.writes = frozenset({"stats"})

    def apply(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        ctx.stats[self.key] = ChannelStats(np.zeros(4), np.ones(4), "test")
        result = PassResult(self.name)
        if self.change:
            result.change(graph.nodes[0], "touched")
        return result


class _Reads(Pass):
    name = "reads"

    def apply(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        result = PassResult(self.name)
        result.notes["seen"] = sorted(ctx.stats)
        return result


class _DeclaredReads(_Reads):
    reads = frozenset({"stats"})


class _SetsShapes(Pass):
    name = "shapes"

    def apply(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        ctx.input_shapes["x"] = [1, 3, 8, 8]
        return PassResult(self.name)


class _Reshapes(_Writes):
    """Changes the layers (a node is edited) and so invalidates what was written before."""

    name = "reshape"
    invalidates = frozenset({"stats", "ranges"})


class _Composite(Pass):
    name = "combo"

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def requires(self, graph: gs.Graph, ctx: PassContext) -> None:
        self.calls.append("requires")

    def steps(self) -> list[Pass]:
        return [FoldBnPass(), _Writes("n2"), _DeclaredReads(), CleanupPass()]

    def summarize(self, results: dict[str, PassResult]) -> None:
        self.calls.append("summarize")
        results["reads"].notes["summary"] = sorted(results)


def test_composite_runs_and_records_each_step_by_name():
    model = graphs.build(graphs.CONV_BN_RELU)
    combo = _Composite()
    result = pipeline.run(model, [combo, CleanupPass()])
    names = [r.result.name for r in result.records]
    assert names == ["combo/fold-bn", "combo/writes", "combo/reads", "combo/cleanup", "cleanup"]
    assert combo.calls == ["requires", "summarize"]
    fold, _, reads = result.records[:3]
    assert fold.params == (128, 112) and reads.params == (112, 112)
    assert reads.result.notes["seen"] == ["n", "n2"]  # fold-bn's stats, then the step's
    assert reads.result.notes["summary"] == ["cleanup", "fold-bn", "reads", "writes"]
    assert result.record("combo/writes").to_dict()["name"] == "combo/writes"


def test_composite_step_failure_names_the_step_and_those_run():
    model = graphs.build(graphs.CONV_BN_RELU)

    class _Breaks(_Composite):
        def steps(self) -> list[Pass]:
            return [FoldBnPass(), _Crash()]

    with pytest.raises(PassFailedError) as info:
        pipeline.run(model, [CleanupPass(), _Breaks()])
    assert "pass 'combo/crash' failed" in str(info.value)
    assert str(info.value).endswith("(after cleanup, combo/fold-bn)")


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (_Writes(declared=False), "pass 'writes' used ctx.stats without declaring it"),
        (_Reads(), "pass 'reads' used ctx.stats without declaring it"),
        (_SetsShapes(), "pass 'shapes' wrote ctx.input_shapes, the run's input"),
    ],
)
def test_undeclared_context_use_is_a_bug(bad, message):
    model = graphs.build(graphs.CONV_BN_RELU)
    with pytest.raises(PassFailedError, match=message):
        pipeline.run(model, [bad])


def test_declared_context_use_passes():
    model = graphs.build(graphs.CONV_BN_RELU)
    ctx = PassContext()
    result = pipeline.run(model, [FoldBnPass(), _Writes(), _DeclaredReads()], ctx)
    assert result.records[-1].result.notes["seen"] == ["c", "n"]


def test_invalidating_pass_drops_entries_written_before_it():
    model = graphs.build(graphs.CONV_BN_RELU)
    ctx = PassContext()
    ctx.ranges["y"] = (0.0, 1.0, "test")
    passes = [FoldBnPass(), _Reshapes("own", change=True), _DeclaredReads()]
    result = pipeline.run(model, passes, ctx)
    assert result.records[-1].result.notes["seen"] == ["own"]  # fold-bn's "n" is gone
    assert ctx.ranges == {}


def test_invalidating_pass_that_changed_nothing_keeps_the_entries():
    model = graphs.build(graphs.CONV_BN_RELU)
    result = pipeline.run(model, [FoldBnPass(), _Reshapes("own"), _DeclaredReads()])
    assert result.records[-1].result.notes["seen"] == ["n", "own"]


class _Reader(Pass):
    """Declares no edit (lossless, no matches, no creates): a measuring step."""

    name = "reader"
    lossless = True

    def apply(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        return PassResult(self.name)


def test_a_step_that_declares_no_edit_keeps_the_checked_model_and_sizes():
    model = graphs.build(graphs.CONV_BN_RELU)
    result = pipeline.run(model, [FoldBnPass(), _Reader(), CleanupPass()])
    folded, read, cleaned = result.records
    assert read.params == (folded.params[1],) * 2 and read.macs == (folded.macs[1],) * 2
    assert cleaned.params == folded.params[1:] * 2
    assert graphs.op_count(result.model, "BatchNormalization") == 0
