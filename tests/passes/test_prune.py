"""prune: exact when the removed channels are all zero; valid shapes; budgets; blocks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import numpy_helper, shape_inference

from graphcomp.core import analysis, graph_utils
from graphcomp.core.errors import ConfigError
from graphcomp.core.pass_base import PassContext
from graphcomp.measure import observe
from graphcomp.passes.prune import apply as prune_apply
from graphcomp.passes.prune import walk
from graphcomp.passes.prune.prune import PruneConfig, PrunePass
from tests import graphs

EXACT_GRAPHS = {
    "residual-add": graphs.PRUNE_RESIDUAL,
    "depthwise": graphs.PRUNE_DEPTHWISE,
    "concat-flatten-gemm": graphs.PRUNE_CONCAT_FLATTEN,
    "se-mul-bn-split-resize": graphs.PRUNE_SE_SPLIT,
    "mlp-transpose-reshape": graphs.PRUNE_MLP_RESHAPE,
}


def zero_units(model: onnx.ModelProto, share: float = 0.5) -> onnx.ModelProto:
    """Zero the producer filters, biases and BN gamma/beta of `share` of every prunable
    group's units, so removing exactly those channels changes nothing."""
    graph = gs.import_onnx(model)
    cg = walk.analyze(graph)
    chosen = np.concatenate(
        [g.units[: int(np.ceil(g.units.size * share))] for g in cg.groups if g.prunable]
    )
    for b in cg.bindings:
        if b.out is None or not (hit := np.isin(cg.roots[b.out], chosen)).any():
            continue
        if b.kind in prune_apply.LAYERS:
            w = np.array(graph_utils.const_value(b.node.inputs[1]))
            trans = b.kind == "conv" or (b.kind == "gemm" and b.node.attrs.get("transB", 0))
            axis = 1 if b.kind == "convT" else (0 if trans else 1)
            w[(slice(None),) * axis + (hit,)] = 0
            b.node.inputs[1] = gs.Constant(b.node.inputs[1].name + "_z", w)
            _zero_input(b.node, 2, hit)
        elif b.kind == "const" and b.node.op in ("BatchNormalization", "Add", "Sub"):
            _zero_input(b.node, b.extra["index"], hit, b.extra["axis"])
    return gs.export_onnx(graph.cleanup())


def _zero_input(node: gs.Node, index: int, hit: np.ndarray, axis: int = 0) -> None:
    if index >= len(node.inputs) or graph_utils.const_value(node.inputs[index]) is None:
        return
    if node.op == "BatchNormalization" and index > 2:
        return
    value = np.array(graph_utils.const_value(node.inputs[index]))
    if value.ndim == 0 or value.shape[axis] != hit.size:
        return
    value[(slice(None),) * axis + (hit,)] = 0
    node.inputs[index] = gs.Constant(node.inputs[index].name + "_z", value)


def prune(model: onnx.ModelProto, ctx: PassContext | None = None, **fields):
    out, result = graphs.apply(model, PrunePass(PruneConfig(**fields)), ctx=ctx)
    return out, result.records[0]


