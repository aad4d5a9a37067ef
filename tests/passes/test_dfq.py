import numpy as np
import onnx
import pytest

from graphcomp.core.errors import ConfigError
from graphcomp.core.pass_base import PassContext
from graphcomp.passes.dfq import input_means
from graphcomp.passes.dfq.dfq import DfqConfig, DfqPass
from graphcomp.passes.fold_bn import FoldBnPass
from graphcomp.passes.prune.prune import PruneConfig, PrunePass
from graphcomp.passes.qdq.qdq import QdqConfig, QdqPass
from tests import graphs

SINGLE_GEMM = """
g (float[N, 6] x, float[4, 6] w_a, float[4] b_a) => (float[N, 4] y) {
    y = Gemm <transB = 1> (x, w_a, b_a)
}
"""


def _notes(res):
    """The notes of every dfq step, merged (the step names are unique in one dfq run)."""
    notes = {}
    for r in res.records:
        assert r.result.name.startswith("dfq/")
        notes.update(r.result.notes)
    return notes


def _sqnr(ref, new):
    return 10 * np.log10(np.mean(ref**2) / np.mean((ref - new) ** 2))


def test_dfq_beats_naive_per_tensor_on_spread_channels():
    gains = []
    for seed in (0, 1, 2):
        model = graphs.spread_channels(
            graphs.build(graphs.CONV_DW_CONV, seed=seed), seed=seed, decades=3.0
        )
        feeds = graphs.feeds_for(model, seed=seed, batch=8)
        # the test inputs are white N(0, 1), so the statistics use that prior too;
        # per-tensor weights: the hard-benchmark / per-tensor-hardware profile
        pt = {"prior": "normal", "per_channel": False}
        full, res = graphs.apply(model, DfqPass(DfqConfig(**pt)))
        naive, _ = graphs.apply(
            model, DfqPass(DfqConfig(equalize=False, absorb=False, correct=False, **pt))
        )
        onnx.checker.check_model(full)
        assert graphs.op_count(full, "QuantizeLinear") >= 3
        ref = graphs.run(model, feeds)[0]
        ours, theirs = graphs.run(full, feeds)[0], graphs.run(naive, feeds)[0]
        gains.append(_sqnr(ref, ours) - _sqnr(ref, theirs))
        notes = _notes(res)
        assert notes["stat_sources"] == {"synthetic": 3}
        before, after = np.array(list(notes["weight_sqnr_db"].values())).T
        assert np.mean(after) > np.mean(before)
    assert min(gains) > 0.5 and sum(gains) > 10.0


def test_bn_statistics_are_used_and_reported():
    text = graphs.CONV_BN_RELU_CONV
    ctx = PassContext()
    out, res = graphs.apply(graphs.build(text), DfqPass(), ctx=ctx)
    notes = _notes(res)
    assert notes["stat_sources"] == {"bn": 1, "synthetic": 1}
    assert graphs.op_count(out, "BatchNormalization") == 0
    assert ctx.ranges["n"][2] == "bn" and ctx.ranges["y"][0] == 0.0


def test_statistics_note_counts_the_samples_that_ran_on_large_images():
    model = graphs.build(
        """
        g (float[N, 3, 224, 224] x, float[4, 3, 3, 3] w_a) => (float[N, 4, 222, 222] y) {
            y = Conv (x, w_a)
        }
        """
    )
    _, res = graphs.apply(model, DfqPass(DfqConfig(samples=64)))
    assert "16 synthetic samples" in _notes(res)["statistics"]  # 64 x 112^2 / 224^2


def test_equalize_runs_by_default_only_for_per_tensor_weights():
    model = graphs.spread_channels(graphs.build(graphs.CONV_DW_CONV, seed=3), seed=3)
    _, res = graphs.apply(model, DfqPass(DfqConfig(prior="normal")))
    assert "dfq/equalize" not in [r.result.name for r in res.records]
    assert DfqConfig().equalizes is False and DfqConfig(per_channel=False).equalizes is True
    tensor = DfqConfig(per_channel=False, prior="normal")
    _, res = graphs.apply(model, DfqPass(tensor))
    assert _notes(res)["equalize_coverage"] == "3/3 layers, 100% of weights"


def test_nothing_to_equalize_still_quantizes_and_says_so():
    model = graphs.build(SINGLE_GEMM)
    out, res = graphs.apply(model, DfqPass(DfqConfig(equalize=True)))
    notes = _notes(res)
    assert "nothing to equalize" in notes["equalize_summary"]
    assert graphs.op_count(out, "DequantizeLinear") >= 2
    feeds = graphs.feeds_for(model, batch=16)
    assert _sqnr(graphs.run(model, feeds)[0], graphs.run(out, feeds)[0]) > 25


