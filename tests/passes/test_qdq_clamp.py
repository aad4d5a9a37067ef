"""Clamps on integer codes (passes/qdq/clamp.py) and the quantized graph output."""

import numpy as np
import onnx
import pytest

from graphcomp.passes.qdq.qdq import QdqConfig, QdqPass
from tests import graphs

# conv -> Relu -> Min by a per-channel bound -> depthwise conv -> conv (graph output)
RELU_MIN = """
g (float[N, 3, 8, 8] x, float[6, 3, 1, 1] w_a, float[6] b_a, float[6, 1, 1] bound,
   float[6, 1, 3, 3] w_dw, float[6] b_dw, float[4, 6, 1, 1] w_c, float[4] b_c)
   => (float[N, 4, 8, 8] y) {
    a = Conv (x, w_a, b_a)
    r = Relu (a)
    m = Min (r, bound)
    d = Conv <group = 6, pads = [1, 1, 1, 1]> (m, w_dw, b_dw)
    y = Conv (d, w_c, b_c)
}
"""

# the identity the rewrite rests on: Q -> DQ -> Min(b) -> Q -> DQ equals Q -> Min(q(b)) -> DQ
IDENTITY = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2, 6, 5, 5] x, float[6, 1, 1] b, uint8[6, 1, 1] qb) => (float[2, 6, 5, 5] y1,
                                                               float[2, 6, 5, 5] y2) {
    s = Constant <value = float {0.037}> ()
    z = Constant <value = uint8 {7}> ()
    q = QuantizeLinear (x, s, z)
    f = DequantizeLinear (q, s, z)
    m = Min (f, b)
    q1 = QuantizeLinear (m, s, z)
    y1 = DequantizeLinear (q1, s, z)
    q2 = Min (q, qb)
    y2 = DequantizeLinear (q2, s, z)
}
"""


def _cosine(a, b):
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _qdq(model, **fields):
    out, res = graphs.apply(model, QdqPass(QdqConfig(**fields)))
    return out, res.record("qdq/qdq-core").result


def _relu_min(bound):
    return graphs.build(RELU_MIN, bound=np.asarray(bound, np.float32).reshape(6, 1, 1))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_min_on_codes_equals_min_between_dq_and_q(seed):
    import onnxruntime as ort

    rng = np.random.default_rng(seed)
    model = onnx.parser.parse_model(IDENTITY)
    b = rng.uniform(-1, 9, (6, 1, 1)).astype(np.float32)
    qb = np.clip(np.rint(b / np.float32(0.037)) + 7, 0, 255).astype(np.uint8)
    x = rng.uniform(-2, 12, (2, 6, 5, 5)).astype(np.float32)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    y1, y2 = sess.run(None, {"x": x, "b": b, "qb": qb})
    np.testing.assert_array_equal(y1, y2)


def test_per_channel_bound_runs_on_uint8_codes(tmp_path):
    model = _relu_min([0.5, 1.0, 2.0, 3.0, 0.2, 6.0])
    out, result = _qdq(model)
    mins = [n for n in out.graph.node if n.op_type == "Min"]
    assert len(mins) == 1 and result.notes["clamps"] == {"Min_2": "on codes"}
    producer = {o: n for n in out.graph.node for o in n.output}
    assert producer[mins[0].input[0]].op_type == "QuantizeLinear"
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in out.graph.initializer}
    codes = inits[mins[0].input[1]]
    assert codes.dtype == np.uint8 and codes.shape == (6, 1, 8)  # tiled along W
    assert np.all(codes == codes[:, :, :1]) and len(np.unique(codes)) > 1
    ops = graphs.optimized_ops(out, str(tmp_path / "opt.onnx"))
    assert ops.count("QLinearConv") == 3 and "DequantizeLinear" in ops
    assert ops.count("QuantizeLinear") == 1  # only the graph input; the Min sits between
    feeds = graphs.feeds_for(model, batch=4)
    ref, got = graphs.run(model, feeds)[0], graphs.run(out, feeds)[0]
    assert _cosine(ref, got) > 0.998


def test_bound_past_the_range_is_dropped():
    model = _relu_min(np.full(6, 1e4))
    out, result = _qdq(model)
    assert graphs.op_count(out, "Min") == 0
    assert result.notes["clamps"] == {"Min_2": "dropped (bound past the quantizer's range)"}
    feeds = graphs.feeds_for(model, batch=4)
    ref, got = graphs.run(model, feeds)[0], graphs.run(out, feeds)[0]
    assert _cosine(ref, got) > 0.998


def test_trt_profile_leaves_the_clamp_in_float():
    out, result = _qdq(_relu_min([0.5, 1.0, 2.0, 3.0, 0.2, 6.0]), profile="trt")
    assert result.notes["clamps"] == {}
    producer = {o: n for n in out.graph.node for o in n.output}
    (mn,) = [n for n in out.graph.node if n.op_type == "Min"]
    assert producer[mn.input[0]].op_type == "Relu"


def test_conv_writing_the_graph_output_is_quantized_under_its_name(tmp_path):
    model = _relu_min(np.full(6, 1e4))
    out, _ = _qdq(model)
    assert [o.name for o in out.graph.output] == ["y"]
    producer = {o: n for n in out.graph.node for o in n.output}
    assert producer["y"].op_type == "DequantizeLinear"
    ops = graphs.optimized_ops(out, str(tmp_path / "opt.onnx"))
    assert "Conv" not in ops and ops.count("QLinearConv") == 3
    onnx.checker.check_model(out, full_check=True)
