"""QuantizeLinear/DequantizeLinear insertion (DESIGN.md section 6).

x_hat = (clip(round(x / s) + z, qmin, qmax) - z) * s on every quantized tensor:
weights become integer initializers (int4/int8/int16, per output channel by default)
behind a DequantizeLinear; activations get QuantizeLinear -> DequantizeLinear on the
inputs (and, for onnxruntime, outputs) of quantized layers; biases become int32 with
scale s_input * s_weight. onnxruntime fuses the result into QLinearConv,
QLinearMatMul, MatMulIntegerToFloat, QGemm, QLinearAdd, ... (placement rules in
qdq_place.py; per-tensor rules in qdq_config.py; ranges in qdq_ranges.py; scales in
qdq_scales.py). Ref: Jacob et al., CVPR 2018; onnxruntime "QDQ format" docs;
TensorRT "explicit quantization" guide.

Will not touch (report lines): ops without an integer kernel in the profile
(Softmax, LayerNormalization, Sigmoid, ...), layers whose weight is not constant,
tensors with no usable range (not finite, or mask-like constants above 1e20), graph
outputs (always float). int4/int16 need opset 21 and per-channel needs 13: the model
is converted up (onnx.version_converter) or the pass refuses.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections import Counter

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort

from graphcomp.core import graph_utils, model_io, simplify
from graphcomp.core.errors import UnsupportedModelError
from graphcomp.core.pass_base import Pass, PassContext, PassResult
from graphcomp.measure import inputs as measure_inputs
from graphcomp.passes.fold_bn import FoldBnPass
from graphcomp.passes.qdq import clamp as qdq_clamp
from graphcomp.passes.qdq import emit as qdq_emit
from graphcomp.passes.qdq import ranges as qdq_ranges
from graphcomp.passes.qdq import scales as qdq_scales
from graphcomp.passes.qdq import sense as qdq_sense
from graphcomp.passes.qdq.config import QdqConfig, RuleBook
from graphcomp.passes.qdq.place import COMPUTE, QUANTIZABLE, Act, Layer, Plan, build_plan

__all__ = ["QdqConfig", "QdqCorePass", "QdqPass", "SimplifyStep"]
log = logging.getLogger(__name__)

QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})
# ops that only a quantized model has: its QDQ pairs or onnxruntime's integer kernels
QUANTIZED_OPS = QDQ_OPS | {
    "ConvInteger",
    "MatMulInteger",
    "QLinearConv",
    "QLinearMatMul",
    "QGemm",
    "DynamicQuantizeLSTM",
    "DynamicQuantizeMatMul",
    "MatMulIntegerToFloat",
}
CREATES = QDQ_OPS | {"Mul"}  # Mul: bias scale = input scale * weight scale, folded at load
# 11, not 10: onnxruntime's loader quantizes the weight of a float Conv that reads a DQ
# with a Round (opset 11), and refuses an opset-10 graph; its own quantizer moves to 11
MIN_OPSET, PER_CHANNEL_OPSET, LOW_BIT_OPSET = 11, 13, 21
SENSITIVITY_LINE = 5  # the most sensitive tensors named in the summary line


class SimplifyStep(Pass):
    """Constant folding and Pad-into-Conv fusion (graphcomp.core.simplify) as a step."""

    name = "simplify"
    summary = "fold constant subgraphs and fuse Pad into Conv"
    matches = frozenset({"Pad"}) | simplify.SHAPE_MATH
    lossless = True

    def apply(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        """Simplify in place; the counts are the notes."""
        result = PassResult(self.name)
        result.notes.update(simplify.simplify(graph))
        return result


class QdqCorePass(Pass):
    """Plan, measure ranges, emit the quantizers: qdq without its fold-bn/simplify steps."""

    name = "qdq-core"
    summary = "insert QuantizeLinear/DequantizeLinear on a simplified, BN-folded graph"
    matches = QUANTIZABLE | simplify.SHAPE_MATH  # the opset converter may rewrite these
    creates = CREATES
    lossless = False
    config_class = QdqConfig
    reads = frozenset({"ranges"})  # ranges set by an earlier pass (dfq) win
    writes = frozenset({"opset"})  # when the model is converted up

    def __init__(self, config: QdqConfig | None = None) -> None:
        super().__init__(config)
        self.config: QdqConfig

    def quantizes(self) -> bool:
        """Always: the output has QuantizeLinear/DequantizeLinear."""
        return True

    def requires(self, graph: gs.Graph, ctx: PassContext) -> None:
        """Refuse models that are quantized already; load the rule file early."""
        found = sorted({n.op for n in graph.nodes if n.op in QUANTIZED_OPS})
        if found:
            raise UnsupportedModelError(
                f"the model is quantized already ({', '.join(found[:3])} nodes); "
                "give graphcomp the float model"
            )
        RuleBook(self.config)

    def apply(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        """Plan, measure ranges, then emit every quantizer; see the module docstring."""
        result = PassResult(self.name)
        book = RuleBook(self.config)
        plan = build_plan(graph, self.config, book)
        if plan.layers or plan.acts:
            _check_runtime(int(graph.opset))
        if ensure_opset(graph, plan, result):
            ctx.opset = int(graph.opset)
            plan = build_plan(graph, self.config, book)
        specs = {
            n: a.rule.spec(per_channel=False)
            for n, a in plan.acts.items()
            if not a.dynamic and a.rule.method == "auto"
        }
        spreads: dict[str, float] = {}
        guarded = {n for n, a in plan.acts.items() if a.guard}  # spread measured, even for dfq
        ranges, error = qdq_ranges.collect(graph, specs, ctx, self.config, spreads, guarded)
        if error:
            result.notes["ranges_error"] = error
        qdq_clamp.cap_ranges(graph, plan, ranges)
        outliers = _outlier_prone(plan, spreads, self.config.outlier_ratio)
        floats: tuple[dict[str, str], dict[str, str]] = ({}, {})
        if self.config.fidelity is not None and (plan.layers or plan.acts):
            probe = graph.copy()
            probe_plan = build_plan(probe, self.config, book)
            probe_params, _, _ = _settle(probe_plan, ranges, outliers, ({}, {}), self.config)
            try:
                outcome = _sensitivity(probe, probe_plan, probe_params, ctx, self.config)
            except Exception as e:  # noqa: BLE001 - the probe is advice: quantize without it
                log.debug("sensitivity probe failed: %r", e)
                result.notes["sensitivity"] = f"probe failed, nothing kept float ({e})"[:300]
            else:
                floats = _keep_float(outcome)
                _sensitivity_notes(result, outcome)
        params, dropped, notes = _settle(plan, ranges, outliers, floats, self.config)
        inputs = {layer.node.name: _input_params(layer, plan, params) for layer in plan.layers}
        texts = _layer_texts(plan)
        with graph_utils.naming(graph):
            _emit_activations(graph, plan, params)
            result.notes["clamps"] = qdq_clamp.integer_clamps(graph)
            details = _emit_layers(graph, plan, inputs)
        _report(result, graph, plan, texts, details, dropped, notes, ranges)
        result.notes["profile"] = self.config.profile
        return result


class QdqPass(Pass):
    """Quantize weights and activations in QDQ format (integer kernels in onnxruntime).

    Composite: simplify, fold-bn (unless `fold_bn=False`), then qdq-core; dfq runs
    qdq-core alone after its own simplify and fold-bn.
    """

    name = "qdq"
    summary = "insert QuantizeLinear/DequantizeLinear (int8 weights/activations, int32 bias)"
    matches = QdqCorePass.matches | {"BatchNormalization", "Pad"}
    creates = CREATES
    lossless = False
    config_class = QdqConfig

    def __init__(self, config: QdqConfig | None = None) -> None:
        super().__init__(config)
        self.config: QdqConfig

    def quantizes(self) -> bool:
        """Always: the output has QuantizeLinear/DequantizeLinear."""
        return True

    def requires(self, graph: gs.Graph, ctx: PassContext) -> None:
        """qdq-core's preconditions, checked before any step runs."""
        QdqCorePass(self.config).requires(graph, ctx)

    def steps(self) -> list[Pass]:
        """simplify, fold-bn (when `fold_bn`), qdq-core."""
        folds: list[Pass] = [FoldBnPass()] if self.config.fold_bn else []
        return [SimplifyStep(), *folds, QdqCorePass(self.config)]