def test_opset_11_model_per_tensor_profile_stays_at_opset_11():
    model = graphs.build(graphs.CONV_DW_CONV, opset=11)
    out, _ = graphs.apply(model, DfqPass(DfqConfig(per_channel=False)))
    onnx.checker.check_model(out)
    assert out.opset_import[0].version == 11
    dq = [n for n in out.graph.node if n.op_type == "DequantizeLinear"]
    assert dq and all(not any(a.name == "axis" for a in n.attribute) for n in dq)
    feeds = graphs.feeds_for(model, batch=4)
    assert _sqnr(graphs.run(model, feeds)[0], graphs.run(out, feeds)[0]) > 15


def test_opset_11_model_is_raised_to_13_for_per_channel_weights_by_default():
    model = graphs.build(graphs.CONV_DW_CONV, opset=11)
    out, res = graphs.apply(model, DfqPass())
    onnx.checker.check_model(out)
    assert out.opset_import[0].version == 13
    assert res.record("dfq/qdq-core").result.notes["opset"] == "converted 11 -> 13"
    conv_weights = {n.input[1] for n in out.graph.node if n.op_type == "Conv"}
    dq = [n for n in out.graph.node if n.op_type == "DequantizeLinear"]
    per_channel = [n for n in dq if n.output[0] in conv_weights]
    assert len(per_channel) == 3
    assert all(np.size(_init(out, n.input[1])) > 1 for n in per_channel)
    feeds = graphs.feeds_for(model, batch=4)
    assert _sqnr(graphs.run(model, feeds)[0], graphs.run(out, feeds)[0]) > 15


def _init(model, name):
    inits = {i.name: i for i in model.graph.initializer}
    return onnx.numpy_helper.to_array(inits[name])


def test_quantize_false_stops_before_qdq_and_plot_writes_charts(tmp_path):
    pytest.importorskip("matplotlib")
    model = graphs.spread_channels(graphs.build(graphs.CONV_DW_CONV, seed=4), seed=4)
    cfg = DfqConfig(equalize=True, quantize=False, plot=str(tmp_path))
    out, res = graphs.apply(model, DfqPass(cfg))
    assert graphs.op_count(out, "QuantizeLinear") == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weight_ranges.png", "weight_sqnr.png"]
    assert len(res.record("dfq/ranges").result.notes["plots"]) == 2


def test_bad_config_is_rejected():
    for bad in ({"clip": "relu"}, {"stats": "x"}, {"ranges": "y"}, {"range_k": 0.0}, {"bits": 3}):
        with pytest.raises(ConfigError):
            DfqConfig(**bad)


@pytest.mark.parametrize("seed", [0, 1])
def test_relu6_bounds_run_on_codes_or_vanish_under_clip_range(seed, tmp_path):
    model = graphs.spread_channels(graphs.build(graphs.CONV_DW_CONV, seed=seed), seed=seed)
    feeds = {k: v * 3 for k, v in graphs.feeds_for(model, seed=seed, batch=4).items()}
    ref = graphs.run(model, feeds)[0]
    eq = {"equalize": True}
    exact, _ = graphs.apply(
        model, DfqPass(DfqConfig(clip="range", quantize=False, correct=False, **eq))
    )
    assert np.abs(graphs.run(exact, feeds)[0] - ref).max() < 1e-4 * np.abs(ref).max()
    assert graphs.op_count(exact, "Min") == 2  # the float model keeps ReLU6 exact
    fast, res = graphs.apply(model, DfqPass(DfqConfig(clip="range", prior="normal", **eq)))
    assert set(res.record("dfq/qdq-core").result.notes["clamps"].values()) == {
        "dropped (bound past the quantizer's range)"
    }
    ops = graphs.optimized_ops(fast, str(tmp_path / "fast.onnx"))
    assert "Min" not in ops and ops.count("QLinearConv") == 3
    default, res = graphs.apply(model, DfqPass(DfqConfig(prior="normal", **eq)))
    clamps = res.record("dfq/qdq-core").result.notes["clamps"]
    assert len(clamps) == 2  # per-channel: on the codes, or dropped where the range allows
    notes = _notes(res)
    assert notes["equalize_coverage"] == "3/3 layers, 100% of weights"
    assert sum(int(part.split()[0]) for part in notes["relu6_bounds"].split(", ")) == 2
    assert graphs.optimized_ops(default, str(tmp_path / "d.onnx")).count("QLinearConv") == 3
    feeds = graphs.feeds_for(model, seed=seed, batch=4)  # N(0, 1), as the prior
    ref = graphs.run(model, feeds)[0]
    for out in (fast, default):
        assert _sqnr(ref, graphs.run(out, feeds)[0]) > 15


