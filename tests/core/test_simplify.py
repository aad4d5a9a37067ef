"""graphcomp/core/simplify.py: constant shape math folds, zero Pads move into Convs, exactly."""

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest

from graphcomp.core import simplify
from tests import graphs

PAD_KINDS = """
g (float[N, 3, 9, 9] x, float[4, 3, 3, 3] w_a, float[4, 3, 3, 3] w_b, float[4, 3, 3, 3] w_c,
   float[4, 3, 3, 3] w_d) => (float[N, 4, 9, 9] a, float[N, 4, 9, 9] b, float[N, 4, 9, 9] c,
                              float[N, 4, 7, 7] d, float[N, 3, 11, 11] r) {
    pads = Constant <value = int64[8] {0, 0, 1, 1, 0, 0, 1, 1}> ()
    crop = Constant <value = int64[8] {0, 0, 1, 1, 0, 0, -1, -1}> ()
    nine = Constant <value = float {9.0}> ()
    p0 = Pad (x, pads)
    a = Conv (p0, w_a)
    p1 = Pad <mode = "reflect"> (x, pads)
    b = Conv (p1, w_b)
    p2 = Pad (x, pads, nine)
    c = Conv (p2, w_c)
    p3 = Pad (x, crop)
    d = Conv <pads = [0, 0, 1, 1]> (p3, w_d)
    r = Relu (p0)
}
"""


def _same(a, b):
    feeds = graphs.feeds_for(a, batch=3)
    for x, y in zip(graphs.run(a, feeds), graphs.run(b, feeds), strict=True):
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-5)


def test_computed_same_padding_folds_into_the_conv():
    model = graphs.build(graphs.COMPUTED_SAME_PAD)
    graph = gs.import_onnx(model)
    notes = simplify.simplify(graph)
    out = gs.export_onnx(graph)
    onnx.checker.check_model(out, full_check=True)
    assert notes["pads_into_conv"] == 1 and notes["folded_nodes"] >= 4
    assert [n.op_type for n in out.graph.node] == ["Conv"]
    assert list(out.graph.node[0].attribute[0].ints) == [1, 1, 1, 1]
    _same(model, out)


def test_only_zero_constant_non_negative_pads_read_by_convs_fuse():
    model = graphs.build(PAD_KINDS, seed=1)
    graph = gs.import_onnx(model)
    assert simplify.fuse_pads(graph) == []  # p0 is also read by a Relu
    graph.outputs = [t for t in graph.outputs if t.name != "r"]
    graph.cleanup()
    fused = simplify.fuse_pads(graph)
    out = gs.export_onnx(graph)
    assert len(fused) == 1 and [n.op_type for n in out.graph.node].count("Pad") == 3
    model.graph.output.pop()  # same outputs as the simplified graph
    _same(model, out)


@pytest.mark.parametrize("opset", [13, 18])
def test_pad_with_axes_or_existing_conv_pads_adds_up(opset):
    if opset >= 18:
        pads = "int64[4] {1, 2, 0, 1}"
        call = "Pad (x, pads, zero, ax)"
    else:
        pads = "int64[8] {0, 0, 1, 2, 0, 0, 0, 1}"
        call = "Pad (x, pads, zero)"
    text = f"""
g (float[N, 3, 9, 9] x, float[4, 3, 3, 3] w_a) => (float[N, 4, 10, 12] y) {{
    pads = Constant <value = {pads}> ()
    zero = Constant <value = float {{0.0}}> ()
    ax = Constant <value = int64[2] {{-2, -1}}> ()
    p = {call}
    y = Conv <pads = [1, 1, 1, 1]> (p, w_a)
}}
"""
    model = graphs.build(text, opset=opset)
    graph = gs.import_onnx(model)
    assert len(simplify.fuse_pads(graph)) == 1
    out = gs.export_onnx(graph)
    (conv,) = out.graph.node
    assert list(next(a for a in conv.attribute if a.name == "pads").ints) == [2, 3, 1, 2]
    _same(model, out)


SLICED_SHAPES = """
g (float[2, 3, 8, 6] x) => (int64[2] hw, int64[2] tail, int64[1] head, float[2, 3, 8, 6] y) {
    hw = Shape <start = 2> (x)
    tail = Shape <start = -2, end = 4> (x)
    head = Shape <end = 1> (x)
    s = Shape <start = 1, end = 3> (x)
    f = Cast <to = 1> (s)
    n = ReduceSum <keepdims = 0> (f)
    y = Mul (x, n)
}
"""


def test_shape_start_and_end_are_honoured_when_folding():
    model = graphs.build(SLICED_SHAPES, opset=18)
    graph = gs.import_onnx(model)
    simplify.fold_constants(graph)
    out = gs.export_onnx(graph)
    onnx.checker.check_model(out, full_check=True)
    feeds = graphs.feeds_for(model, batch=2)
    for want, got in zip(graphs.run(model, feeds), graphs.run(out, feeds), strict=True):
        assert want.shape == got.shape
        np.testing.assert_array_equal(want, got)
    ops = [n.op_type for n in out.graph.node]
    assert ops.count("Shape") == 3 and "Cast" not in ops  # graph outputs stay; s folded
