from pathlib import Path

import numpy as np
import onnx
import pytest

from graphcomp.core.errors import ConfigError
from graphcomp.core.pass_base import PassContext
from graphcomp.passes.dfq.clip import range_fit
from graphcomp.passes.dfq.equalize import EqualizeConfig, EqualizePass
from graphcomp.passes.fold_bn import FoldBnPass
from tests import graphs

CONV_RELU_CONV = """
g (float[N, 3, 8, 8] x, float[6, 3, 3, 3] w_a, float[6] b_a, float[4, 6, 3, 3] w_b,
   float[4] b_b) => (float[N, 4, 8, 8] y) {
    a = Conv <pads = [1, 1, 1, 1]> (x, w_a, b_a)
    r = Relu (a)
    y = Conv <pads = [1, 1, 1, 1]> (r, w_b, b_b)
}
"""

RESIDUAL = """
g (float[N, 4, 8, 8] x, float[4, 4, 3, 3] w_a, float[4] b_a) => (float[N, 4, 8, 8] y) {
    a = Conv <pads = [1, 1, 1, 1]> (x, w_a, b_a)
    r = Relu (a)
    y = Add (r, a)
}
"""

SHAPES = {
    "CONV_RELU_CONV": CONV_RELU_CONV,
    "CONV_DW_CONV": graphs.CONV_DW_CONV,
    "GEMM_RELU_GEMM": graphs.GEMM_RELU_GEMM,
    "CONV_PRELU_POOL_FC": graphs.CONV_PRELU_POOL_FC,
}


def _rel_err(ref, new):
    return float(np.max(np.abs(ref - new)) / np.max(np.abs(ref)))


