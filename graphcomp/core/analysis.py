"""Pre-flight facts about a model: opset, I/O, ops, params, MACs, bytes, BN, sharing.

MACs are multiply-accumulates for one sample: dynamic dims count as 1 unless the
caller fixes them with `input_shapes`. Counted for Conv, ConvTranspose, Gemm and
MatMul (the ops that dominate cost); other ops count 0.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import shape_inference

from graphcomp.core import model_io
from graphcomp.core.model_io import default_opset

STANDARD_DOMAINS = ("", "ai.onnx", "ai.onnx.ml", "com.microsoft")
MAC_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclass
class Analysis:
    """What `graphcomp inspect` shows; see the module docstring."""

    opset: int
    ir_version: int
    producer: str
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    op_counts: dict[str, int]
    params: int
    macs: int
    bytes: int
    batchnorm_nodes: int
    batchnorm_state: str
    shared_initializers: list[str]
    custom_ops: list[str]
    macs_by_node: dict[str, int] = field(default_factory=dict)

    def to_dict(self, with_nodes: bool = False) -> dict[str, Any]:
        """JSON-ready form; per-node MACs only when asked."""
        data = asdict(self)
        if not with_nodes:
            data.pop("macs_by_node")
        return data


def analyze(model: onnx.ModelProto, input_shapes: dict[str, list[int]] | None = None) -> Analysis:
    """Collect the facts of `model` (not modified)."""
    graph = model.graph
    shapes = infer_shapes(model, input_shapes or {})
    macs = {n.name or f"#{i}": node_macs(n, shapes) for i, n in enumerate(graph.node)}
    ops = Counter(n.op_type for n in graph.node)
    bn = ops.get("BatchNormalization", 0)
    return Analysis(
        opset=default_opset(model),
        ir_version=model.ir_version,
        producer=f"{model.producer_name} {model.producer_version}".strip(),
        inputs=[_io_entry(v) for v in _real_inputs(graph)],
        outputs=[_io_entry(v) for v in graph.output],
        op_counts=dict(sorted(ops.items())),
        params=count_params(model),
        macs=int(sum(macs.values())),
        bytes=model_io.model_size(model),
        batchnorm_nodes=bn,
        batchnorm_state="kept" if bn else ("folded or absent" if ops.get("Conv") else "absent"),
        shared_initializers=shared_initializers(model),
        custom_ops=sorted(
            {f"{n.domain}::{n.op_type}" for n in graph.node if n.domain not in STANDARD_DOMAINS}
        ),
        macs_by_node=macs,
    )


def _real_inputs(graph: onnx.GraphProto) -> list[onnx.ValueInfoProto]:
    inits = {i.name for i in graph.initializer}
    return [v for v in graph.input if v.name not in inits]


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    tt = value.type.tensor_type
    if not tt.HasField("shape"):
        return []
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tt.shape.dim]


def _io_entry(value: onnx.ValueInfoProto) -> dict[str, Any]:
    elem = value.type.tensor_type.elem_type
    dtype = onnx.TensorProto.DataType.Name(elem) if elem else "?"
    shape = _dims(value)
    return {
        "name": value.name,
        "dtype": dtype,
        "shape": shape,
        "dynamic": [i for i, d in enumerate(shape) if not isinstance(d, int)],
    }


def count_params(model: onnx.ModelProto) -> int:
    """Number of weight values: initializers plus Constant nodes' tensors, subgraphs too."""
    return _graph_params(model.graph)