@pytest.mark.parametrize("compensate", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("name", list(EXACT_GRAPHS))
def test_removing_zero_channels_is_exact(name, seed, compensate):
    model = zero_units(graphs.build(EXACT_GRAPHS[name], seed=seed))
    out, record = prune(model, importance="l1", ratio=0.3, round_to=1, compensate=compensate)
    assert record.params[1] < record.params[0]
    assert record.macs[1] < record.macs[0]
    onnx.checker.check_model(out, full_check=True)
    feeds = graphs.feeds_for(model, seed=seed)
    for ref, new in zip(graphs.run(model, feeds), graphs.run(out, feeds), strict=True):
        np.testing.assert_allclose(new, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", list(EXACT_GRAPHS))
def test_inferred_shapes_match_onnxruntime_and_batch_stays_dynamic(name):
    model = graphs.build(EXACT_GRAPHS[name], seed=3)
    out, _ = prune(model, ratio=0.5, round_to=1)
    inferred = shape_inference.infer_shapes(out, strict_mode=True)
    declared = {
        v.name: [
            d.dim_value if d.HasField("dim_value") else d.dim_param
            for d in v.type.tensor_type.shape.dim
        ]
        for v in inferred.graph.value_info
    }
    values = observe.intermediates(out, sorted(declared), graphs.feeds_for(out, batch=3))
    for name_, value in values.items():
        dims = declared[name_]
        assert len(dims) == value.ndim
        assert all(
            d == s for d, s in zip(dims, value.shape, strict=True) if isinstance(d, int) and d > 0
        ), name_
    assert out.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    assert [o.type for o in out.graph.output] == [o.type for o in model.graph.output]


def test_depthwise_group_follows_the_kept_channels():
    out, record = prune(graphs.build(graphs.PRUNE_DEPTHWISE), ratio=0.5, round_to=4)
    dw = next(
        n
        for n in out.graph.node
        if n.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in n.attribute)
    )
    group = next(a.i for a in dw.attribute if a.name == "group")
    weights = {i.name: i for i in out.graph.initializer}
    assert group == 8 and list(weights[dw.input[1]].dims) == [8, 1, 3, 3]
    assert any("outputs 16 -> 8" in c.detail for c in record.result.changes)


def test_split_sizes_and_concat_offsets_follow():
    out, _ = prune(graphs.build(graphs.PRUNE_SE_SPLIT, seed=4), ratio=0.5, round_to=2)
    split = next(n for n in out.graph.node if n.op_type == "Split")
    sizes = {i.name: numpy_helper.to_array(i) for i in out.graph.initializer}[split.input[1]]
    assert sizes.tolist() == [2, 2]
    shapes = analysis.infer_shapes(out, {})
    assert shapes[split.output[0]][1] == 2
    conv_out = next(n for n in out.graph.node if n.op_type == "Conv" and n.output[0] == "y")
    assert shapes[conv_out.input[0]][1] == 6  # two Concat segments of 6 -> 3 each


def test_ratio_keeps_multiples_of_round_to():
    model = graphs.build(graphs.PRUNE_DEPTHWISE, seed=5)
    out, _ = prune(model, ratio=0.3, round_to=8)
    shapes = analysis.infer_shapes(out, {})
    dw = next(
        n
        for n in out.graph.node
        if n.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in n.attribute)
    )
    assert shapes[dw.output[0]][1] % 8 == 0


WIDE_RESIDUAL = graphs.PRUNE_RESIDUAL.replace("8", "32").replace("[4, 32]", "[4, 32]")


@pytest.mark.parametrize("target", [0.5, 0.7])
@pytest.mark.parametrize("seed", [0, 1])
def test_macs_target_is_met_within_five_percent(target, seed):
    model = graphs.build(WIDE_RESIDUAL, seed=seed)
    out, record = prune(model, macs=target, round_to=1)
    before, after = record.macs
    assert abs(after / before - target) <= 0.05 * target
    assert record.result.notes["macs_expected"] == after
    graphs.run(out, graphs.feeds_for(out))


def test_blocked_groups_are_skipped_with_reasons():
    out, record = prune(graphs.build(graphs.PRUNE_BLOCKED), ratio=0.5, round_to=1)
    reasons = " | ".join(s.reason for s in record.result.skipped)
    assert "grouped conv (group=2)" in reasons
    assert "side is a graph output" in reasons
    assert "DepthToSpace" in reasons
    assert record.params[1] == record.params[0] and not record.result.changes
    assert record.result.notes["budget_warning"].startswith("nothing to prune")
    graphs.run(out, graphs.feeds_for(out))


def test_a_mac_target_out_of_reach_is_a_warning_with_what_was_reached():
    _, record = prune(graphs.build(WIDE_RESIDUAL), macs=0.02)
    before, after = record.macs
    warning = record.result.notes["budget_warning"]
    assert warning.startswith("macs=0.02 is out of reach")
    assert f"{after / before:.3f}x" in warning
    _, met = prune(graphs.build(WIDE_RESIDUAL), macs=0.5, round_to=1)
    assert "budget_warning" not in met.result.notes


def test_unit_mean_is_compensated_in_the_next_bias():
    model = graphs.build(graphs.PRUNE_CONCAT_FLATTEN, seed=6)
    feeds = graphs.feeds_for(model, seed=9, batch=64)
    ref = graphs.run(model, feeds)[0]
    errors = {}
    for compensate in (False, True):
        out, _ = prune(model, ratio=0.5, round_to=1, compensate=compensate, reconstruct=False)
        errors[compensate] = np.abs(graphs.run(out, feeds)[0].mean(0) - ref.mean(0)).mean()
    assert errors[True] < 0.5 * errors[False]


@pytest.mark.parametrize(
    "fields",
    [{"ratio": 1.0}, {"macs": 0.0}, {"importance": "x"}, {"round_to": 0}, {"layers": "conv:2"}],
)
def test_bad_config_is_rejected(fields):
    with pytest.raises(ConfigError):
        PruneConfig(**fields)


