import math

import numpy as np
import onnx_graphsurgeon as gs
import pytest
from onnx import numpy_helper

from graphcomp.core.errors import ConfigError
from graphcomp.core.pass_base import ChannelStats, PassContext
from graphcomp.measure import normal, observe, stats
from graphcomp.passes.fold_bn import FoldBnPass
from tests import graphs

CONV_RELU_CONV = """
g (float[N, 3, 8, 8] x, float[6, 3, 3, 3] w_a, float[6] b_a, float[4, 6, 1, 1] w_b,
   float[4] b_b) => (float[N, 4, 8, 8] y) {
    a = Conv <pads = [1, 1, 1, 1]> (x, w_a, b_a)
    r = Relu (a)
    y = Conv (r, w_b, b_b)
}
"""


def _sample(mean, std, n=400_000, seed=0):
    rng = np.random.default_rng(seed)
    return mean[:, None] + std[:, None] * rng.standard_normal((mean.size, n))


@pytest.mark.parametrize("lo,hi", [(0.0, math.inf), (0.0, 6.0), (-math.inf, 0.0), (-1.0, 2.0)])
def test_clipped_moments_match_monte_carlo(lo, hi):
    mean, std = np.array([-2.0, 0.0, 1.5, 5.0, 8.0]), np.array([1.0, 2.0, 0.5, 3.0, 1.0])
    x = np.clip(_sample(mean, std), lo, hi)
    m, s = normal.clipped_moments(mean, std, lo, hi)
    np.testing.assert_allclose(m, x.mean(axis=1), atol=0.02)
    np.testing.assert_allclose(s, x.std(axis=1), atol=0.02)


def test_relu_mean_is_the_paper_formula():
    mean, std = np.array([0.3, -1.0]), np.array([1.2, 0.4])
    z = mean / std
    cdf = 0.5 * (1 + np.array([math.erf(v / math.sqrt(2)) for v in z]))
    pdf = np.exp(-z * z / 2) / math.sqrt(2 * math.pi)
    m, _ = normal.clipped_moments(mean, std)
    np.testing.assert_allclose(m, mean * cdf + std * pdf, rtol=1e-12)


def test_leaky_moments_match_monte_carlo():
    mean, std = np.array([-1.0, 0.5, 2.0]), np.array([1.0, 2.0, 0.3])
    alpha = np.array([0.1, 0.25, 0.5])
    x = _sample(mean, std)
    y = np.where(x > 0, x, alpha[:, None] * x)
    m, s = normal.leaky_moments(mean, std, alpha)
    np.testing.assert_allclose(m, y.mean(axis=1), atol=0.02)
    np.testing.assert_allclose(s, y.std(axis=1), atol=0.02)


def _relu6_node(opset_inputs: bool) -> gs.Node:
    x = gs.Variable("x")
    if opset_inputs:
        lo = gs.Constant("lo", np.array(0.0, np.float32))
        hi = gs.Constant("hi", np.array(6.0, np.float32))
        return gs.Node("Clip", inputs=[x, lo, hi], outputs=[gs.Variable("y")])
    return gs.Node("Clip", attrs={"min": 0.0, "max": 6.0}, inputs=[x], outputs=[gs.Variable("y")])


@pytest.mark.parametrize("opset_inputs", [True, False])
def test_activation_bounds_read_clip_both_ways(opset_inputs):
    assert normal.activation_bounds(_relu6_node(opset_inputs)) == (0.0, 6.0)


def test_post_activation_mean_of_relu6_is_bounded():
    st = ChannelStats(np.array([10.0, -10.0, 3.0]), np.array([0.1, 0.1, 1e-9]), "bn")
    m = normal.post_activation_mean(st, _relu6_node(True))
    np.testing.assert_allclose(m, [6.0, 0.0, 3.0], atol=1e-6)


