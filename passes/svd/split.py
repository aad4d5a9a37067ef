"""Graph rewrites of the svd pass: one layer becomes two thinner ones.

With the layer matrix M ~ P Q (rows = input side, see svd_layers):
- MatMul x @ W: x @ P, then @ Q (a following bias Add is untouched, so it acts on
  the second one); MatMul W @ x: P^T @ x, then Q^T @ (.);
- Gemm: Gemm(A, P, alpha, transA) then Gemm(., Q, C, beta), the factors stored
  transposed when transB = 1;
- Conv channel: Conv(x, P^T as (r, i, *k)) with the original strides, pads,
  dilations, then a 1x1 Conv (o, r) with the bias;
- Conv spatial: a (kh x 1) Conv with the vertical stride, pads and dilation, then a
  (1 x kw) Conv with the horizontal ones and the bias. Exact at full rank: the first
  conv leaves the width untouched and its zero input columns give zero outputs,
  which is what the second conv's padding supplies.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_graphsurgeon as gs

from graphcomp.core import graph_utils
from graphcomp.passes.svd.layers import Layer


def split(
    graph: gs.Graph,
    layer: Layer,
    mode: str,
    p: np.ndarray,
    q: np.ndarray,
    shift: np.ndarray | None = None,
) -> None:
    """Replace `layer.node` by two nodes computing x -> (x P) Q in the layer's layout.

    `shift` (per output channel) is added to the output: folded into the bias of the
    second node (Conv B, Gemm C, a MatMul's sole constant bias Add) or a new Add.
    """
    dtype = layer.weight.dtype
    p, q = p.astype(dtype), q.astype(dtype)
    node = layer.node
    first: Part
    second: Part
    if layer.kind == "matmul":
        first, second = ("MatMul", [node.inputs[0], p], {}), ("MatMul", [q], {})
    elif layer.kind == "matmul_left":
        first = ("MatMul", [p.T, node.inputs[1]], {})
        second = ("MatMul", [q.T], {})
        _shifted(graph, layer, _emit(graph, node, first, second, h_first=False), shift)
        return
    elif layer.kind == "gemm":
        first, second = _gemm_parts(node, p, q)
    elif mode == "channel":
        first, second = _channel_parts(node, layer.weight.shape, p, q)
    else:
        first, second = _spatial_parts(node, layer.weight.shape, p, q)
    _shifted(graph, layer, _emit(graph, node, first, second), shift)


Part = tuple[str, list, dict]


def _emit(
    graph: gs.Graph, node: gs.Node, first: Part, second: Part, h_first: bool = True
) -> gs.Node:
    """Add the two nodes (second writes the old output) and detach the old node."""
    dtype = node.outputs[0].dtype
    hidden = gs.Variable(graph_utils.fresh_name(graph, f"{node.name}_svd_hidden"), dtype=dtype)
    op1, ins1, attrs1 = first
    op2, ins2, attrs2 = second
    inputs1 = [_tensor(graph, node, x, "a") for x in ins1]
    rest = [_tensor(graph, node, x, "b") for x in ins2]
    inputs2 = [hidden, *rest] if h_first else [*rest, hidden]
    n1 = gs.Node(
        op1, graph_utils.fresh_name(graph, f"{node.name}_svd_a"), attrs1, inputs1, [hidden]
    )
    n2 = gs.Node(
        op2,
        graph_utils.fresh_name(graph, f"{node.name}_svd_b"),
        attrs2,
        inputs2,
        list(node.outputs),
    )
    node.inputs.clear()
    node.outputs.clear()
    graph.nodes.extend([n1, n2])
    return n2


def _shifted(graph: gs.Graph, layer: Layer, second: gs.Node, shift: np.ndarray | None) -> None:
    """Add `shift` to the output of `second` through its bias, else through an Add."""
    if shift is None or not np.any(shift):
        return
    shift = shift.astype(layer.weight.dtype)
    if second.op == "Conv":
        old = graph_utils.const_input(second, 2)
        graph_utils.set_const_input(graph, second, 2, shift if old is None else old + shift)
        return
    if second.op == "Gemm" and (len(second.inputs) < 3 or not second.inputs[2].name):
        second.attrs["beta"] = 1.0
        graph_utils.set_const_input(graph, second, 2, shift)
        return
    if second.op == "Gemm" and (bias := graph_utils.const_input(second, 2)) is not None:
        beta = graph_utils.attr_float(second, "beta", 1.0)
        if beta != 0.0:
            graph_utils.set_const_input(graph, second, 2, bias + shift / beta)
            return
    if layer.kind == "matmul_left":
        shift = shift[:, None]
    if not graph_utils.add_to_following_bias(graph, second, shift):
        _append_add(graph, second, shift)


def _append_add(graph: gs.Graph, second: gs.Node, shift: np.ndarray) -> None:
    out = second.outputs[0]
    raw = gs.Variable(graph_utils.fresh_name(graph, f"{second.name}_raw"), dtype=out.dtype)
    second.outputs = [raw]
    const = graph_utils.new_const(graph, f"{second.name}_mean_shift", shift)
    graph.nodes.append(
        gs.Node(
            "Add",
            graph_utils.fresh_name(graph, f"{second.name}_shift"),
            inputs=[raw, const],
            outputs=[out],
        )
    )


def _tensor(graph: gs.Graph, node: gs.Node, value: object, tag: str) -> gs.Tensor:
    if isinstance(value, np.ndarray):
        return graph_utils.new_const(graph, f"{node.name}_svd_{tag}", value)
    return value


def _gemm_parts(node: gs.Node, p: np.ndarray, q: np.ndarray) -> tuple[Part, Part]:
    trans_b = graph_utils.attr_int(node, "transB", 0)
    first_attrs = {
        "alpha": graph_utils.attr_float(node, "alpha", 1.0),
        "transA": graph_utils.attr_int(node, "transA", 0),
        "transB": trans_b,
    }
    second_attrs = {"beta": graph_utils.attr_float(node, "beta", 1.0), "transB": trans_b}
    w1, w2 = (p.T, q.T) if trans_b else (p, q)
    return ("Gemm", [node.inputs[0], w1], first_attrs), ("Gemm", [w2, *_bias(node)], second_attrs)


def _bias(node: gs.Node) -> list[gs.Tensor]:
    return [node.inputs[2]] if len(node.inputs) > 2 and node.inputs[2].name else []


def _channel_parts(
    node: gs.Node, shape: tuple[int, ...], p: np.ndarray, q: np.ndarray
) -> tuple[Part, Part]:
    rank, kernel = p.shape[1], list(shape[2:])
    attrs = {k: v for k, v in node.attrs.items() if k != "group"}
    attrs["kernel_shape"] = kernel
    w1 = p.T.reshape(rank, shape[1], *kernel)
    w2 = q.T.reshape(shape[0], rank, *([1] * len(kernel)))
    point = {"kernel_shape": [1] * len(kernel)}
    return ("Conv", [node.inputs[0], w1], attrs), ("Conv", [w2, *_bias(node)], point)


def _spatial_parts(
    node: gs.Node, shape: tuple[int, ...], p: np.ndarray, q: np.ndarray
) -> tuple[Part, Part]:
    o, i, kh, kw = shape
    rank = p.shape[1]
    top, left, bottom, right = explicit_pads(node, (kh, kw))
    sh, sw = graph_utils.attr_ints(node, "strides") or [1, 1]
    dh, dw = graph_utils.attr_ints(node, "dilations") or [1, 1]
    w1 = p.T.reshape(rank, i, kh, 1)
    w2 = q.reshape(rank, o, kw).transpose(1, 0, 2)[:, :, None, :]
    attrs1 = {
        "kernel_shape": [kh, 1],
        "strides": [sh, 1],
        "dilations": [dh, 1],
        "pads": [top, 0, bottom, 0],
    }
    attrs2 = {
        "kernel_shape": [1, kw],
        "strides": [1, sw],
        "dilations": [1, dw],
        "pads": [0, left, 0, right],
    }
    return ("Conv", [node.inputs[0], w1], attrs1), ("Conv", [w2, *_bias(node)], attrs2)


def explicit_pads(node: gs.Node, kernel: tuple[int, int]) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) pads of a 2-D Conv.

    auto_pad SAME_* is resolved from the static input shape (the caller checks it).
    """
    auto = graph_utils.attr_str(node, "auto_pad", "NOTSET")
    if auto == "VALID":
        return 0, 0, 0, 0
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        size = [int(d) for d in node.inputs[0].shape[2:]]
        strides = graph_utils.attr_ints(node, "strides") or [1, 1]
        dilations = graph_utils.attr_ints(node, "dilations") or [1, 1]
        begins, ends = [], []
        for n, k, s, d in zip(size, kernel, strides, dilations, strict=True):
            total = max((math.ceil(n / s) - 1) * s + (k - 1) * d + 1 - n, 0)
            small = total // 2
            begins.append(small if auto == "SAME_UPPER" else total - small)
            ends.append(total - begins[-1])
        return begins[0], begins[1], ends[0], ends[1]
    pads = graph_utils.attr_ints(node, "pads") or [0, 0, 0, 0]
    return pads[0], pads[1], pads[2], pads[3]