def _check_runtime(opset: int) -> None:
    """UnsupportedModelError when onnxruntime has no QuantizeLinear at the model's opset."""
    if ort_runs_qdq(opset):
        return
    newest = max((v for v in range(MIN_OPSET, opset) if ort_runs_qdq(v)), default=MIN_OPSET)
    raise UnsupportedModelError(
        f"this onnxruntime ({ort.__version__}) has no QuantizeLinear kernel at opset "
        f"{opset}; convert the model to opset {newest} first "
        "(onnx.version_converter.convert_version)"
    )


@functools.cache
def ort_runs_qdq(opset: int) -> bool:
    """True when the installed onnxruntime loads an int8 Q -> DQ pair at `opset`."""
    if opset < MIN_OPSET:
        return True  # the pass converts the model up to MIN_OPSET first
    f = onnx.TensorProto.FLOAT
    graph = onnx.helper.make_graph(
        [
            onnx.helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
            onnx.helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"]),
        ],
        "probe",
        [onnx.helper.make_tensor_value_info("x", f, [2])],
        [onnx.helper.make_tensor_value_info("y", f, [2])],
        [
            onnx.helper.make_tensor("s", f, [], [0.1]),
            onnx.helper.make_tensor("z", onnx.TensorProto.INT8, [], [0]),
        ],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])
    model.ir_version = model_io.ir_version_for(model)
    try:
        measure_inputs.session(model)
    except measure_inputs.ORT_ERRORS:
        return False
    return True


