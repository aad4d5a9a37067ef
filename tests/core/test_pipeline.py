"""pipeline: passes run on a copy; a broken graph is caught and names the pass."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
import pytest

from graphcomp import pipeline
from graphcomp.core.errors import PassFailedError, UnsupportedModelError
from graphcomp.core.pass_base import Pass, PassContext, PassResult
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
