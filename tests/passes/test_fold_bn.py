"""fold-bn: BN folded into Conv/ConvTranspose/Gemm, bit-for-bit up to rounding; stats kept."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from graphcomp.core.pass_base import PassContext
from graphcomp.passes.fold_bn import FoldBnPass
from tests import graphs


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(
    "text",
    [graphs.CONV_BN_RELU, graphs.CONVT_BN, graphs.GEMM_BN],
    ids=["conv", "convtranspose-group2", "gemm-transB-alpha-beta"],
)
def test_fold_is_exact_and_removes_the_bn(text, seed):
    model = graphs.build(text, seed=seed)
    ctx = PassContext()
    out, result = graphs.apply(model, FoldBnPass(), ctx=ctx)
    assert graphs.op_count(out, "BatchNormalization") == 0
    assert len(result.records[0].result.changes) == 1
    onnx.checker.check_model(out, full_check=True)
    feeds = graphs.feeds_for(model, seed=seed)
    ref, new = graphs.run(model, feeds)[0], graphs.run(out, feeds)[0]
    np.testing.assert_allclose(new, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_fold_keeps_bn_statistics_for_later_passes():
    model = graphs.build(graphs.CONV_BN_RELU, seed=3)
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    ctx = PassContext()
    graphs.apply(model, FoldBnPass(), ctx=ctx)
    stats = ctx.stats["n"]
    assert stats.source == "bn"
    np.testing.assert_allclose(stats.mean, inits["bn_bias"])
    var = inits["bn_var"].astype(np.float64)
    # std of the BN output when its input has the running variance (eps from the graph)
    expected = np.abs(inits["bn_scale"]) * np.sqrt(var / (var + 1e-3))
    np.testing.assert_allclose(stats.std, expected, rtol=1e-6)


def test_unfoldable_bns_are_skipped_with_reasons():
    model = graphs.build(graphs.UNFOLDABLE_BN)
    out, result = graphs.apply(model, FoldBnPass())
    skipped = {s.reason for s in result.records[0].result.skipped}
    assert graphs.op_count(out, "BatchNormalization") == 2
    assert skipped == {
        "input comes from Add, not Conv/ConvTranspose/Gemm",
        "output of Conv_2 is also read elsewhere",
    }


def test_shared_weight_is_not_folded_for_one_user_only():
    text = """
    g (float[N, 3, 4, 4] x, float[3, 3, 1, 1] w_conv, float[3] bn_scale, float[3] bn_bias,
       float[3] bn_mean, float[3] bn_var) => (float[N, 3, 4, 4] y, float[N, 3, 4, 4] z) {
        c = Conv (x, w_conv)
        y = BatchNormalization (c, bn_scale, bn_bias, bn_mean, bn_var)
        z = Conv (x, w_conv)
    }
    """
    out, result = graphs.apply(graphs.build(text), FoldBnPass())
    assert graphs.op_count(out, "BatchNormalization") == 1
    assert "not a constant used by this node alone" in result.records[0].result.skipped[0].reason


def test_input_model_is_not_modified():
    model = graphs.build(graphs.CONV_BN_RELU)
    before = model.SerializeToString()
    graphs.apply(model, FoldBnPass())
    assert model.SerializeToString() == before