def _outlier_prone(plan: Plan, spreads: dict[str, float], limit: float) -> dict[str, str]:
    """Guarded tensors with outlier channels: they stay float.

    Outlier channels: one channel's range dwarfs the median channel's, as in the
    LayerNorm outputs of BERT-like models.
    """
    out = {}
    for name, act in plan.acts.items():
        spread = spreads.get(name, 1.0)
        if act.guard and spread > limit:
            out[name] = f"outlier channels: the largest is {spread:.0f}x the median channel"
    return out


def required_opset(plan: Plan) -> int:
    """Lowest opset that can hold every quantizer of the plan."""
    rules = [a.rule for a in plan.acts.values()]
    rules += [
        r
        for layer in plan.layers
        for role, r in layer.rules.items()
        if role == "weight" and r.enabled
    ]
    need = MIN_OPSET
    if any(r.bits in (4, 16) for r in rules):
        need = LOW_BIT_OPSET
    elif any(r.per_channel for r in rules) or any(a.dynamic for a in plan.acts.values()):
        need = PER_CHANNEL_OPSET
    return need


def ensure_opset(graph: gs.Graph, plan: Plan, result: PassResult) -> bool:
    """Convert the graph up to the plan's opset in place; True when it changed."""
    need, have = required_opset(plan), int(graph.opset)
    if have >= need or not (plan.layers or plan.acts):
        return False  # nothing to quantize: the model keeps its opset
    graph.cleanup()  # drop nodes detached by fold-bn before the converter sees them
    model = model_io.export(graph)
    try:
        converted = onnx.version_converter.convert_version(model, need)
    except Exception as e:  # noqa: BLE001 - any converter failure becomes a user message
        raise UnsupportedModelError(
            f"quantizing needs opset {need} (int4/int16: 21, per-channel: 13) but converting "
            f"the model from opset {have} failed ({e}); use 8-bit or per-tensor rules"
        ) from e
    new = model_io.import_graph(converted)
    graph.nodes, graph.inputs, graph.outputs = new.nodes, new.inputs, new.outputs
    graph.opset, graph.import_domains = new.opset, new.import_domains
    graph_utils.name_nodes(graph)  # the converter may add unnamed nodes
    result.notes["opset"] = f"converted {have} -> {need}"
    return True