def test_bn_stats_take_precedence_and_others_are_measured():
    model = graphs.build(graphs.CONV_BN_RELU)
    ctx = PassContext()
    folded, _ = graphs.apply(model, FoldBnPass(), ctx=ctx)
    out = stats.estimate(folded, ctx)
    assert [s.source for s in out.values()] == ["bn"]
    only_bn = stats.estimate(folded, ctx, method="bn")
    assert set(only_bn) == set(out)
    synthetic = stats.estimate(folded, ctx, method="synthetic")
    assert [s.source for s in synthetic.values()] == ["synthetic"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_calibration_stats_equal_numpy_moments(seed):
    model = graphs.build(CONV_RELU_CONV, seed=seed)
    data = graphs.feeds_for(model, seed=seed, batch=40)
    ctx = PassContext(calibration=data)
    out = stats.estimate(model, ctx)
    assert {s.source for s in out.values()} == {"calibration"}
    from graphcomp.measure import observe

    ref = observe.intermediates(model, ["a", "y"], data)
    for name in ("a", "y"):
        v = ref[name].astype(np.float64)
        np.testing.assert_allclose(out[name].mean, v.mean(axis=(0, 2, 3)), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(out[name].std, v.std(axis=(0, 2, 3)), rtol=1e-4, atol=1e-6)


def test_synthetic_stats_are_seeded_and_finite():
    model = graphs.build(CONV_RELU_CONV)
    a = stats.estimate(model, PassContext(), method="synthetic", seed=3)
    b = stats.estimate(gs.import_onnx(model), PassContext(), method="synthetic", seed=3)
    assert set(a) == {"a", "y"}
    for name in a:
        np.testing.assert_array_equal(a[name].mean, b[name].mean)
        assert np.all(np.isfinite(a[name].std)) and np.all(a[name].std > 0)


def test_bad_method_and_missing_calibration_are_config_errors():
    model = graphs.build(CONV_RELU_CONV)
    with pytest.raises(ConfigError):
        stats.estimate(model, PassContext(), method="guess")
    with pytest.raises(ConfigError):
        stats.estimate(model, PassContext(), method="calibration")


@pytest.mark.parametrize("seed", [0, 1])
def test_analytic_moments_match_white_noise_measurements(seed):
    text = """
    g (float[N, 3, 8, 8] x, float[6, 3, 3, 3] w_a, float[6] b_a, float[6, 1, 3, 3] w_dw,
       float[6] b_dw, float[5, 6] w_fc) => (float[N, 5] y) {
        a = Conv (x, w_a, b_a)
        r = Relu (a)
        d = Conv <group = 6> (r, w_dw, b_dw)
        p = GlobalAveragePool (d)
        f = Flatten (p)
        y = Gemm <transB = 1> (f, w_fc)
    }
    """
    model = graphs.build(text, seed=seed)
    feeds = graphs.feeds_for(model, seed=seed, batch=4000)
    ctx = PassContext(calibration=feeds)
    measured = stats.estimate(model, ctx, "calibration")
    analytic = stats.estimate(model, PassContext(), "analytic")
    assert {s.source for s in analytic.values()} == {"analytic"}
    assert set(analytic) == {"a", "d", "y"}
    # the first layer sees independent inputs: exact up to sampling noise
    np.testing.assert_allclose(analytic["a"].mean, measured["a"].mean, atol=0.05)
    np.testing.assert_allclose(analytic["a"].std, measured["a"].std, rtol=0.03)
    # behind a ReLU the elements are no longer independent: close, not equal
    np.testing.assert_allclose(analytic["d"].mean, measured["d"].mean, rtol=0.1, atol=0.1)
    np.testing.assert_allclose(analytic["d"].std, measured["d"].std, rtol=0.35)


def test_data_free_ignores_calibration_but_keeps_bn():
    model = graphs.build(graphs.CONV_BN_RELU)
    ctx = PassContext(calibration=graphs.feeds_for(model, batch=8))
    folded, _ = graphs.apply(model, FoldBnPass(), ctx=ctx)
    assert {s.source for s in stats.estimate(folded, ctx, "data-free").values()} == {"bn"}
    plain = graphs.build(CONV_RELU_CONV)
    ctx = PassContext(calibration=graphs.feeds_for(plain, batch=8))
    assert {s.source for s in stats.estimate(plain, ctx, "data-free").values()} == {"synthetic"}
    assert {s.source for s in stats.estimate(plain, ctx, "auto").values()} == {"calibration"}


def test_head_behind_a_global_pool_is_derived_from_bn_without_a_model_run(monkeypatch):
    model = graphs.build(graphs.CONV_BN_POOL_FC)
    ctx = PassContext()
    folded, _ = graphs.apply(model, FoldBnPass(), ctx=ctx)

    def no_session(*_args, **_kwargs):
        raise AssertionError("the model was run")

    monkeypatch.setattr(observe.inputs, "session", no_session)
    out = stats.estimate(folded, ctx)
    assert sorted(s.source for s in out.values()) == ["bn", "bn-derived"]
    bn = next(s for s in out.values() if s.source == "bn")
    head = next(s for s in out.values() if s.source == "bn-derived")
    relu_mean, relu_std = normal.clipped_moments(bn.mean, bn.std, 0.0, math.inf)
    inits = {i.name: numpy_helper.to_array(i) for i in folded.graph.initializer}
    w = inits["w_fc"].astype(np.float64)
    np.testing.assert_allclose(head.mean, relu_mean @ w, rtol=1e-6)
    np.testing.assert_allclose(head.std, np.sqrt(relu_std**2 @ (w * w)), rtol=1e-6)


def test_squeeze_excitation_behind_a_written_out_hardswish_is_derived_from_bn(monkeypatch):
    # PaddleOCR's block: BN -> HardSwish as x * Clip(x + 3, 0, 6) / 6 -> GAP -> 1x1 conv
    text = graphs.CONV_BN_POOL_FC.replace(
        "    r = Relu (n)\n",
        "    three = Constant <value = float {3.0}> ()\n"
        "    lo = Constant <value = float {0.0}> ()\n"
        "    hi = Constant <value = float {6.0}> ()\n"
        "    s = Add (n, three)\n"
        "    g = Clip (s, lo, hi)\n"
        "    m = Mul (n, g)\n"
        "    r = Div (m, hi)\n",
    )
    model = graphs.build(text)
    ctx = PassContext()
    folded, _ = graphs.apply(model, FoldBnPass(), ctx=ctx)
    monkeypatch.setattr(observe.inputs, "session", lambda *a, **k: pytest.fail("model was run"))
    out = stats.estimate(folded, ctx)
    head = next(s for s in out.values() if s.source == "bn-derived")
    bn = next(s for s in out.values() if s.source == "bn")
    x = bn.mean[:, None] + bn.std[:, None] * np.random.default_rng(0).standard_normal((4, 200_000))
    hsw = x * np.clip(x + 3.0, 0.0, 6.0) / 6.0
    w = {i.name: numpy_helper.to_array(i) for i in folded.graph.initializer}["w_fc"]
    np.testing.assert_allclose(head.mean, hsw.mean(axis=1) @ w, rtol=0.02, atol=0.01)
    np.testing.assert_allclose(head.std, np.sqrt(hsw.var(axis=1) @ (w * w)), rtol=0.02)
