import numpy as np
import onnx
import pytest

from graphcomp.core.errors import ConfigError
from graphcomp.core.pass_base import ChannelStats, PassContext
from graphcomp.measure import observe
from graphcomp.passes.dfq.absorb_bias import AbsorbBiasConfig, AbsorbBiasPass
from graphcomp.passes.dfq.equalize import EqualizePass
from tests import graphs

CONV_RELU_CONV_1X1 = """
g (float[N, 3, 8, 8] x, float[6, 3, 3, 3] w_a, float[6] b_a, float[4, 6, 1, 1] w_b,
   float[4] b_b) => (float[N, 4, 6, 6] y) {
    a = Conv (x, w_a, b_a)
    r = Relu (a)
    y = Conv (r, w_b, b_b)
}
"""
GEMM = graphs.GEMM_RELU_GEMM
DW = graphs.CONV_DW_CONV.replace("pads = [1, 1, 1, 1]", "pads = [0, 0, 0, 0]").replace(
    "float[N, 4, 8, 8] y", "float[N, 4, 6, 6] y"
)


def _high_bias(text, seed):
    """A model whose first layer has large positive biases (always-on channels)."""
    model = graphs.build(text, seed=seed)
    for init in model.graph.initializer:
        if init.name == "b_a":
            b = onnx.numpy_helper.to_array(init) + 12.0
            init.CopyFrom(onnx.numpy_helper.from_array(b.astype(np.float32), "b_a"))
    return model


def _exact_stats(model, feeds, name, k):
    """Stats whose mean - k std equals the observed minimum: absorption is then exact."""
    a = observe.intermediates(model, [name], feeds)[name].astype(np.float64)
    axes = tuple(i for i in range(a.ndim) if i != 1)
    std = np.ones(a.shape[1])
    return ChannelStats(a.min(axis=axes) + k * std, std, "bn")


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("text", [CONV_RELU_CONV_1X1, GEMM, DW], ids=["conv", "gemm", "relu6"])
def test_absorption_is_exact_when_values_stay_above_c(text, seed):
    model = _high_bias(text, seed)
    feeds = graphs.feeds_for(model, seed=seed, batch=4)
    ctx = PassContext()
    ctx.stats["a"] = _exact_stats(model, feeds, "a", 3.0)
    out, res = graphs.apply(model, AbsorbBiasPass(), ctx=ctx)
    onnx.checker.check_model(out)
    result = res.records[0].result
    assert result.changes and "stats: bn" in result.changes[0].detail
    ref, new = graphs.run(model, feeds)[0], graphs.run(out, feeds)[0]
    assert np.max(np.abs(ref - new)) / np.max(np.abs(ref)) < 1e-4
    # the absorbed layer's activation range shrank by c
    r_ref = observe.intermediates(model, ["a"], feeds)["a"]
    r_new = observe.intermediates(out, ["a"], feeds)["a"]
    assert r_new.max() < r_ref.max()
    np.testing.assert_allclose(
        ctx.stats["a"].mean, np.ones_like(ctx.stats["a"].mean) * 3.0, atol=1e-9
    )


def test_absorption_with_synthetic_stats_stays_close():
    model = _high_bias(CONV_RELU_CONV_1X1, 4)
    cfg = AbsorbBiasConfig(stats="synthetic", prior="normal", samples=256)
    out, res = graphs.apply(model, AbsorbBiasPass(cfg))
    assert "stats: synthetic" in res.records[0].result.changes[0].detail
    feeds = graphs.feeds_for(model, seed=9, batch=8)
    ref, new = graphs.run(model, feeds)[0], graphs.run(out, feeds)[0]
    # only the rare values below c (about Phi(-3) of them) move
    assert np.mean(np.abs(ref - new) > 1e-4 * np.abs(ref).max()) < 0.02
    assert np.mean(np.abs(ref - new)) / np.mean(np.abs(ref)) < 0.01


def test_after_equalize_relu6_bound_is_shifted_per_channel():
    model = graphs.spread_channels(_high_bias(DW, 3), seed=3)
    feeds = graphs.feeds_for(model, seed=3, batch=4)
    eq, _ = graphs.apply(model, EqualizePass())
    ctx = PassContext()
    ctx.stats["a"] = _exact_stats(eq, feeds, "a", 3.0)
    out, _ = graphs.apply(eq, AbsorbBiasPass(), ctx=ctx)
    ref, new = graphs.run(model, feeds)[0], graphs.run(out, feeds)[0]
    assert np.max(np.abs(ref - new)) / np.max(np.abs(ref)) < 1e-4
    assert graphs.op_count(out, "Clip") == 0


def test_links_without_activation_or_stats_are_skipped():
    text = CONV_RELU_CONV_1X1.replace("r = Relu (a)", "r = Identity (a)")
    _, res = graphs.apply(graphs.build(text), AbsorbBiasPass(AbsorbBiasConfig(stats="bn")))
    result = res.records[0].result
    assert not result.changes
    assert any("no ReLU-type activation" in s.reason for s in result.skipped)
    _, res = graphs.apply(
        graphs.build(CONV_RELU_CONV_1X1), AbsorbBiasPass(AbsorbBiasConfig(stats="bn"))
    )
    assert any("no statistics" in s.reason for s in res.records[0].result.skipped)


def test_bad_config_is_rejected():
    with pytest.raises(ConfigError):
        AbsorbBiasConfig(k=-1.0)
    with pytest.raises(ConfigError):
        AbsorbBiasConfig(stats="oracle")


def test_zero_padded_consumer_is_skipped_unless_asked():
    text = CONV_RELU_CONV_1X1.replace("float[4, 6, 1, 1] w_b", "float[4, 6, 3, 3] w_b").replace(
        "y = Conv (r, w_b, b_b)", "y = Conv <pads = [1, 1, 1, 1]> (r, w_b, b_b)"
    )
    model = _high_bias(text, 0)
    feeds = graphs.feeds_for(model, batch=4)
    ctx = PassContext()
    ctx.stats["a"] = _exact_stats(model, feeds, "a", 3.0)
    _, res = graphs.apply(model, AbsorbBiasPass(), ctx=ctx)
    result = res.records[0].result
    assert not result.changes and "zero-pads" in result.skipped[-1].reason
    out, res = graphs.apply(model, AbsorbBiasPass(AbsorbBiasConfig(padded=True)), ctx=ctx)
    ref, new = graphs.run(model, feeds)[0], graphs.run(out, feeds)[0]
    border = np.ones(ref.shape, bool)
    border[:, :, 1:-1, 1:-1] = False
    # exact inside, off by the padded taps' W2 c on the border
    assert np.max(np.abs(ref - new)[~border]) < 1e-4 * np.abs(ref).max()
    assert np.max(np.abs(ref - new)[border]) > 1e-2 * np.abs(ref).max()
