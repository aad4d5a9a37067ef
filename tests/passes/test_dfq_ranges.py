"""passes/dfq/ranges.py: activation ranges carried from per-channel statistics."""

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest

from graphcomp.core.pass_base import ChannelStats
from graphcomp.passes.dfq.ranges import activation_ranges
from tests import graphs

DENSE = """
g (float[N, 3, 8, 8] x, float[4, 3, 3, 3] w_a, float[4] b_a, float[2, 4, 3, 3] w_b,
   float[2] b_b, float[5, 6, 1, 1] w_c) => (float[N, 5, 8, 8] y) {
    a = Conv <pads = [1, 1, 1, 1]> (x, w_a, b_a)
    ra = Relu (a)
    b = Conv <pads = [1, 1, 1, 1]> (ra, w_b, b_b)
    rb = Relu (b)
    cat = Concat <axis = 1> (ra, rb)
    y = Conv (cat, w_c)
}
"""


@pytest.mark.parametrize("k", [2.0, 6.0])
def test_concat_of_carried_channels_gets_their_union(k):
    graph = gs.import_onnx(graphs.build(DENSE))
    known = {
        "a": ChannelStats(np.array([0.0, 1.0, -1.0, 2.0]), np.array([1.0, 0.5, 0.2, 1.0]), "bn"),
        "b": ChannelStats(np.array([3.0, -2.0]), np.array([0.5, 0.1]), "bn"),
    }
    ranges = activation_ranges(graph, known, k)
    assert ranges["ra"] == (0.0, 2.0 + k, "bn")
    assert ranges["rb"] == (0.0, 3.0 + 0.5 * k, "bn")
    lo, hi, src = ranges["cat"]
    assert (lo, src) == (0.0, "bn") and hi == max(2.0 + k, 3.0 + 0.5 * k)


def test_concat_with_an_uncarried_input_is_left_to_measurement():
    graph = gs.import_onnx(graphs.build(DENSE))
    known = {"b": ChannelStats(np.array([3.0, -2.0]), np.array([0.5, 0.1]), "bn")}
    ranges = activation_ranges(graph, known, 4.0)
    assert "rb" in ranges and "cat" not in ranges and "ra" not in ranges


def test_global_pool_and_flatten_keep_the_channel_intervals():
    model = onnx.shape_inference.infer_shapes(graphs.build(graphs.CONV_BN_POOL_FC))
    known = {"n": ChannelStats(np.array([0.0, 1.0, -1.0, 2.0]), np.ones(4), "bn")}
    got = activation_ranges(gs.import_onnx(model), known, 3.0)
    # a channel's mean stays inside its interval; Flatten [N, 4, 1, 1] -> [N, 4] keeps it
    assert got["r"][:2] == got["p"][:2] == got["f"][:2] == (0.0, 5.0)