def test_dfq_runs_as_checked_steps_and_simplifies_once():
    model = graphs.build(graphs.CONV_BN_RELU_CONV)
    _, res = graphs.apply(model, DfqPass(DfqConfig(equalize=True, absorb=True, correct=True)))
    assert [r.result.name for r in res.records] == [
        "dfq/simplify",
        "dfq/fold-bn",
        "dfq/stats",
        "dfq/equalize",
        "dfq/absorb-bias",
        "dfq/bias-correct",
        "dfq/ranges",
        "dfq/measure-ranges",
        "dfq/qdq-core",
    ]
    assert len(res.record("dfq/fold-bn").result.changes) == 1
    assert res.record("dfq/qdq-core").result.changes  # qdq's own fold-bn/simplify not rerun
    _, res = graphs.apply(model, DfqPass(DfqConfig(equalize=False, correct=False, quantize=False)))
    assert [r.result.name for r in res.records] == [
        "dfq/simplify",
        "dfq/fold-bn",
        "dfq/stats",
        "dfq/ranges",
    ]


def test_prune_then_dfq_does_not_read_statistics_from_before_the_prune():
    model = graphs.build(graphs.CONV_BN_RELU_CONV)
    ctx = PassContext()
    prune = PrunePass(PruneConfig(ratio=0.5, round_to=1))
    _, res = graphs.apply(model, FoldBnPass(), prune, DfqPass(), ctx=ctx)
    assert res.record("prune").result.changes
    # fold-bn left "bn" statistics of 4 channels; the prune kept 2 and dropped them
    assert res.record("dfq/stats").result.notes["stat_sources"] == {"synthetic": 2}
    assert ctx.stats["n"].source == "synthetic" and np.size(ctx.stats["n"].mean) == 2
    _, res = graphs.apply(model, FoldBnPass(), DfqPass())  # no prune: BN statistics kept
    assert res.record("dfq/stats").result.notes["stat_sources"] == {"bn": 1, "synthetic": 1}


LN_HEAD = """
g (float[N, 32] x, float[32, 32] w_m, float[32] g_ln, float[32] b_ln, float[32, 8] w_h,
   float[8] b_h) => (float[N, 8] y) {
    s = MatMul (x, w_m)
    h = LayerNormalization <axis = -1> (s, g_ln, b_ln)
    y = Gemm (h, w_h, b_h)
}
"""


@pytest.mark.parametrize("per_channel", [True, False])
def test_outlier_prone_gemm_input_stays_float_as_in_qdq(per_channel):
    gamma = np.ones(32, np.float32)
    gamma[5] = 80.0  # one LayerNorm channel dwarfs the others (BERT-like outlier)
    model = graphs.build(LN_HEAD, g_ln=gamma)
    out, res = graphs.apply(model, DfqPass(DfqConfig(per_channel=per_channel)))
    core = res.record("dfq/qdq-core").result.notes
    assert core["transformer"] and "h" in core["left_float"]
    assert "outlier channels" in core["left_float"]["h"]
    _, ref = graphs.apply(model, QdqPass(QdqConfig(per_channel=per_channel)))
    assert set(ref.record("qdq/qdq-core").result.notes["left_float"]) == set(core["left_float"])


def test_bias_correct_runs_by_default_only_for_per_tensor_weights():
    names = {
        pc: [s.name for s in DfqPass(DfqConfig(per_channel=pc)).steps()] for pc in (True, False)
    }
    assert "bias-correct" in names[False] and "bias-correct" not in names[True]
    assert (
        DfqConfig(correct=True).corrects
        and not DfqConfig(correct=False, per_channel=False).corrects
    )


@pytest.mark.parametrize("text", [graphs.CONV_DW_CONV, graphs.CONV_PRELU_POOL_FC])
def test_input_means_from_the_stats_pass_follow_equalization(text, monkeypatch):
    """Per-tensor profile: one forward pass gives bias-correct the means it would measure."""
    model = graphs.spread_channels(graphs.build(text), seed=1)
    cfg = DfqConfig(per_channel=False, prior="normal")
    one, res = graphs.apply(model, DfqPass(cfg))
    assert res.record("dfq/stats").result.notes["input_means_measured"] >= 2
    sources = res.record("dfq/bias-correct").result.notes["input_mean_sources"]
    monkeypatch.setattr(input_means, "to_measure", lambda *_args: {})
    two, res = graphs.apply(model, DfqPass(cfg))  # bias-correct measures them itself
    assert "input_means_measured" not in res.record("dfq/stats").result.notes
    assert res.record("dfq/bias-correct").result.notes["input_mean_sources"] == sources
    inits = [
        {i.name: onnx.numpy_helper.to_array(i) for i in m.graph.initializer} for m in (one, two)
    ]
    assert inits[0].keys() == inits[1].keys()
    for name, value in inits[0].items():  # biases corrected alike, so every code is equal
        np.testing.assert_allclose(value, inits[1][name], rtol=1e-5, atol=1e-6, err_msg=name)
