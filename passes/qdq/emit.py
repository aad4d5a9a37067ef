"""Graph edits of the qdq pass: Q/DQ pairs, dynamic quantizers, integer weights, int32 bias.

Codes are stored in the smallest ONNX integer type of the rule (int4/uint4 packed two
per byte, int8/uint8, int16/uint16); scales are float32, zero points have the codes'
type. Nothing here decides *what* to quantize (see qdq_place.py).
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.ir.tensor import LazyValues

from graphcomp.core import graph_utils
from graphcomp.core.quant import QuantSpec

INT4 = {True: ml_dtypes.int4, False: ml_dtypes.uint4}


def codes_const(graph: gs.Graph, base: str, codes: np.ndarray, spec: QuantSpec) -> gs.Constant:
    """A constant holding integer `codes` in the storage type of `spec`."""
    name = graph_utils.fresh_name(graph, base)
    values = np.asarray(codes).astype(spec.storage_dtype)
    if spec.bits != 4:
        return gs.Constant(name, np.require(values, requirements="C"))
    proto = onnx.numpy_helper.from_array(values.astype(INT4[spec.signed]), name)
    return gs.Constant(name, LazyValues(proto))


def _params(
    graph: gs.Graph, base: str, scale: np.ndarray, zero_point: np.ndarray, spec: QuantSpec
) -> list[gs.Tensor]:
    s = graph_utils.new_const(graph, f"{base}_scale", np.asarray(scale, dtype=np.float32))
    return [s, codes_const(graph, f"{base}_zero_point", np.asarray(zero_point), spec)]


def _axis_attrs(spec: QuantSpec, scale: np.ndarray) -> dict[str, int]:
    return {"axis": int(spec.axis)} if np.ndim(scale) > 0 else {}


def _retarget(readers: list[gs.Node], old: gs.Tensor, new: gs.Tensor) -> None:
    for reader in readers:
        reader.inputs = [new if t is old else t for t in reader.inputs]


def add_qdq(
    graph: gs.Graph,
    tensor: gs.Tensor,
    readers: list[gs.Node],
    scale: np.ndarray,
    zero_point: np.ndarray,
    spec: QuantSpec,
) -> tuple[gs.Node, gs.Node]:
    """Route `tensor` through QuantizeLinear -> DequantizeLinear to each of `readers`."""
    base = tensor.name
    params = _params(graph, base, scale, zero_point, spec)
    attrs = _axis_attrs(spec, scale)
    quantized = gs.Variable(graph_utils.fresh_name(graph, f"{base}_quantized"))
    restored = gs.Variable(
        graph_utils.fresh_name(graph, f"{base}_dequantized"), dtype=tensor.dtype, shape=tensor.shape
    )
    q = gs.Node(
        "QuantizeLinear",
        graph_utils.fresh_name(graph, f"{base}_QuantizeLinear"),
        dict(attrs),
        [tensor, *params],
        [quantized],
    )
    dq = gs.Node(
        "DequantizeLinear",
        graph_utils.fresh_name(graph, f"{base}_DequantizeLinear"),
        dict(attrs),
        [quantized, *params],
        [restored],
    )
    _retarget(readers, tensor, restored)
    graph.nodes.extend([q, dq])
    is_input = any(t is tensor for t in graph.inputs)  # a graph input keeps its name
    if graph_utils.is_graph_output(graph, tensor) and not is_input:  # DQ writes the output
        graph.outputs = [restored if t is tensor else t for t in graph.outputs]
        tensor.name = graph_utils.fresh_name(graph, f"{base}_float")
        restored.name = base
    return q, dq


def add_dynamic(graph: gs.Graph, tensor: gs.Tensor, readers: list[gs.Node]) -> gs.Node:
    """Route `tensor` through DynamicQuantizeLinear (uint8, per batch) and a DQ to readers."""
    base = tensor.name
    outs = [
        gs.Variable(graph_utils.fresh_name(graph, f"{base}_{s}"))
        for s in ("dyn_quantized", "dyn_scale", "dyn_zero_point")
    ]
    restored = gs.Variable(
        graph_utils.fresh_name(graph, f"{base}_dyn_dequantized"),
        dtype=tensor.dtype,
        shape=tensor.shape,
    )
    dyn = gs.Node(
        "DynamicQuantizeLinear",
        graph_utils.fresh_name(graph, f"{base}_DynamicQuantizeLinear"),
        inputs=[tensor],
        outputs=outs,
    )
    dq = gs.Node(
        "DequantizeLinear",
        graph_utils.fresh_name(graph, f"{base}_DequantizeLinear"),
        inputs=list(outs),
        outputs=[restored],
    )
    _retarget(readers, tensor, restored)
    graph.nodes.extend([dyn, dq])
    return dyn


def add_const_dq(
    graph: gs.Graph,
    node: gs.Node,
    index: int,
    codes: np.ndarray,
    scale: np.ndarray,
    zero_point: np.ndarray,
    spec: QuantSpec,
    dq_cache: dict[str, gs.Tensor] | None = None,
    key: str = "",
    with_zero_point: bool = True,
) -> gs.Tensor:
    """Input `index` of `node` becomes DequantizeLinear(codes, scale, zero_point).

    With a `dq_cache` and `key`, a weight shared by several layers gets one DQ.
    Without `with_zero_point` the (all-zero) zero point is left out.
    """
    if dq_cache is not None and key in dq_cache:
        node.inputs[index] = dq_cache[key]
        return dq_cache[key]
    base = node.inputs[index].name or f"{node.name}_in{index}"
    stored = codes_const(graph, f"{base}_quantized", codes, spec)
    restored = gs.Variable(
        graph_utils.fresh_name(graph, f"{base}_dequantized"),
        dtype=np.float32,
        shape=list(np.shape(codes)),
    )
    params = _params(graph, base, scale, zero_point, spec)
    dq = gs.Node(
        "DequantizeLinear",
        graph_utils.fresh_name(graph, f"{base}_DequantizeLinear"),
        _axis_attrs(spec, scale),
        [stored, *params[: 2 if with_zero_point else 1]],
        [restored],
    )
    graph.nodes.append(dq)
    node.inputs[index] = restored
    if dq_cache is not None:
        dq_cache[key] = restored
    return restored


def add_bias_dq(
    graph: gs.Graph,
    node: gs.Node,
    codes: np.ndarray,
    scale: np.ndarray,
    input_scale: gs.Tensor,
    weight_scale: gs.Tensor,
) -> None:
    """Input 2 of `node` becomes DequantizeLinear(int32 codes, input_scale * weight_scale).

    The scale is computed in the graph by a Mul of the input's and the weight's scale
    constants (the same float32 product as `scale`, which only gives its shape; no
    bytes stored, onnxruntime folds it at load). The zero point is left out (0).
    """
    base = node.inputs[2].name or f"{node.name}_bias"
    stored = graph_utils.new_const(graph, f"{base}_quantized", codes.astype(np.int32))
    s = gs.Variable(
        graph_utils.fresh_name(graph, f"{base}_scale"),
        dtype=np.float32,
        shape=list(np.shape(scale)),
    )
    graph.nodes.append(
        gs.Node(
            "Mul",
            graph_utils.fresh_name(graph, f"{base}_scale_Mul"),
            inputs=[input_scale, weight_scale],
            outputs=[s],
        )
    )
    restored = gs.Variable(
        graph_utils.fresh_name(graph, f"{base}_dequantized"),
        dtype=np.float32,
        shape=list(codes.shape),
    )
    attrs = {"axis": 0} if np.ndim(scale) > 0 else {}
    graph.nodes.append(
        gs.Node(
            "DequantizeLinear",
            graph_utils.fresh_name(graph, f"{base}_DequantizeLinear"),
            attrs,
            [stored, s],
            [restored],
        )
    )
    node.inputs[2] = restored
