"""qdq sensitivity probe: the masked model, the table, the fidelity target."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from graphcomp.core.errors import ConfigError
from graphcomp.passes.dfq.dfq import DfqConfig
from graphcomp.passes.qdq import sense as qdq_sense
from graphcomp.passes.qdq.qdq import QdqConfig, QdqPass
from tests import graphs

TWO_CONVS = """
g (float[N, 3, 8, 8] x, float[4, 3, 3, 3] w_c1, float[4] b_c1, float[4, 4, 3, 3] w_c2,
   float[4] b_c2) => (float[N, 4, 8, 8] y) {
    a = Conv <pads = [1, 1, 1, 1]> (x, w_c1, b_c1)
    r = Relu (a)
    y = Conv <pads = [1, 1, 1, 1]> (r, w_c2, b_c2)
}
"""


def _model():
    model = graphs.build(TWO_CONVS)
    for node in model.graph.node:
        node.name = node.output[0]  # "a", "r", "y": rule files select them by name
    return model


def _qdq(model, **fields):
    out, res = graphs.apply(model, QdqPass(QdqConfig(**fields)))
    return out, res.record("qdq/qdq-core").result


def _snr(ref, hyp):
    ref, hyp = np.asarray(ref, np.float64), np.asarray(hyp, np.float64)
    return 10 * np.log10(np.sum(ref**2) / np.sum((hyp - ref) ** 2))


def test_no_target_no_probe():
    _, core = _qdq(_model())
    assert "sensitivity" not in core.notes


def test_table_has_every_quantized_tensor_and_the_output_is_unchanged_when_met():
    model = _model()
    plain, _ = _qdq(model)
    out, core = _qdq(model, fidelity=-100.0)  # met by any quantization: nothing float
    table = core.notes["sensitivity_table"]
    kinds = {(r["tensor"], r["kind"]) for r in table}
    assert {("a", "weight"), ("y", "weight"), ("x", "activation")} <= kinds
    assert not any(r["float"] for r in table)
    assert "0 of" in core.notes["sensitivity"]
    feeds = graphs.feeds_for(model)
    np.testing.assert_array_equal(graphs.run(out, feeds)[0], graphs.run(plain, feeds)[0])


def test_a_badly_quantized_tensor_is_found_and_kept_float(tmp_path):
    """A fixed scale 100x too coarse on r: it alone causes the error; it stays float."""
    rules = tmp_path / "rules.toml"
    rules.write_text('[layers."y"]\ninput = { method = "fixed", scale = 0.5 }\n')
    model = _model()
    bad, _ = _qdq(model, qconfig=str(rules))
    out, core = _qdq(model, qconfig=str(rules), fidelity=25.0)
    table = core.notes["sensitivity_table"]
    assert table[0]["tensor"] == "r" and table[0]["float"]
    assert core.notes["left_float"]["r"].startswith("kept float for the fidelity target")
    feeds = graphs.feeds_for(model)
    ref = graphs.run(model, feeds)[0]
    assert _snr(ref, graphs.run(out, feeds)[0]) > _snr(ref, graphs.run(bad, feeds)[0]) + 10


def test_the_cost_budget_stops_the_search_and_the_report_says_so(tmp_path, monkeypatch):
    rules = tmp_path / "rules.toml"
    rules.write_text('[layers."y"]\ninput = { method = "fixed", scale = 0.5 }\n')
    model = _model()
    _, free = _qdq(model, qconfig=str(rules), fidelity=25.0)
    assert "cost budget" not in free.notes["sensitivity"]
    monkeypatch.setattr(qdq_sense, "BUDGET_VALUES", 3 * 4 * 3 * 8 * 8)  # 3 runs of 4 samples
    _, cut = _qdq(model, qconfig=str(rules), fidelity=25.0)
    assert cut.notes["sensitivity"].endswith("search cut short by the probe's cost budget")
    assert "2 probe runs" in cut.notes["sensitivity"]
    assert not any(r["float"] for r in cut.notes["sensitivity_table"])


def test_dfq_runs_the_probe_by_default_and_forwards_the_target():
    assert DfqConfig().fidelity is not None
    _, res = graphs.apply(_model(), *_dfq(fidelity=None))
    assert "sensitivity" not in res.record("dfq/qdq-core").result.notes
    _, res = graphs.apply(_model(), *_dfq())
    assert "sensitivity" in res.record("dfq/qdq-core").result.notes


def _dfq(**fields):
    from graphcomp.passes.dfq.dfq import DfqPass

    return [DfqPass(DfqConfig(**fields))]


def test_bad_target_is_refused_and_none_switches_it_off():
    with pytest.raises(ConfigError, match="fidelity"):
        QdqConfig(fidelity=float("inf"))
    assert QdqConfig(fidelity="none").fidelity is None
    assert DfqConfig(fidelity=30).fidelity == 30.0


def test_a_layer_whose_tensor_stays_float_keeps_its_weight_float_too(tmp_path):
    """r kept float: onnxruntime cannot run a (output r) or y (input r) on integers, and
    would dequantize their weights on every run; both weights stay float, said why."""
    rules = tmp_path / "rules.toml"
    rules.write_text('[layers."y"]\ninput = { method = "fixed", scale = 0.5 }\n')
    out, core = _qdq(_model(), qconfig=str(rules), fidelity=25.0)
    details = {c.node: c.detail for c in core.changes}
    for layer in ("a", "y"):
        assert "weight float: r stays float, so onnxruntime would run" in details[layer]
    optimized = tmp_path / "opt.onnx"
    graphs.optimized_ops(out, str(optimized))
    model = onnx.load(optimized)
    inits = {t.name for t in model.graph.initializer}
    assert not any(
        n.op_type == "DequantizeLinear" and n.input[0] in inits for n in model.graph.node
    )