def _graph_params(graph: onnx.GraphProto) -> int:
    total = sum(int(np.prod(t.dims)) for t in graph.initializer)
    for node in graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.TENSOR and node.op_type == "Constant":
                total += int(np.prod(a.t.dims))
            elif a.type == onnx.AttributeProto.GRAPH:
                total += _graph_params(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                total += sum(_graph_params(g) for g in a.graphs)
    return total


def shared_initializers(model: onnx.ModelProto) -> list[str]:
    """Initializers read by more than one node (tied or shared weights)."""
    inits = {i.name for i in model.graph.initializer}
    uses = Counter(name for n in model.graph.node for name in set(n.input) if name in inits)
    return sorted(name for name, count in uses.items() if count > 1)


def infer_shapes(
    model: onnx.ModelProto, input_shapes: dict[str, list[int]]
) -> dict[str, list[int]]:
    """Static shape of every tensor onnx shape inference can resolve (dynamic dims -> 1)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(_skeleton(model) if model_io.needs_external_data(model) else model)
    for value in probe.graph.input:
        if value.name in input_shapes:
            _set_dims(value, input_shapes[value.name])
    del probe.graph.value_info[:]  # stale or symbolic dims would win over input_shapes
    shapes, vague = _inferred(probe)
    if _layers_vague(probe, vague) and not model_io.needs_external_data(model):
        folded = _fold(probe)  # shapes computed at run time (Shape -> ... -> Pad)
        if folded is not None:
            shapes.update(_inferred(folded)[0])
    for init in model.graph.initializer:
        shapes[init.name] = list(init.dims)
    return shapes


def _inferred(probe: onnx.ModelProto) -> tuple[dict[str, list[int]], set[str]]:
    """Shapes (unknown dims -> 1) and the names with an unknown dim past the first."""
    with contextlib.suppress(Exception):  # best effort: unknown shapes count 0 MACs
        probe = shape_inference.infer_shapes(probe, data_prop=True)
    shapes: dict[str, list[int]] = {}
    vague = set()
    for value in [*probe.graph.input, *probe.graph.value_info, *probe.graph.output]:
        dims = _dims(value)
        shapes[value.name] = [d if isinstance(d, int) and d > 0 else 1 for d in dims]
        if any(not (isinstance(d, int) and d > 0) for d in dims[1:]):
            vague.add(value.name)
    return shapes, vague


def _layers_vague(model: onnx.ModelProto, vague: set[str]) -> bool:
    """True when some Conv/Gemm/MatMul input or output has an unknown non-batch dim."""
    return any(
        n.op_type in MAC_OPS and (n.output[0] in vague or n.input[0] in vague)
        for n in model.graph.node
    )


def _fold(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """`model` with its constant shape arithmetic folded (graphcomp.core.simplify), or None."""
    from graphcomp.core import simplify

    try:
        graph = model_io.import_graph(model)
        if not simplify.fold_constants(graph):
            return None
        folded = model_io.export(graph)
    except Exception:  # noqa: BLE001 - best effort, as shape inference itself
        return None
    del folded.graph.value_info[:]
    return folded


def _skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of a huge model whose initializers carry dims but no data."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for init in copy.graph.initializer:
        init.ClearField("raw_data")
        init.ClearField("float_data")
        init.ClearField("external_data")
        init.data_location = onnx.TensorProto.DEFAULT
    return copy


def _set_dims(value: onnx.ValueInfoProto, dims: list[int]) -> None:
    shape = value.type.tensor_type.shape
    shape.ClearField("dim")
    for d in dims:
        shape.dim.add().dim_value = int(d)


def node_macs(node: onnx.NodeProto, shapes: dict[str, list[int]]) -> int:
    """Multiply-accumulates of one node from known shapes (0 when unknown or cheap)."""

    def shape(i: int, outputs: bool = False) -> list[int] | None:
        names = node.output if outputs else node.input
        return shapes.get(names[i]) if i < len(names) and names[i] else None

    out, x, w = shape(0, outputs=True), shape(0), shape(1)
    if node.op_type == "Conv" and out and w:
        return int(np.prod(out)) * int(np.prod(w[1:]))
    if node.op_type == "ConvTranspose" and w and x:
        return int(np.prod(x)) * int(np.prod(w[1:]))
    if node.op_type in ("Gemm", "MatMul", "MatMulInteger", "QLinearMatMul") and out and x:
        k = _contracted(node, x)
        return int(np.prod(out)) * k
    if node.op_type in ("QLinearConv", "ConvInteger") and out:
        wq = shape(3) if node.op_type == "QLinearConv" else w
        return int(np.prod(out)) * int(np.prod(wq[1:])) if wq else 0
    return 0


def _contracted(node: onnx.NodeProto, a: list[int]) -> int:
    trans_a = next((x.i for x in node.attribute if x.name == "transA"), 0)
    if node.op_type == "Gemm" and trans_a:
        return a[0]
    return a[-1] if a else 0