def _spread(model, layer):
    init = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    node = next(n for n in model.graph.node if n.name == layer)
    w = np.abs(init[node.input[1]])
    rows = w.reshape(w.shape[0], -1).max(axis=1) if node.op_type == "Conv" else None
    return rows.max() / rows.min()


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("clip", ["per-channel", "range", "constrain"])
def test_equalize_preserves_the_function(shape, seed, clip):
    model = graphs.spread_channels(graphs.build(SHAPES[shape], seed=seed), seed=seed)
    out, res = graphs.apply(model, EqualizePass(EqualizeConfig(clip=clip)))
    onnx.checker.check_model(out)
    feeds = graphs.feeds_for(model, seed=seed, batch=3)
    feeds = {k: v * 3.0 for k, v in feeds.items()}  # drive the relu6 into saturation
    ref, new = graphs.run(model, feeds)[0], graphs.run(out, feeds)[0]
    assert _rel_err(ref, new) < 1e-4
    links = res.records[0].result.notes["links"]
    assert links == {"CONV_DW_CONV": 2, "CONV_PRELU_POOL_FC": 2}.get(shape, 1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equalize_converges_to_equal_ranges_on_both_sides(seed):
    model = graphs.spread_channels(graphs.build(graphs.CONV_DW_CONV, seed=seed), seed=seed)
    out, res = graphs.apply(model, EqualizePass())
    notes = res.records[0].result.notes
    assert notes["converged"] and notes["layers_covered"] == "3/3"
    init = {i.name: np.abs(onnx.numpy_helper.to_array(i)) for i in out.graph.initializer}
    convs = [n for n in out.graph.node if n.op_type == "Conv"]
    w_a, w_dw, w_b = (init[n.input[1]] for n in convs)
    # the fixed point of CLE: output range of channel i == input range of channel i
    np.testing.assert_allclose(w_a.max(axis=(1, 2, 3)), w_dw.max(axis=(1, 2, 3)), rtol=1e-3)
    np.testing.assert_allclose(w_dw.max(axis=(1, 2, 3)), w_b.max(axis=(0, 2, 3)), rtol=1e-3)
    dw = convs[1].name
    before, after = notes["channel_ranges"][dw]["before"], notes["channel_ranges"][dw]["after"]
    assert max(after) / min(after) < max(before) / min(before)
    # relu6 became Relu -> Min with a per-channel bound, output names unchanged
    assert graphs.op_count(out, "Clip") == 0 and graphs.op_count(out, "Min") == 2
    assert [o.name for o in out.graph.output] == ["y"]


def test_constrain_keeps_clip_and_leaves_saturating_channels():
    model = graphs.spread_channels(graphs.build(graphs.CONV_DW_CONV, seed=5), seed=5)
    out, res = graphs.apply(model, EqualizePass(EqualizeConfig(clip="constrain")))
    assert graphs.op_count(out, "Clip") == 2 and graphs.op_count(out, "Min") == 0
    # the first conv's input is unbounded, so its channels can not be scaled
    first = res.records[0].result.changes[0]
    assert "s in [1, 1]" in first.detail


def test_equalize_applied_twice_is_still_exact():
    model = graphs.spread_channels(graphs.build(graphs.CONV_DW_CONV, seed=7), seed=7)
    once, _ = graphs.apply(model, EqualizePass())
    twice, res = graphs.apply(once, EqualizePass())
    feeds = {k: v * 3 for k, v in graphs.feeds_for(model, seed=7).items()}
    assert _rel_err(graphs.run(model, feeds)[0], graphs.run(twice, feeds)[0]) < 1e-4
    assert res.records[0].result.notes["links"] == 2


def test_residual_junction_is_skipped_with_reason():
    model = graphs.build(RESIDUAL)
    out, res = graphs.apply(model, EqualizePass())
    result = res.records[0].result
    assert not result.changes and len(result.skipped) == 1
    assert "reaches Add_2 (Add) through a branch" in result.skipped[0].reason


CONV_BN_RELU_CONV = graphs.CONV_BN_RELU_CONV


def test_bn_stats_follow_the_scaling():
    model = graphs.build(CONV_BN_RELU_CONV)
    ctx = PassContext()
    _, res = graphs.apply(model, FoldBnPass(), EqualizePass(), ctx=ctx)
    ((name, st),) = ctx.stats.items()
    assert st.source == "bn" and name == "n"
    init = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    ranges = res.records[1].result.notes["channel_ranges"]
    layer = res.records[1].result.changes[0].node
    s = np.array(ranges[layer]["before"]) / np.array(ranges[layer]["after"])
    assert np.ptp(s) > 0.01
    var = init["bn_var"].astype(np.float64)
    std = np.abs(init["bn_scale"]) * np.sqrt(var / (var + 1e-3))
    np.testing.assert_allclose(st.std * s, std, rtol=1e-4)
    np.testing.assert_allclose(st.mean * s, init["bn_bias"], rtol=1e-4)


def test_bad_config_is_rejected():
    with pytest.raises(ConfigError):
        EqualizeConfig(clip="relu")
    with pytest.raises(ConfigError):
        EqualizeConfig(max_iter=0)


@pytest.mark.parametrize("strength", [0.5, 0.75])
def test_partial_strength_is_exact_and_between_none_and_full(strength):
    model = graphs.spread_channels(graphs.build(graphs.CONV_DW_CONV, seed=2), seed=2)
    feeds = {k: v * 3.0 for k, v in graphs.feeds_for(model, seed=2, batch=4).items()}
    full, res_full = graphs.apply(model, EqualizePass())
    part, res_part = graphs.apply(model, EqualizePass(EqualizeConfig(strength=strength)))
    assert _rel_err(graphs.run(model, feeds)[0], graphs.run(part, feeds)[0]) < 1e-4
    ranges_full = res_full.records[0].result.notes["channel_ranges"]
    ranges_part = res_part.records[0].result.notes["channel_ranges"]
    name = next(iter(ranges_full))
    spread = {
        k: max(v[name]["after"]) / min(v[name]["after"])
        for k, v in (("full", ranges_full), ("part", ranges_part))
    }
    before = max(ranges_full[name]["before"]) / min(ranges_full[name]["before"])
    assert spread["full"] < spread["part"] < before


@pytest.mark.parametrize("seed", range(5))
def test_range_fit_puts_every_bound_past_every_range(seed):
    rng = np.random.default_rng(seed)
    total = np.exp(rng.normal(0, 1.5, 40))
    hi = np.full(40, 6.0)
    upper = np.where(rng.random(40) < 0.4, 6.0, rng.uniform(0, 6, 40))
    s = range_fit(total, upper, hi)
    assert np.min(hi / s) >= np.max(upper / s) * (1 - 1e-12)  # bounds past the range
    free = range_fit(total, np.zeros(40), hi)  # nothing reaches its bound: only T moves
    np.testing.assert_allclose(free, total)
    # channels reaching the bound share one scale
    assert np.ptp(s[upper == 6.0]) < 1e-9 * s.max()


ZOO = sorted((Path(__file__).resolve().parents[2] / "models").glob("*.onnx"))
EVAL = Path(__file__).resolve().parents[2] / "models/data/glyphs_eval.npz"


@pytest.mark.skipif(not ZOO or not EVAL.exists(), reason="models/ has no zoo")
@pytest.mark.parametrize("path", ZOO, ids=lambda p: p.stem)
def test_equalize_is_exact_on_every_zoo_model(path):
    model = onnx.load(path)
    x = np.load(EVAL)["input"][:64].astype(np.float32)
    folded, _ = graphs.apply(model, FoldBnPass())
    out, res = graphs.apply(folded, EqualizePass(EqualizeConfig(clip="range")))
    ref, new = graphs.run(model, {"input": x})[0], graphs.run(out, {"input": x})[0]
    assert _rel_err(ref, new) < 1e-4
    # densecat: through its Concats; vit: only the conv stem and the head chain
    links = {"densecat": 8, "mobilenetv2": 13, "resnet": 6, "vgg": 4, "vit": 2}
    assert res.records[0].result.notes["links"] >= links[path.stem.split("_")[0]]


# a dense block: a's channels reach b directly and c through the Concat (offset 0),
# b's reach c at offset 4
DENSE = """
g (float[N, 3, 8, 8] x, float[4, 3, 3, 3] w_a, float[4] b_a, float[2, 4, 3, 3] w_b,
   float[2] b_b, float[5, 6, 1, 1] w_c, float[5] b_c) => (float[N, 5, 8, 8] y) {
    a = Conv <pads = [1, 1, 1, 1]> (x, w_a, b_a)
    ra = Relu (a)
    b = Conv <pads = [1, 1, 1, 1]> (ra, w_b, b_b)
    rb = Relu (b)
    cat = Concat <axis = 1> (ra, rb)
    p = MaxPool <kernel_shape = [2, 2], strides = [1, 1], pads = [0, 0, 1, 1]> (cat)
    y = Conv (p, w_c, b_c)
}
"""


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dense_block_channels_are_equalized_through_branch_and_concat(seed):
    model = graphs.spread_channels(graphs.build(DENSE, seed=seed), seed=seed)
    out, res = graphs.apply(model, EqualizePass())
    notes = res.records[0].result.notes
    assert notes["links"] == 2 and notes["layers_covered"] == "3/3"
    feeds = graphs.feeds_for(model, seed=seed, batch=3)
    assert _rel_err(graphs.run(model, feeds)[0], graphs.run(out, feeds)[0]) < 1e-4
    init = {i.name: np.abs(onnx.numpy_helper.to_array(i)) for i in out.graph.initializer}
    w_a, w_b, w_c = (init[n.input[1]] for n in out.graph.node if n.op_type == "Conv")
    # CLE's fixed point with several readers: a's channel range == its largest reader range
    readers = np.maximum(w_b.max(axis=(0, 2, 3)), w_c[:, :4].max(axis=(0, 2, 3)))
    np.testing.assert_allclose(w_a.max(axis=(1, 2, 3)), readers, rtol=1e-3)
    np.testing.assert_allclose(w_b.max(axis=(1, 2, 3)), w_c[:, 4:].max(axis=(0, 2, 3)), rtol=1e-3)
