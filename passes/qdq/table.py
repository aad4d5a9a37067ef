"""`graphcomp config`: the resolved quantization of every tensor, before anything runs.

One row per (layer, role, tensor): method (auto, fixed, dynamic, none), number format,
granularity and where the scale comes from, from the same plan the qdq pass executes
(qdq_place.build_plan), so the table is what the pass will do. Only range-dependent
choices are stated as conditions: a Concat group shares one scale unless its ranges
differ by more than `concat_ratio`, and a tensor whose measured range is not usable
(infinite, mask-like) stays float.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import onnx
import onnx_graphsurgeon as gs
from rich.table import Table

from graphcomp.core import graph_utils, model_io
from graphcomp.core.pass_base import PassContext
from graphcomp.passes.fold_bn import FoldBnPass
from graphcomp.passes.qdq import ranges as qdq_ranges
from graphcomp.passes.qdq.config import QdqConfig, TensorRule
from graphcomp.passes.qdq.place import Act, Layer, Plan, build_plan
from graphcomp.passes.qdq.scales import fixed_source

COLUMNS = ("layer", "op", "role", "tensor", "method", "format", "granularity", "scale source")


@dataclasses.dataclass(frozen=True)
class Row:
    """One tensor of one layer."""

    layer: str
    op: str
    role: str
    tensor: str
    method: str
    format: str
    granularity: str
    source: str

    def cells(self) -> tuple[str, ...]:
        """The row as table cells, in COLUMNS order."""
        return tuple(str(v) for v in dataclasses.astuple(self))


def resolve(model: onnx.ModelProto, config: QdqConfig, ctx: PassContext | None = None) -> list[Row]:
    """Rows for every quantizable layer of `model` (the model is not changed)."""
    ctx = ctx or PassContext()
    graph = model_io.import_graph(model)
    graph_utils.name_nodes(graph)
    if config.fold_bn:  # as the pass does first (on this private copy)
        FoldBnPass().apply(graph, PassContext())
        graph.cleanup()
    plan = build_plan(graph, config)
    rows = []
    for layer in plan.layers:
        rows += _layer_rows(layer, plan, config, ctx)
    for node, reason in plan.skips:
        rows.append(Row(node.name, node.op, "-", "-", "none", "float", "-", reason))
    return rows


def _layer_rows(layer: Layer, plan: Plan, config: QdqConfig, ctx: PassContext) -> list[Row]:
    node = layer.node
    rows = [_act_row(layer, "input", node.inputs[i], plan, config, ctx) for i in layer.acts]
    weight = layer.rules["weight"]
    if layer.kind == "compute" and len(layer.acts) == 1:
        rows.append(_weight_row(layer, weight))
    bias = layer.rules["bias"]
    if len(node.inputs) > 2 and node.inputs[2].name and layer.acts == [0]:
        quantized = bias.enabled and weight.enabled and _static_input(layer, plan)
        gran = "per-channel(axis=0)" if weight.per_channel else "per-tensor"
        rows.append(
            Row(
                node.name,
                node.op,
                "bias",
                node.inputs[2].name,
                "auto" if quantized else "none",
                "int32" if quantized else "float",
                gran if quantized else "-",
                "s_input * s_weight" if quantized else _bias_reason(layer, config),
            )
        )
    rows.append(_act_row(layer, "output", layer.out, plan, config, ctx))
    return rows


def _static_input(layer: Layer, plan: Plan) -> bool:
    act = plan.acts.get(layer.node.inputs[0].name)
    return act is not None and not act.dynamic and layer.node in act.readers


def _bias_reason(layer: Layer, config: QdqConfig) -> str:
    if layer.node.op == "ConvTranspose":
        return "ConvTranspose: no fused integer kernel"
    if config.profile == "trt":
        return "trt: TensorRT keeps biases float"
    if not layer.rules["bias"].enabled:
        return "rule none, or bias shape is not one value per output channel"
    if not layer.rules["weight"].enabled:
        return "weight float"
    return "input not statically quantized"


def _weight_row(layer: Layer, rule: TensorRule) -> Row:
    node = layer.node
    if not rule.enabled:
        return Row(
            node.name,
            node.op,
            "weight",
            node.inputs[1].name,
            "none",
            "float",
            "-",
            layer.weight_note or "rule none",
        )
    gran = f"per-channel(axis={layer.weight_axis})" if rule.per_channel else "per-tensor"
    source = (
        fixed_source(rule)
        if rule.method == "fixed"
        else ("min/max per channel" if rule.per_channel else "min/max")
    )
    return Row(
        node.name,
        node.op,
        "weight",
        node.inputs[1].name,
        rule.method,
        _format(rule),
        gran,
        source + (" pow2" if rule.pow2 else ""),
    )


def _act_row(
    layer: Layer, role: str, tensor: gs.Tensor, plan: Plan, config: QdqConfig, ctx: PassContext
) -> Row:
    node = layer.node
    act = plan.acts.get(tensor.name)
    if act is None or (role != "output" and node not in act.readers):
        why = _float_reason(layer, role, config)
        return Row(node.name, node.op, role, tensor.name, "none", "float", "-", why)
    if act.dynamic:
        return Row(
            node.name,
            node.op,
            role,
            tensor.name,
            "dynamic",
            "uint8 asym",
            "per-tensor",
            "runtime min/max per batch",
        )
    rule = act.rule
    source = (
        fixed_source(rule) if rule.method == "fixed" else qdq_ranges.label(config, ctx, tensor.name)
    )
    return Row(
        node.name,
        node.op,
        role,
        tensor.name,
        rule.method,
        _format(rule),
        "per-tensor",
        source + _shared(act, plan, config) + (" pow2" if rule.pow2 else "") + _guard(act),
    )


def _guard(act: Act) -> str:
    return " (float if outlier-prone)" if act.guard else ""


def _shared(act: Act, plan: Plan, config: QdqConfig) -> str:
    others = [
        a.tensor.name
        for a in plan.acts.values()
        if a.group == act.group and a is not act and not a.dynamic
    ]
    if not others:
        return ""
    soft = any(
        a.hard_group != act.hard_group for a in plan.acts.values() if a.tensor.name in others
    )
    cond = f", unless ranges differ > {config.concat_ratio:g}x" if soft else ""
    return f" (shared with {', '.join(others[:3])}{'...' if len(others) > 3 else ''}{cond})"


def _float_reason(layer: Layer, role: str, config: QdqConfig) -> str:
    rule = layer.rules[role]
    if not rule.enabled:
        return "rule none"
    if role == "input":
        return "input rule none on this layer" if not rule.enabled else "not quantized"
    if config.profile == "trt":
        return "trt: TensorRT fuses the output side"
    if not layer.rules["input"].enabled:
        return "input float"
    if layer.node.op in ("MatMul", "Gemm", "ConvTranspose"):
        return "float-output kernel"
    return "read only by float ops"


def _format(rule: TensorRule) -> str:
    return " ".join(rule.describe().split()[:2])


def render(rows: list[Row], title: str = "quantization config") -> Table:
    """A rich table of the rows."""
    table = Table(title=title)
    for col in COLUMNS:
        table.add_column(col)
    for row in rows:
        table.add_row(*row.cells())
    return table


def to_dicts(rows: list[Row]) -> list[dict[str, Any]]:
    """JSON-ready rows."""
    return [dataclasses.asdict(r) for r in rows]
