"""measure/elementwise.py: elementwise functions of one tensor, their moments and ranges."""

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest

from graphcomp.core.pass_base import ChannelStats
from graphcomp.measure import elementwise
from graphcomp.passes.dfq.ranges import activation_ranges
from tests import graphs

# conv -> SiLU (x * Sigmoid(x)) -> HardSwish written out (x * Clip(x + 3, 0, 6) / 6)
# -> a learnable per-channel affine (PaddleOCR) -> conv; `odd` multiplies two tensors
CHAIN = """
g (float[N, 3, 8, 8] x, float[4, 3, 3, 3] w_a, float[4] b_a, float[4, 1, 1] w_scale,
   float[2, 4, 1, 1] w_b, float[8] w_row) => (float[N, 2, 8, 8] y, float[N, 4, 8, 8] odd,
   float[N, 4, 8, 8] wide) {
    a = Conv <pads = [1, 1, 1, 1]> (x, w_a, b_a)
    sig = Sigmoid (a)
    silu = Mul (a, sig)
    three = Constant <value = float {3.0}> ()
    lo = Constant <value = float {0.0}> ()
    hi = Constant <value = float {6.0}> ()
    six = Constant <value = float {6.0}> ()
    shifted = Add (silu, three)
    gate = Clip (shifted, lo, hi)
    prod = Mul (silu, gate)
    hsw = Div (prod, six)
    aff = Mul (hsw, w_scale)
    half = Constant <value = float {0.5}> ()
    out = Add (aff, half)
    y = Conv (out, w_b)
    x_a = Conv <pads = [1, 1, 1, 1]> (x, w_a)
    odd = Mul (a, x_a)
    wide = Mul (a, w_row)
}
"""


def _graph() -> gs.Graph:
    model = onnx.shape_inference.infer_shapes(graphs.build(CHAIN, seed=2))
    graph = gs.import_onnx(model)
    graph.toposort()
    return graph


def _node(graph: gs.Graph, output: str) -> gs.Node:
    return next(n for n in graph.nodes if n.outputs and n.outputs[0].name == output)


def _reference(a: np.ndarray, scale: np.ndarray) -> np.ndarray:
    silu = a / (1.0 + np.exp(-a))
    return silu * np.clip(silu + 3.0, 0.0, 6.0) / 6.0 * scale + 0.5


def test_a_chain_of_elementwise_ops_is_one_function_of_the_conv_output():
    graph = _graph()
    fn = elementwise.function_of(_node(graph, "out"), lambda n: n == "a", lambda n: 4)
    assert fn is not None and fn.root == "a"
    scale = next(t for t in graph.tensors().values() if t.name == "w_scale").values.reshape(4, 1)
    points = np.linspace(-6, 6, 25)[None, :].repeat(4, axis=0)
    np.testing.assert_allclose(fn(points), _reference(points, scale), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_moments_match_monte_carlo_and_the_interval_holds_the_silu_minimum(seed):
    graph = _graph()
    fn = elementwise.function_of(_node(graph, "silu"), lambda n: n == "a", lambda n: 4)
    assert fn is not None
    rng = np.random.default_rng(seed)
    mean, std = rng.normal(0, 2, 4), rng.uniform(0.3, 2.0, 4)
    x = mean[:, None] + std[:, None] * rng.standard_normal((4, 400_000))
    y = x / (1.0 + np.exp(-x))
    got_mean, got_var = fn.moments(mean, std * std)
    np.testing.assert_allclose(got_mean, y.mean(axis=1), atol=0.01)
    np.testing.assert_allclose(np.sqrt(got_var), y.std(axis=1), rtol=0.01, atol=0.01)
    lo, hi = fn.interval(np.full(4, -5.0), np.full(4, 2.0))
    np.testing.assert_allclose(lo, -0.2785, atol=1e-3)  # SiLU's minimum, inside the interval
    np.testing.assert_allclose(hi, 2.0 / (1.0 + np.exp(-2.0)), rtol=1e-9)


def test_products_of_two_tensors_and_constants_on_another_axis_are_not_functions():
    graph = _graph()
    roots = {"a", "x_a"}
    assert elementwise.function_of(_node(graph, "odd"), roots.__contains__, lambda n: 4) is None
    # [8] broadcasts over W of an NCHW tensor, not over its channels
    assert elementwise.function_of(_node(graph, "wide"), roots.__contains__, lambda n: 4) is None


def test_ranges_flow_through_silu_and_hardswish_from_the_statistics():
    graph = _graph()
    mean, std = np.array([0.0, 1.0, -1.0, 2.0]), np.array([1.0, 0.5, 2.0, 1.0])
    got = activation_ranges(graph, {"a": ChannelStats(mean, std, "bn")}, 4.0)
    lo, hi, src = got["silu"]
    assert src == "bn" and lo == pytest.approx(-0.2785, abs=1e-3)
    assert hi == pytest.approx(max((mean + 4 * std) / (1 + np.exp(-(mean + 4 * std)))))
    assert {"sig", "shifted", "gate", "prod", "hsw", "aff", "out"} <= set(got)


def test_functions_of_measured_statistics_are_left_to_measurement():
    graph = _graph()
    mean, std = np.zeros(4), np.ones(4)
    got = activation_ranges(graph, {"a": ChannelStats(mean, std, "synthetic")}, 4.0)
    assert "a" in got and "silu" not in got and "sig" not in got