def _settle(
    plan: Plan,
    ranges: dict,
    outliers: dict[str, str],
    floats: tuple[dict[str, str], dict[str, str]],
    config: QdqConfig,
) -> tuple[dict[str, qdq_scales.Params], dict[str, str], list[str]]:
    """Drop the outlier-prone and the chosen-float tensors, then the scales of the rest.

    `floats` is (activation tensor -> reason, layer whose weight stays float -> reason).
    Returns the activation params, every tensor left float with its reason, and notes.
    """
    float_acts, float_layers = floats
    for name in [*outliers, *float_acts]:
        plan.acts.pop(name, None)
    params, dropped, notes = qdq_scales.activation_params(plan, ranges, config.concat_ratio)
    dropped.update(outliers)
    dropped.update(float_acts)
    for name in dropped:
        plan.acts.pop(name, None)
    if config.profile == "ort":
        float_layers = {**_stranded(plan, dropped), **float_layers}
    for layer in plan.layers:
        if layer.node.name in float_layers and layer.rules["weight"].enabled:
            layer.rules["weight"] = dataclasses.replace(layer.rules["weight"], method="none")
            layer.rules["bias"] = dataclasses.replace(layer.rules["bias"], method="none")
            layer.weight_note = float_layers[layer.node.name]
    return params, dropped, notes


def _stranded(plan: Plan, dropped: dict[str, str]) -> dict[str, str]:
    """Layers whose weight would only be dequantized on every run: layer -> reason.

    onnxruntime runs a layer on integers only when its input is quantized and, for a
    Conv (or a MatMul fused with its bias Add into a Gemm), its output too. When a
    tensor it needs stays float (fidelity target, outlier channels, unusable range),
    the layer runs in float with DequantizeLinear of its weight in front on every
    run: slower than float and less exact, so its weight stays float too.
    """
    out = {}
    for layer in plan.layers:
        node = layer.node
        if layer.kind != "compute" or not layer.rules["weight"].enabled:
            continue
        needed = [node.inputs[i] for i in layer.acts] if layer.rules["input"].enabled else []
        fused_output = node.op == "Conv" or layer.bias_add is not None
        if fused_output and layer.rules["output"].enabled and not plan.transformer:
            needed.append(layer.out)
        lost = next((t.name for t in needed if t.name in dropped), None)
        if lost is not None:
            out[node.name] = (
                f"{lost} stays float, so onnxruntime would run this layer in float with "
                "its weight dequantized on every run"
            )
    return out


def _sensitivity(
    probe: gs.Graph,
    plan: Plan,
    params: dict[str, qdq_scales.Params],
    ctx: PassContext,
    config: QdqConfig,
) -> qdq_sense.Outcome:
    """Emit every quantizer into the `probe` copy, mask them, measure, choose."""
    start = time.perf_counter()
    float_model = model_io.to_model(probe)
    source = measure_inputs.Source(
        ctx.calibration,
        config.prior,
        config.probe_samples,
        config.seed,
        ctx.input_shapes,
        limit=config.probe_samples,
    )
    feeds = list(source.batches(float_model))
    float_weights = {
        layer.node.name: np.asarray(graph_utils.const_value(layer.node.inputs[1]))
        for layer in plan.layers
        if layer.rules["weight"].enabled
    }
    inputs = {layer.node.name: _input_params(layer, plan, params) for layer in plan.layers}
    with graph_utils.naming(probe):
        _emit_activations(probe, plan, params)
        _emit_layers(probe, plan, inputs)
        units = qdq_sense.masked(probe, float_weights, set(plan.acts))
    probed = qdq_sense.Probe(probe, units, feeds)
    return qdq_sense.choose(probed, float(config.fidelity or 0.0), start)


