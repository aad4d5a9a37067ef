"""prune on exporter patterns: computed biases, x.view(x.size(0), -1), shape reads,
least-squares reconstruction, smooth-noise statistics, `inspect --groups`."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from graphcomp.cli import app
from graphcomp.core.pass_base import PassContext
from graphcomp.passes.prune.walk import describe
from tests import graphs
from tests.passes.test_prune import prune, zero_units

# Paddle-style: the bias is Reshape(constant) and added by an Add node.
COMPUTED_BIAS = """
g (float[N, 3, 8, 8] x, float[8, 3, 3, 3] w_a, float[8] b_a, float[6, 8, 1, 1] w_b)
   => (float[N, 6, 8, 8] y) {
    a = Conv <pads = [1, 1, 1, 1]> (x, w_a)
    sh = Constant <value = int64[4] {1, 8, 1, 1}> ()
    bias = Reshape (b_a, sh)
    ab = Add (a, bias)
    r = Relu (ab)
    y = Conv (r, w_b)
}
"""

# torch: x.view(x.size(0), -1) after global pooling, the batch read from the graph input.
VIEW_BATCH = """
g (float[N, 3, 8, 8] x, float[16, 3, 3, 3] w_a, float[16] b_a, float[5, 16] w_fc, float[5] b_fc)
   => (float[N, 5] y) {
    a = Conv <pads = [1, 1, 1, 1]> (x, w_a, b_a)
    r = Relu (a)
    p = GlobalAveragePool (r)
    s = Shape (x)
    i0 = Constant <value = int64 {0}> ()
    n = Gather <axis = 0> (s, i0)
    ax = Constant <value = int64[1] {0}> ()
    nu = Unsqueeze (n, ax)
    m1 = Constant <value = int64[1] {-1}> ()
    t = Concat <axis = 0> (nu, m1)
    f = Reshape (p, t)
    y = Gemm <transB = 1> (f, w_fc, b_fc)
}
"""

# A Shape that reads the channel count (as a detector head building a view) must block.
SHAPE_READS_CHANNELS = """
g (float[N, 3, 8, 8] x, float[8, 3, 1, 1] w_a) => (float[N, 8, 64] y) {
    a = Conv (x, w_a)
    s = Shape (a)
    k = Constant <value = int64[1] {1}> ()
    c = Gather <axis = 0> (s, k)
    n0 = Constant <value = int64[1] {0}> ()
    n = Gather <axis = 0> (s, n0)
    m1 = Constant <value = int64[1] {-1}> ()
    t = Concat <axis = 0> (n, c, m1)
    y = Reshape (a, t)
}
"""


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("text", [COMPUTED_BIAS, VIEW_BATCH], ids=["computed-bias", "view"])
def test_exporter_patterns_prune_exactly(text, seed):
    model = graphs.build(text, seed=seed)
    rows = describe(model)
    assert rows[0]["prunable"], rows[0]["reason"]
    zeroed = zero_units(model, 0.5)
    out, record = prune(zeroed, importance="l1", ratio=0.3, round_to=1)
    assert record.params[1] < record.params[0]
    feeds = graphs.feeds_for(model, seed=seed, batch=3)
    np.testing.assert_allclose(
        graphs.run(out, feeds)[0], graphs.run(zeroed, feeds)[0], atol=1e-5, rtol=1e-5
    )


def test_shape_reading_the_channel_count_blocks_the_group():
    rows = describe(graphs.build(SHAPE_READS_CHANNELS))
    assert not rows[0]["prunable"]
    assert "channel count is read at run time" in rows[0]["reason"]
    out, record = prune(graphs.build(SHAPE_READS_CHANNELS), ratio=0.5, round_to=1)
    assert not record.result.changes


def test_least_squares_reconstruction_beats_mean_compensation():
    model = graphs.build(graphs.PRUNE_CONCAT_FLATTEN, seed=11)
    feeds = graphs.feeds_for(model, seed=4, batch=64)
    ref = graphs.run(model, feeds)[0]
    errors = {}
    for refit in (False, True):
        ctx = PassContext(calibration=feeds)
        out, record = prune(model, ctx=ctx, ratio=0.5, round_to=1, reconstruct=refit)
        assert record.result.notes["reconstructed"] == (2 if refit else 0)  # conv c, fc
        errors[refit] = float(np.mean((graphs.run(out, feeds)[0] - ref) ** 2))
    assert errors[True] < 0.8 * errors[False]


def test_inspect_groups_lists_members_and_reasons(tmp_path):
    path = tmp_path / "blocked.onnx"
    onnx.save(graphs.build(graphs.PRUNE_BLOCKED), path)
    result = CliRunner().invoke(app, ["inspect", str(path), "--groups", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [r["prunable"] for r in rows] == [False] * 4
    assert any("grouped conv (group=2)" in r["reason"] for r in rows)
    assert rows[1]["members"] == ["a", "side"] and rows[1]["producers"] == ["Conv_1"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_data_free_refit_on_noise_lowers_the_error_on_that_noise(seed):
    model = graphs.build(graphs.PRUNE_CONCAT_FLATTEN, seed=seed)
    feeds = graphs.feeds_for(model, seed=7, batch=128)
    ref = graphs.run(model, feeds)[0]
    errors = {}
    for refit in (False, True):
        out, record = prune(
            model, ratio=0.5, round_to=1, prior="normal", samples=256, reconstruct=refit
        )
        assert record.result.notes["reconstructed"] == (2 if refit else 0)
        errors[refit] = float(np.mean((graphs.run(out, feeds)[0] - ref) ** 2))
    assert errors[True] < errors[False]