def test_layer_override_exempts_a_layer():
    model = graphs.build(graphs.PRUNE_RESIDUAL, seed=7)
    names = [n.name for n in model.graph.node]
    assert not any(names)  # the pipeline names them Conv_0, Conv_2, ...
    out, record = prune(model, ratio=0.5, round_to=1, layers="Conv_2:0")
    changed = {c.node for c in record.result.changes}
    assert "Conv_2" in changed  # its input channels still go (trunk group)
    shapes = analysis.infer_shapes(out, {})
    conv2 = next(n for n in out.graph.node if n.name == "Conv_2")
    assert shapes[conv2.output[0]][1] == 8


ZOO = Path(__file__).resolve().parents[2] / "models"


def _zoo_accuracy(model: onnx.ModelProto, count: int = 400) -> float:
    data = np.load(ZOO / "data" / "glyphs_eval.npz")
    x, y = data["input"][:count].astype(np.float32), data["label"][:count]
    return float(np.mean(graphs.run(model, {"input": x})[0].argmax(1) == y))


@pytest.mark.skipif(not (ZOO / "mobilenetv2_s.onnx").exists(), reason="zoo not built")
def test_zoo_mobilenet_keeps_accuracy_at_080_macs_without_data():
    model = onnx.load(ZOO / "mobilenetv2_s.onnx")
    out, record = prune(model, PassContext(input_shapes={"input": [1, 1, 32, 32]}), macs=0.8)
    before, after = record.macs
    assert abs(after / before - 0.8) <= 0.05 * 0.8
    onnx.checker.check_model(out)
    assert _zoo_accuracy(out) >= _zoo_accuracy(model) - 0.08  # measured: 0.967 -> 0.938


@pytest.mark.slow
@pytest.mark.parametrize("path", sorted(ZOO.glob("*.onnx")), ids=lambda p: p.stem)
@pytest.mark.parametrize("fields", [{"ratio": 0.3}, {"macs": 0.5}], ids=["ratio", "macs"])
def test_zoo_models_prune_validly_to_the_budget(path, fields):
    model = onnx.load(path)
    out, record = prune(model, PassContext(input_shapes={"input": [1, 1, 32, 32]}), **fields)
    onnx.checker.check_model(out)
    before, after = record.macs
    if "macs" in fields:
        assert abs(after / before - fields["macs"]) <= 0.05 * fields["macs"]
    assert after < before and _zoo_accuracy(out, 100) > 0.0


def test_latency_budget_runs_the_schedule_on_measured_costs(monkeypatch):
    """Costs are faked (no timing in a test): the second conv costs 20x its MACs' share,
    so a latency budget takes more of its channels than the MAC budget does."""
    from graphcomp.measure import cost, speed

    real = cost.node_costs

    def fake(model, shapes=None):
        costs = real(model, shapes)
        nodes = {n: (20.0 if n == "Conv_2" else 1.0) for n in costs.nodes}
        return cost.Costs(nodes, sum(nodes.values()) + 5.0)

    monkeypatch.setattr(cost, "node_costs", fake)
    monkeypatch.setattr(speed, "latency_ratio", lambda *a: 0.6)  # as measured: met
    model = graphs.build(WIDE_RESIDUAL)
    _, timed = prune(model, latency=0.6, round_to=1, rounds=1)
    _, by_macs = prune(model, macs=0.6, round_to=1, rounds=1)
    notes = timed.result.notes
    assert notes["latency_us_expected"] <= (0.6 + 0.02) * notes["latency_us_before"]
    assert "latency_after_fraction" in notes  # the output measured again, for the report
    kept = {c.node: c.params_after for c in timed.result.changes}
    kept_by_macs = {c.node: c.params_after for c in by_macs.result.changes}
    assert kept["Conv_2"] < kept_by_macs["Conv_2"]
    assert "budget_warning" not in notes


def test_a_missed_latency_target_is_a_warning_with_the_measured_fraction(monkeypatch):
    from graphcomp.measure import speed

    monkeypatch.setattr(speed, "latency_ratio", lambda *a: 0.9)  # as if measured
    out, record = prune(graphs.build(WIDE_RESIDUAL), latency=0.6, round_to=1, rounds=1)
    notes = record.result.notes
    assert notes["latency_after_fraction"] == 0.9
    assert notes["budget_warning"].startswith("latency=0.6 is not met: the output measured 0.900x")
    graphs.run(out, graphs.feeds_for(out))


def test_latency_and_macs_are_one_budget_or_the_other():
    with pytest.raises(ConfigError, match="macs or latency"):
        PruneConfig(macs=0.5, latency=0.5)
    with pytest.raises(ConfigError, match="latency must be in"):
        PruneConfig(latency=1.5)
