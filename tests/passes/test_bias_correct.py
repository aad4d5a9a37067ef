import numpy as np
import onnx
import pytest

from graphcomp.core import quant
from graphcomp.core.errors import ConfigError
from graphcomp.core.pass_base import PassContext
from graphcomp.passes.dfq.bias_correct import BiasCorrectConfig, BiasCorrectPass
from graphcomp.passes.fold_bn import FoldBnPass
from tests import graphs

VALID_CONVS = """
g (float[N, 3, 8, 8] x, float[6, 3, 3, 3] w_a, float[6] b_a, float[6, 1, 3, 3] w_dw,
   float[6] b_dw, float[4, 6, 1, 1] w_b) => (float[N, 4, 4, 4] y) {
    a = Conv (x, w_a, b_a)
    r = Relu (a)
    d = Conv <group = 6> (r, w_dw, b_dw)
    rd = Relu (d)
    y = Conv (rd, w_b)
}
"""


def _fake_quantized(model, spec):
    """The model with every Conv/Gemm weight replaced by its qdq fake-quant value."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = {i.name: i for i in out.graph.initializer}
    for node in out.graph.node:
        if node.op_type in ("Conv", "Gemm"):
            w = onnx.numpy_helper.to_array(inits[node.input[1]])
            inits[node.input[1]].CopyFrom(
                onnx.numpy_helper.from_array(quant.fake_quant(w, spec), node.input[1])
            )
    return out


def _output_means(model, feeds, names):
    from graphcomp.measure import observe

    values = observe.intermediates(model, names, feeds)
    return {n: v.astype(np.float64).mean(axis=(0, 2, 3)) for n, v in values.items()}


@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_first_layer_mean_is_exact_with_calibration(seed, per_channel):
    model = graphs.spread_channels(graphs.build(VALID_CONVS, seed=seed), seed=seed)
    feeds = graphs.feeds_for(model, seed=seed, batch=16)
    # non-zero mean, constant over space: every kernel tap then sees the same mean
    feeds = {k: np.broadcast_to(v[:, :, :1, :1] + 1.5, v.shape).copy() for k, v in feeds.items()}
    ctx = PassContext(calibration=feeds)
    out, res = graphs.apply(
        model, BiasCorrectPass(BiasCorrectConfig(per_channel=per_channel)), ctx=ctx
    )
    result = res.records[0].result
    assert len(result.changes) == 3 and result.notes["input_mean_sources"] == {"calibration": 3}
    # layer a is a full conv: qdq bounds its code pairs (u8s8 int16) and balances its rounding
    spec = quant.QuantSpec(8, True, True, per_channel, axis=0, pairs=(0, 2, 3, 1), balanced=True)
    ref = _output_means(model, feeds, ["a"])["a"]
    naive = _output_means(_fake_quantized(model, spec), feeds, ["a"])["a"]
    fixed = _output_means(_fake_quantized(out, spec), feeds, ["a"])["a"]
    # the first layer reads float inputs, so its corrected mean is the float mean
    assert np.max(np.abs(fixed - ref)) < 1e-4 * np.max(np.abs(ref)) + 1e-5
    assert np.max(np.abs(naive - ref)) > 10 * np.max(np.abs(fixed - ref))


@pytest.mark.parametrize("seed", [0, 1])
def test_correction_reduces_output_bias_of_the_quantized_model(seed):
    model = graphs.spread_channels(graphs.build(VALID_CONVS, seed=seed), seed=seed)
    feeds = graphs.feeds_for(model, seed=seed, batch=16)
    out, _ = graphs.apply(model, BiasCorrectPass(BiasCorrectConfig(stats="synthetic")))
    spec = quant.QuantSpec(4, True, True, False)
    out4, _ = graphs.apply(model, BiasCorrectPass(BiasCorrectConfig(stats="synthetic", bits=4)))
    ref = _output_means(model, feeds, ["y"])["y"]
    naive = _output_means(_fake_quantized(model, spec), feeds, ["y"])["y"]
    fixed = _output_means(_fake_quantized(out4, spec), feeds, ["y"])["y"]
    assert np.abs(fixed - ref).mean() < np.abs(naive - ref).mean()
    assert graphs.op_count(out, "Conv") == 3


def test_bn_model_uses_pushed_bn_means():
    text = graphs.CONV_BN_RELU_CONV
    ctx = PassContext()
    _, res = graphs.apply(graphs.build(text), FoldBnPass(), BiasCorrectPass(), ctx=ctx)
    assert res.records[1].result.notes["input_mean_sources"] == {"bn": 1, "synthetic": 1}


def test_bad_config_is_rejected():
    with pytest.raises(ConfigError):
        BiasCorrectConfig(bits=7)
    with pytest.raises(ConfigError):
        BiasCorrectConfig(stats="nope")
