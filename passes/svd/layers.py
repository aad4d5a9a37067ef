"""Which layers the svd pass can split, and each one as a matrix M (input side x output side).

Every splittable layer is reduced to one or two "forms": a 2-D float64 matrix M whose
rows index the layer's input features and whose columns index its outputs, so that a
factorization M ~ P Q (P: rows x r, Q: r x cols) is all a rewrite needs, and an input
covariance C (rows x rows) whitens it from the left. Forms:

- linear: MatMul x @ W (M = W), Gemm (M = B or B^T under transB), MatMul W @ x with a
  constant left operand (M = W^T);
- channel: Conv W (o, i, *k) -> M = W.reshape(o, -1)^T, rows (i, *k);
- spatial: 2-D Conv -> M[(i, y), (o, x)] = W[o, i, y, x].

`macs_per_rank` is the MACs a split costs per unit of rank, so a split at rank r costs
r * macs_per_rank against `dense_macs`. Layers are skipped (with the reason) when the
weight is not a constant used by that node alone, is not 2-D (linear), belongs to a
grouped or depthwise Conv, or when shapes needed for the MAC count are unknown.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from graphcomp.core import graph_utils

MODES = ("linear", "channel", "spatial")


@dataclass
class Form:
    """One way to split a layer: the matrix and what a rank costs."""

    mode: str
    matrix: np.ndarray
    macs_per_rank: float
    dense_macs: float

    @property
    def max_rank(self) -> int:
        """Full rank of the matrix (min of its sides)."""
        return int(min(self.matrix.shape))


@dataclass
class Layer:
    """A splittable node, its weight and its forms (mode -> Form)."""

    node: gs.Node
    kind: str  # "matmul", "matmul_left", "gemm", "conv"
    weight: np.ndarray
    input_name: str
    input_channels: int
    forms: dict[str, Form] = field(default_factory=dict)

    @property
    def dense_macs(self) -> float:
        """MACs of the layer as it is."""
        return next(iter(self.forms.values())).dense_macs

    @property
    def params(self) -> int:
        """Weight values of the dense layer."""
        return int(self.weight.size)


def find_layers(
    graph: gs.Graph, macs: dict[str, int], shapes: dict[str, list[int]], allow_spatial: bool = True
) -> tuple[list[Layer], list[tuple[gs.Node, str]]]:
    """Splittable layers and (node, reason) for matched nodes that are not."""
    layers, skips = [], []
    for node in graph_utils.nodes_of(graph, ("MatMul", "Gemm", "Conv")):
        layer, reason = _layer_or_reason(node, macs, shapes, allow_spatial)
        if layer is not None:
            layers.append(layer)
        elif reason:
            skips.append((node, reason))
    return layers, skips


def _layer_or_reason(
    node: gs.Node, macs: dict[str, int], shapes: dict[str, list[int]], allow_spatial: bool
) -> tuple[Layer | None, str | None]:
    if node.op == "Conv":
        return _conv_layer(node, macs, shapes, allow_spatial)
    if node.op == "Gemm":
        return _gemm_layer(node, macs)
    return _matmul_layer(node, macs)


def _weight_reason(node: gs.Node, index: int) -> str | None:
    tensor = node.inputs[index]
    value = graph_utils.const_value(tensor)
    if value is None:
        return None  # not a constant: not a weight at all
    if graph_utils.is_shared(tensor):
        return "weight is shared with other nodes (tied weights are not split)"
    if not np.issubdtype(value.dtype, np.floating):
        return f"weight has non-float type {value.dtype}"
    return ""


def _matmul_layer(node: gs.Node, macs: dict[str, int]) -> tuple[Layer | None, str | None]:
    right = _weight_reason(node, 1)
    left = _weight_reason(node, 0) if right is None else None
    if right is None and left is None:
        return None, None  # activation x activation (attention scores): not a layer
    if right or left:
        return None, right or left
    index = 1 if right is not None else 0
    if graph_utils.const_value(node.inputs[1 - index]) is not None:
        return None, "both operands are constants (constant-fold the model first)"
    weight = graph_utils.checked_const_input(node, index)
    if weight.ndim != 2:
        return None, f"constant operand is {weight.ndim}-D, only 2-D weights are split"
    kind = "matmul" if index == 1 else "matmul_left"
    matrix = weight if index == 1 else weight.T
    layer = Layer(node, kind, weight, node.inputs[1 - index].name, int(matrix.shape[0]))
    layer.forms["linear"] = _linear_form(matrix, macs.get(node.name, 0))
    return layer, None


def _gemm_layer(node: gs.Node, macs: dict[str, int]) -> tuple[Layer | None, str | None]:
    reason = _weight_reason(node, 1)
    if reason is None:
        return None, "Gemm's B operand is not a constant"
    if reason:
        return None, reason
    weight = graph_utils.checked_const_input(node, 1)
    matrix = weight.T if graph_utils.attr_int(node, "transB", 0) else weight
    layer = Layer(node, "gemm", weight, node.inputs[0].name, int(matrix.shape[0]))
    layer.forms["linear"] = _linear_form(matrix, macs.get(node.name, 0))
    return layer, None


def _linear_form(matrix: np.ndarray, dense: int) -> Form:
    rows, cols = matrix.shape
    vectors = max(dense / (rows * cols), 1.0) if rows * cols else 1.0
    return Form("linear", matrix.astype(np.float64), vectors * (rows + cols), vectors * rows * cols)


def _conv_layer(
    node: gs.Node, macs: dict[str, int], shapes: dict[str, list[int]], allow_spatial: bool
) -> tuple[Layer | None, str | None]:
    reason = _weight_reason(node, 1)
    if reason is None:
        return None, "Conv weight is not a constant"
    if reason:
        return None, reason
    weight = graph_utils.checked_const_input(node, 1)
    group = graph_utils.attr_int(node, "group", 1)
    if group != 1:
        kind = "depthwise" if group == weight.shape[0] else "grouped"
        return None, f"{kind} Conv (group={group}) has no channel mixing worth factoring"
    if weight.ndim < 3:
        return None, "Conv weight has no spatial axes"
    o, i, kernel = weight.shape[0], weight.shape[1], weight.shape[2:]
    pixels = max(macs.get(node.name, 0) / weight.size, 1.0)
    w64 = weight.astype(np.float64)
    layer = Layer(node, "conv", weight, node.inputs[0].name, int(i))
    ksize = int(np.prod(kernel))
    layer.forms["channel"] = Form(
        "channel", w64.reshape(o, -1).T, pixels * (i * ksize + o), pixels * weight.size
    )
    spatial = _spatial_form(node, w64, shapes, pixels) if allow_spatial else None
    if spatial is not None:
        layer.forms["spatial"] = spatial
    return layer, None


def _spatial_form(
    node: gs.Node, w64: np.ndarray, shapes: dict[str, list[int]], pixels: float
) -> Form | None:
    """Spatial form of a 2-D conv with kernel h x w (both > 1) and known input width."""
    if w64.ndim != 4 or min(w64.shape[2:]) < 2:
        return None
    in_shape = shapes.get(node.inputs[0].name)
    out_shape = shapes.get(node.outputs[0].name)
    if not in_shape or not out_shape or len(in_shape) != 4 or len(out_shape) != 4:
        return None
    auto = graph_utils.attr_str(node, "auto_pad", "NOTSET")
    if auto.startswith("SAME") and not _static_spatial(node.inputs[0]):
        return None  # pads depend on a dynamic input size
    o, i, kh, kw = w64.shape
    batch, w_in = in_shape[0], in_shape[3]
    h_out, w_out = out_shape[2], out_shape[3]
    per_rank = batch * h_out * (w_in * i * kh + w_out * o * kw)
    matrix = w64.transpose(1, 2, 0, 3).reshape(i * kh, o * kw)
    return Form("spatial", matrix, float(per_rank), pixels * w64.size)


def matrix_to_weight(layer: Layer, mode: str, matrix: np.ndarray) -> np.ndarray:
    """The dense weight (original layout and dtype) whose form `mode` is `matrix`."""
    w = layer.weight
    if layer.kind in ("matmul", "matmul_left", "gemm"):
        trans = layer.kind == "matmul_left" or (
            layer.kind == "gemm" and graph_utils.attr_int(layer.node, "transB", 0)
        )
        out = matrix.T if trans else matrix
    elif mode == "channel":
        out = matrix.T.reshape(w.shape)
    else:
        o, i, kh, kw = w.shape
        out = matrix.reshape(i, kh, o, kw).transpose(2, 0, 1, 3)
    return np.ascontiguousarray(out).astype(w.dtype)


def _static_spatial(tensor: gs.Tensor) -> bool:
    shape = tensor.shape
    return (
        shape is not None
        and len(shape) == 4
        and all(isinstance(d, int) and d > 0 for d in shape[2:])
    )