def _keep_float(outcome: qdq_sense.Outcome) -> tuple[dict[str, str], dict[str, str]]:
    """(activation tensor -> reason, layer -> reason) for what the probe keeps float."""
    acts: dict[str, str] = {}
    layers: dict[str, str] = {}
    for unit in outcome.floated:
        why = (
            f"kept float for the fidelity target (output SNR {outcome.alone_db[unit]:.1f} dB alone)"
        )
        (layers if unit.kind == qdq_sense.WEIGHT else acts)[unit.name] = why
    return acts, layers


def _sensitivity_notes(result: PassResult, outcome: qdq_sense.Outcome) -> None:
    result.notes["sensitivity"] = outcome.summary()
    worst = outcome.table(most=SENSITIVITY_LINE)
    result.notes["sensitivity_worst"] = ", ".join(
        f"{r['tensor']} {r['kind']} {r['output_snr_alone_db'] or r['local_sqnr_db']} dB"
        for r in worst
    )
    result.notes["sensitivity_table"] = outcome.table()


def _emit_activations(graph: gs.Graph, plan: Plan, params: dict[str, qdq_scales.Params]) -> None:
    for name, act in plan.acts.items():
        if not act.readers and not graph_utils.is_graph_output(graph, act.tensor):
            continue
        if act.dynamic:
            qdq_emit.add_dynamic(graph, act.tensor, act.readers)
        else:
            p = params[name]
            qdq_emit.add_qdq(graph, act.tensor, act.readers, p.scale, p.zero_point, p.spec)


def _input_params(
    layer: Layer, plan: Plan, params: dict[str, qdq_scales.Params]
) -> qdq_scales.Params | None:
    name = layer.node.inputs[0].name
    act = plan.acts.get(name)
    return params.get(name) if act is not None and layer.node in act.readers else None


def _emit_layers(
    graph: gs.Graph, plan: Plan, inputs: dict[str, qdq_scales.Params | None]
) -> dict[str, str]:
    """Integer weights and int32 biases; returns a detail line per layer."""
    cache: dict[str, gs.Tensor] = {}
    owners: dict[str, qdq_scales.Params] = {}
    details = {}
    for layer in plan.layers:
        parts = _weight_and_bias(graph, layer, inputs[layer.node.name], cache, owners)
        details[layer.node.name] = ", ".join(parts)
    return details


def _weight_and_bias(
    graph: gs.Graph,
    layer: Layer,
    in_params: qdq_scales.Params | None,
    cache: dict[str, gs.Tensor],
    owners: dict[str, qdq_scales.Params],
) -> list[str]:
    node, rule = layer.node, layer.rules["weight"]
    if not rule.enabled:
        return []
    weight_name = node.inputs[1].name
    weight = np.asarray(graph_utils.const_value(node.inputs[1]))
    bias = graph_utils.const_input(node, 2) if layer.rules["bias"].enabled else None
    if bias is not None and node.op == "Gemm":
        bias = bias.reshape(-1) * float(np.asarray(graph_utils.attr(node, "beta", 1.0)))
    fit = None if in_params is None or weight_name in owners else in_params.scale
    wp, codes = qdq_scales.weight_params(
        rule, weight, layer.weight_axis, rule.per_channel, bias, fit
    )
    wp = owners.setdefault(weight_name, wp)
    qdq_emit.add_const_dq(
        graph,
        node,
        1,
        codes,
        wp.scale,
        wp.zero_point,
        wp.spec,
        cache,
        weight_name,
        with_zero_point=_needs_zero_point(node, wp),
    )
    parts = [f"weight {rule.describe()}"]
    if bias is None or in_params is None:
        return parts
    coded = qdq_scales.bias_codes(bias, in_params.scale, wp.scale)
    if coded is None:
        return [*parts, "bias float (int32 overflow)"]
    codes32, bscale = coded
    if np.ndim(wp.scale) == 0:
        bscale = np.asarray(bscale.reshape(-1)[0], dtype=np.float32)
    if node.op == "Gemm":
        node.attrs["beta"] = 1.0
    qdq_emit.add_bias_dq(
        graph, node, codes32, bscale, _dq_scale(node.inputs[0]), _dq_scale(node.inputs[1])
    )
    return [*parts, "bias int32"]


