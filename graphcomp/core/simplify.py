"""Graph simplifications that let the passes see more: constant shape math, Pad into Conv.

- `fold_constants`: nodes in SHAPE_MATH whose inputs are all constant (after folding
  static dims of Shape, e.g. the H and W of a dynamic-batch input) become constants,
  through onnx-graphsurgeon's folder (onnxruntime evaluates them). Shape's `start` /
  `end` attributes are honoured (the folder ignores them, so those are folded here). Exporters write
  TensorFlow-style "same" padding as Shape -> Gather -> ... -> Pad; folded, the pads
  are constants. Lossless: the folded values are what the graph computed.
- `fill_shapes`: tensors without a shape get the one onnx shape inference finds (the
  first pass of a pipeline gets a graph without intermediate shapes).
- `fuse_pads`: Pad(x, pads) with constant mode, zero value, non-negative pads on the
  spatial axes only, read only by Conv(s) without auto_pad: the pads move into each
  Conv's `pads` attribute. Conv pads with zeros, so the output is unchanged; the int8
  model then runs QLinearConv straight on the codes (a float Pad between a DQ and a Q
  costs as much as a small conv in onnxruntime).

Will not touch: other op types, folds whose result is larger than FOLD_LIMIT bytes,
subgraphs of If/Loop, Pad in reflect/edge mode or with a non-zero value, negative
pads (crops), a Pad read by anything but a Conv.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import shape_inference

from graphcomp.core import graph_utils, model_io

log = logging.getLogger(__name__)

SHAPE_MATH = frozenset(
    {
        "Shape",
        "Gather",
        "Slice",
        "Concat",
        "Unsqueeze",
        "Squeeze",
        "Cast",
        "Add",
        "Sub",
        "Mul",
        "Div",
        "Neg",
        "Floor",
        "Ceil",
        "Max",
        "Min",
        "ConstantOfShape",
        "Reshape",
        "Transpose",
        "Range",
        "Equal",
        "Where",
        "Expand",
        "Identity",
        "Size",
        "Mod",
        "Sqrt",
    }
)
FOLD_LIMIT = 1 << 22  # bytes: a larger folded tensor stays computed
HIDDEN_SHAPE = "GraphcompShapeSliced"  # op name that keeps a Shape out of the folder


def fold_constants(graph: gs.Graph) -> int:
    """Fold SHAPE_MATH nodes with constant inputs, in place; returns how many ops went.

    Constant nodes are not counted (the folder turns them into initializers).
    """
    before = sum(n.op != "Constant" for n in graph.nodes)
    hidden = _fold_sliced_shapes(graph)
    try:
        graph.fold_constants(
            fold_shapes=True,
            recurse_subgraphs=False,
            flatten_subgraphs=False,
            size_threshold=FOLD_LIMIT,
            should_exclude_node=lambda n: n.op not in SHAPE_MATH,
        )
    except Exception as e:  # noqa: BLE001 - folding is an aid, never required
        log.debug("constant folding failed: %r", e)
        return 0
    finally:
        for node in hidden:
            node.op = "Shape"
    graph.cleanup(remove_unused_graph_inputs=False)
    return before - sum(n.op != "Constant" for n in graph.nodes)


def _fold_sliced_shapes(graph: gs.Graph) -> list[gs.Node]:
    """Fold Shape nodes with `start`/`end` ourselves; hide the rest from the folder.

    onnx-graphsurgeon's shape folding (0.6.1) reads Shape as the whole shape whatever
    its `start`/`end` attributes say. A Shape whose slice of dims is static becomes that
    constant here (exact); the others are renamed for the duration of the fold, so they
    are not folded at all. Returns the renamed nodes (the caller restores their op).
    """
    hidden = []
    for node in graph_utils.nodes_of(graph, ("Shape",)):
        if "start" not in node.attrs and "end" not in node.attrs:
            continue
        dims = _shape_slice(node)
        out = node.outputs[0]
        if dims is not None and out not in graph.outputs:
            out.to_constant(np.array(dims, dtype=np.int64))
            out.inputs.clear()
        else:
            node.op = HIDDEN_SHAPE
            hidden.append(node)
    return hidden


def _shape_slice(node: gs.Node) -> list[int] | None:
    """The static dims Shape(x, start, end) returns, or None when any is unknown."""
    shape = node.inputs[0].shape
    if shape is None:
        return None
    rank = len(shape)

    def clamp(value: int) -> int:
        return min(max(value + rank if value < 0 else value, 0), rank)

    start = clamp(int(node.attrs.get("start", 0)))
    end = clamp(int(node.attrs.get("end", rank)))
    dims = list(shape[start:end])
    if not all(isinstance(d, int) and d >= 0 for d in dims):
        return None
    return [int(d) for d in dims]


def fuse_pads(graph: gs.Graph) -> list[str]:
    """Move zero Pads into the Convs that read them; returns the fused Pads' names."""
    fused = []
    for pad in graph_utils.nodes_of(graph, ("Pad",)):
        spatial = _spatial_pads(pad, graph)
        readers = list(pad.outputs[0].outputs)
        if spatial is None or not readers or not all(_takes_pads(c, spatial) for c in readers):
            continue
        for conv in readers:
            old = np.asarray(conv.attrs.get("pads", [0] * len(spatial)), np.int64)
            conv.attrs["pads"] = [int(v) for v in old + spatial]
            conv.attrs.pop("auto_pad", None)
            conv.inputs[0] = pad.inputs[0]
        fused.append(pad.name)
    if fused:
        graph.cleanup(remove_unused_graph_inputs=False)
    return fused


