"""Clamps on integer codes: Min/Max by a constant, exact and without a float detour.

Quantization q(x) = sat(round(x / s) + z) is monotone, so for one (s, z) on both sides
q(min(x, b)) = min(q(x), q(b)) and q(max(x, b)) = max(q(x), q(b)). qdq_place puts a
clamp's input and output into one scale group (`ort` profile); after the Q/DQ pairs are
in, DQ -> Min(b) -> Q becomes Min(codes, q(b)) on the 8-bit codes. When q(b) is the top
code in every channel the bound lies past the quantizer's range, saturation already
clamps, and the op is dropped (Max: the bottom code). The per-channel ReLU6 bound that
equalize writes (Relu -> Min) is the case this exists for: onnxruntime fuses the Relu
into the QLinearConv before it and runs the Min on uint8.

The clamp's input range is capped at its output range on the clamped side (values past
it end clamped either way), when the clamp is its only reader.

Will not touch models below opset 12 (no integer Min/Max), clamps with a 4- or 16-bit
quantizer, per-axis quantizers, or a Q/DQ pair whose scales differ (a user's fixed
rule on one side).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphcomp.core import graph_utils, simplify
from graphcomp.passes.qdq.place import Plan
from graphcomp.passes.qdq.ranges import Range

CODE_TYPES = (np.uint8, np.int8)
MAX_TILE = 1024  # widest W the codes are tiled to
MIN_OPSET = 12  # Min/Max on 8-bit integers


def cap_ranges(graph: gs.Graph, plan: Plan, ranges: dict[str, Range]) -> None:
    """Narrow each planned clamp input's range to the clamp's output range (in place)."""
    for node in graph.nodes:
        if not graph_utils.is_clamp(node) or not graph_utils.is_only_consumer(
            node, node.inputs[0], graph
        ):
            continue
        src, dst = node.inputs[0].name, node.outputs[0].name
        if src not in plan.acts or src not in ranges or dst not in ranges:
            continue
        lo, hi, source = ranges[src]
        if node.op == "Min":
            ranges[src] = (lo, min(hi, ranges[dst][1]), source)
        else:
            ranges[src] = (max(lo, ranges[dst][0]), hi, source)


def integer_clamps(graph: gs.Graph) -> dict[str, str]:
    """Move every DQ -> clamp -> Q onto the codes; clamp name -> 'on codes' or 'dropped'."""
    done: dict[str, str] = {}
    if int(graph.opset) < MIN_OPSET:
        return done
    if any(graph_utils.is_clamp(n) and n.inputs[0].shape is None for n in graph.nodes):
        simplify.fill_shapes(graph)
    for node in list(graph.nodes):
        pair = _pair(graph, node) if graph_utils.is_clamp(node) else None
        if pair is None:
            continue
        dq, q = pair
        codes_in, zp = dq.inputs[0], np.asarray(graph_utils.const_value(dq.inputs[2]))
        scale = float(np.asarray(graph_utils.const_value(dq.inputs[1])))
        info = np.iinfo(zp.dtype)
        bound = np.asarray(graph_utils.const_value(node.inputs[1]), np.float32)
        codes = np.clip(np.rint(bound / np.float32(scale)) + int(zp), info.min, info.max)
        edge = info.max if node.op == "Min" else info.min
        out = q.outputs[0]
        q.outputs = []
        if np.all(codes == edge):
            for reader in list(out.outputs):
                reader.inputs = [codes_in if t is out else t for t in reader.inputs]
            done[node.name] = "dropped (bound past the quantizer's range)"
            continue
        codes = _tile_width(codes, node.inputs[0])
        const = graph_utils.new_const(graph, f"{node.name}_codes", codes.astype(zp.dtype))
        graph.nodes.append(
            gs.Node(
                node.op,
                graph_utils.fresh_name(graph, f"{node.name}_codes"),
                inputs=[codes_in, const],
                outputs=[out],
            )
        )
        done[node.name] = "on codes"
    return done


def _tile_width(codes: np.ndarray, tensor: gs.Tensor) -> np.ndarray:
    """Per-channel codes C x 1 x 1 of an N x C x H x W tensor tiled to C x 1 x W.

    onnxruntime runs the Min in NHWC (after its layout transform) and broadcasts a
    contiguous W*C span of codes about 4x faster than a C pattern (112x112x96 uint8:
    45 vs 164 us, 34 us for a copy). Other shapes stay as they are.
    """
    shape = tensor.shape
    if (
        codes.ndim != 3
        or codes.shape[1:] != (1, 1)
        or shape is None
        or len(shape) != 4
        or not isinstance(shape[3], int)
        or shape[3] > MAX_TILE
    ):
        return codes
    return np.repeat(codes, shape[3], axis=2)


def _pair(graph: gs.Graph, node: gs.Node) -> tuple[gs.Node, gs.Node] | None:
    """(DQ before, Q after) of a clamp when both use one per-tensor 8-bit quantizer."""
    dq, out = graph_utils.producer(node.inputs[0]), node.outputs[0]
    q = graph_utils.only_consumer(out, graph)
    if (
        dq is None
        or q is None
        or dq.op != "DequantizeLinear"
        or q.op != "QuantizeLinear"
        or len(dq.inputs) < 3
        or len(q.inputs) < 3
    ):
        return None
    params = [graph_utils.const_value(t) for t in (*dq.inputs[1:3], *q.inputs[1:3])]
    if any(p is None or np.size(p) != 1 for p in params):
        return None
    s1, z1, s2, z2 = (np.asarray(p) for p in params)
    if z1.dtype.type not in CODE_TYPES or z1.dtype != z2.dtype:
        return None
    return (dq, q) if float(s1) == float(s2) and int(z1) == int(z2) else None