def _layer_texts(plan: Plan) -> dict[str, tuple[list[str], str]]:
    """Input and output descriptions per layer, taken before the edits rename inputs."""
    texts = {}
    for layer in plan.layers:
        node = layer.node
        ins = [f"input {_act_text(plan.acts.get(node.inputs[i].name))}" for i in layer.acts]
        texts[node.name] = (ins, f"output {_act_text(plan.acts.get(layer.out.name))}")
    return texts


def _needs_zero_point(node: gs.Node, params: qdq_scales.Params) -> bool:
    """False for Conv weights whose zero point is 0: it is left out (1 byte per channel).

    onnxruntime's Gemm/MatMul fusion wants the zero point, so those keep it.
    """
    return node.op not in ("Conv", "ConvTranspose") or bool(np.any(params.zero_point))


def _dq_scale(tensor: gs.Tensor) -> gs.Tensor:
    """The scale input of the DequantizeLinear that produces `tensor`."""
    dq = graph_utils.producer(tensor)
    if dq is None:
        raise ValueError(f"{tensor.name} has no DequantizeLinear producer")
    return dq.inputs[1]


def _report(
    result: PassResult,
    graph: gs.Graph,
    plan: Plan,
    texts: dict[str, tuple[list[str], str]],
    details: dict[str, str],
    dropped: dict[str, str],
    notes: list[str],
    ranges: dict,
) -> None:
    for node, reason in plan.skips:
        result.skip(node, reason)
    for layer in plan.layers:
        ins, out = texts[layer.node.name]
        middle = [details[layer.node.name]] if details.get(layer.node.name) else []
        middle += [f"weight float: {layer.weight_note}"] if layer.weight_note else []
        result.change(layer.node, "; ".join([*ins, *middle, out]))
    sources = Counter(r[2] for n, r in ranges.items() if n in plan.acts)
    float_ops = Counter(n.op for n in graph.nodes if n.op not in QUANTIZABLE | QDQ_OPS)
    result.notes.update(
        transformer=plan.transformer,
        dynamic=sorted(n for n, a in plan.acts.items() if a.dynamic),
        range_sources=dict(sources),
        left_float=dict(dropped),
        groups=notes,
        float_ops=dict(float_ops),
    )
    recurrent = {op: n for op, n in float_ops.items() if op in RECURRENT}
    if recurrent:
        result.notes["recurrent_float"] = (
            f"{_ops(recurrent)} stay float: graphcomp does not quantize recurrent layers"
        )
    inside = _subgraph_layers(graph)
    if inside:
        result.notes["subgraph_warning"] = (
            f"{_ops(inside)} inside If/Loop/Scan subgraphs stay float: graphcomp quantizes "
            "the main graph only"
        )


RECURRENT = ("LSTM", "GRU", "RNN")


def _ops(counts: Counter | dict) -> str:
    return ", ".join(f"{n} {op}" for op, n in sorted(counts.items()))


def _subgraph_layers(graph: gs.Graph) -> Counter:
    """Conv/Gemm/MatMul/recurrent nodes inside the subgraphs of `graph`, at any depth."""
    found: Counter = Counter()
    for node in graph.nodes:
        for value in node.attrs.values():
            for sub in value if isinstance(value, list) else [value]:
                if isinstance(sub, gs.Graph):
                    found.update(n.op for n in sub.nodes if n.op in COMPUTE + RECURRENT)
                    found.update(_subgraph_layers(sub))
    return found


def _act_text(act: Act | None) -> str:
    if act is None:
        return "float"
    if act.dynamic:
        return "uint8 dynamic"
    return act.rule.describe()