def _spatial_pads(pad: gs.Node, graph: gs.Graph) -> np.ndarray | None:
    """Conv-layout pads (begins then ends of the axes after N, C), or None if not fusable."""
    if graph_utils.is_graph_output(graph, pad.outputs[0]):
        return None
    if graph_utils.attr_str(pad, "mode", "constant") != "constant":
        return None
    pads = (
        graph_utils.attr_ints(pad, "pads")
        if len(pad.inputs) < 2
        else graph_utils.const_input(pad, 1)
    )
    value = (
        graph_utils.const_input(pad, 2)
        if len(pad.inputs) > 2 and pad.inputs[2].name
        else np.asarray(graph_utils.attr_float(pad, "value", 0.0))
    )
    if pads is None or value is None or float(np.max(np.abs(value), initial=0.0)) != 0.0:
        return None
    pads = np.asarray(pads, np.int64).reshape(-1)
    rank = pads.size // 2
    axes = graph_utils.const_input(pad, 3) if len(pad.inputs) > 3 and pad.inputs[3].name else None
    if axes is not None:
        shape = pad.inputs[0].shape
        if shape is None:
            return None
        full = np.zeros(2 * len(shape), np.int64)
        for i, a in enumerate(np.asarray(axes).reshape(-1) % len(shape)):
            full[a], full[a + len(shape)] = pads[i], pads[i + rank]
        pads, rank = full, len(shape)
    if rank < 3 or np.any(pads < 0) or pads[0] or pads[1] or pads[rank] or pads[rank + 1]:
        return None
    return np.concatenate([pads[2:rank], pads[rank + 2 :]])


def _takes_pads(node: gs.Node, spatial: np.ndarray) -> bool:
    auto = graph_utils.attr_str(node, "auto_pad", "NOTSET")
    own = graph_utils.attr_ints(node, "pads")
    return (
        node.op == "Conv"
        and auto in ("NOTSET", "VALID")
        and (own is None or len(own) == spatial.size)
    )


def simplify(graph: gs.Graph) -> dict[str, object]:
    """fold_constants then fuse_pads; notes for the report."""
    folded = fold_constants(graph)
    pads = fuse_pads(graph)
    return {"folded_nodes": folded, "pads_into_conv": len(pads)}


def fill_shapes(graph: gs.Graph) -> None:
    """Give tensors without a shape the one onnx shape inference finds.

    The first pass of a pipeline gets a graph without intermediate shapes.
    """
    tensors = graph.tensors()
    if all(t.shape is not None for t in tensors.values() if isinstance(t, gs.Variable)):
        return
    try:
        model = shape_inference.infer_shapes(model_io.to_model(graph), data_prop=True)
    except Exception as e:  # noqa: BLE001 - best effort: unknown shapes block their groups
        log.debug("shape inference failed: %s", e)
        return
    for value in model.graph.value_info:
        tensor = tensors.get(value.name)
        if (
            isinstance(tensor, gs.Variable)
            and tensor.shape is None
            and value.type.HasField("tensor_type")
            and value.type.tensor_type.HasField("shape")
        ):
            tensor.shape = [
                d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                for d in value.type.tensor_type.shape.dim
            ]
            tensor.dtype = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
