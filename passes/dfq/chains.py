"""Find the layer pairs that cross-layer equalization can rescale exactly.

A link is `first -> path -> second`: `first` a Conv (any group) or Gemm with constant,
unshared weights, `second` a Conv/Gemm/MatMul reading the path's end as its data
input, and every node on the path positively homogeneous per channel, so that
op(x / s) = op(x) / s for s > 0: Relu, LeakyRelu, PRelu, Clip/Min with lower bound 0
(their upper bound scales with the channel, see `Link.bound`), Max/Average/global
pooling, zero Pad, Identity, Dropout, and a Flatten/Reshape to 2-D right before a
Gemm/MatMul (each channel then owns `block` = H*W consecutive features). Conv ->
depthwise -> Conv triplets are two links sharing the depthwise conv.

A layer's channels may also reach several readers (`Link.readers`): through branches
and channel-axis Concats (each reader sees the channels at an offset), with only
homogeneous ops (no clip) after the first branch: dense blocks, Inception branches.
Not a link (the reason is returned): a layer output that reaches a residual Add or
any other op through a branch, or that is a graph output, any other op on the path (Gelu,
Sigmoid, Add, BatchNormalization left unfolded...), shared or non-constant weights,
a path through a Reshape the channel mapping cannot be proven for, Gemm with transA.
Ref: Nagel et al., ICCV 2019, section 4.1.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import onnx_graphsurgeon as gs

from graphcomp.core import analysis, graph_utils, model_io
from graphcomp.measure import normal

FIRST_OPS = ("Conv", "Gemm")
SECOND_OPS = ("Conv", "Gemm", "MatMul")
HOMOGENEOUS = (
    "Relu",
    "LeakyRelu",
    "PRelu",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "Identity",
    "Dropout",
)
MAX_PATH = 16  # nodes between two layers
MAX_FAN = 256  # tensors visited from one layer through branches and Concats


@dataclasses.dataclass(frozen=True)
class Reader:
    """A layer reading `first`'s channels at `offset` of its `total` input channels."""

    node: gs.Node
    offset: int
    total: int
    block: int = 1


@dataclasses.dataclass
class Link:
    """first -> path -> readers; `bounds` are the clipping nodes (Clip/Min) on the path.

    `second` is the first reader; a plain chain has exactly one reader, at offset 0.
    """

    first: gs.Node
    second: gs.Node
    path: list[gs.Node]
    block: int
    bounds: list[gs.Node]
    readers: list[Reader] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.readers:
            self.readers = [Reader(self.second, 0, self.channels, self.block)]

    @property
    def channels(self) -> int:
        """Output channels of `first`."""
        return out_channels(self.first)


def find_links(graph: gs.Graph) -> tuple[list[Link], list[tuple[gs.Node, str]]]:
    """Every link of the graph, and (layer, reason) for each layer that starts none."""
    links, skips = [], []
    shapes = _flatten_shapes(graph)
    for node in graph_utils.nodes_of(graph, FIRST_OPS):
        link = _link_from(graph, node, shapes)
        if isinstance(link, Link):
            links.append(link)
        else:
            skips.append((node, link))
    return links, skips


def _flatten_shapes(graph: gs.Graph) -> dict[str, list]:
    """Shapes of Flatten/Reshape inputs and outputs and of Concat inputs.

    Inferred when the graph lacks them.
    """
    flats = graph_utils.nodes_of(graph, ("Flatten", "Reshape"))
    tensors = [t for n in flats for t in (n.inputs[0], n.outputs[0])]
    tensors += [t for n in graph_utils.nodes_of(graph, ("Concat",)) for t in n.inputs]
    if all(t.shape is not None for t in tensors):
        return {t.name: list(t.shape) for t in tensors}
    inferred = analysis.infer_shapes(model_io.to_model(graph), {})
    return {t.name: inferred[t.name] for t in tensors if t.name in inferred}


def _link_from(graph: gs.Graph, first: gs.Node, shapes: dict[str, list]) -> Link | str:
    if reason := _layer_reason(first):
        return reason
    tensor = first.outputs[0]
    path: list[gs.Node] = []
    bounds: list[gs.Node] = []
    for _ in range(MAX_PATH):
        node = graph_utils.only_consumer(tensor, graph)
        if node is None or node.op == "Concat":
            if graph_utils.is_graph_output(graph, tensor):
                return f"output {tensor.name} is a graph output"
            return _fan_out(graph, first, tensor, path, bounds, shapes)
        if node.op in SECOND_OPS and node.inputs[0] is tensor:
            return _finish(first, node, path, bounds, shapes)
        if reason := _path_reason(node, tensor):
            return reason
        path.append(node)
        if node.op in ("Clip", "Min"):
            bounds.append(node)
        tensor = node.outputs[0]
    return f"no layer within {MAX_PATH} nodes of {first.name}"


def _fan_out(
    graph: gs.Graph,
    first: gs.Node,
    tensor: gs.Tensor,
    path: list[gs.Node],
    bounds: list[gs.Node],
    shapes: dict[str, list],
) -> Link | str:
    """A link whose channels reach several readers through branches and Concats."""
    readers: list[Reader] = []
    frontier, seen = [(tensor, 0)], set()
    for _ in range(MAX_FAN):
        if not frontier:
            break
        t, offset = frontier.pop()
        if t.name in seen or graph_utils.is_graph_output(graph, t):
            return f"output {tensor.name} reaches {t.name} twice or as a graph output"
        seen.add(t.name)
        for node in t.outputs:
            step = _fan_step(node, t, offset, shapes)
            if isinstance(step, str):
                return f"output {tensor.name} reaches {step}"
            if isinstance(step, Reader):
                readers.append(step)
            else:
                frontier.append(step)
    if frontier or not readers:
        return f"output {tensor.name}: no readers within {MAX_FAN} tensors"
    for r in readers:
        if reason := _layer_reason(r.node):
            return f"reader {r.node.name}: {reason}"
    return Link(first, readers[0].node, path, 1, bounds, readers)


def _fan_step(
    node: gs.Node, t: gs.Tensor, offset: int, shapes: dict[str, list]
) -> Reader | tuple[gs.Tensor, int] | str:
    """What `node` does with the channels of `t` at `offset`.

    A reader, the next tensor with the channels' new offset, or why the link stops.
    """
    if node.op in SECOND_OPS and node.inputs[0] is t:
        if graph_utils.const_input(node, 1) is None:
            return f"{node.name} ({node.op} without a constant weight)"
        return Reader(node, offset, in_features(node))
    if node.op == "Concat" and graph_utils.attr_int(node, "axis", 1) == 1:
        if sum(other is t for other in node.inputs) > 1:
            return f"{node.name} (Concat reads {t.name} twice)"
        before = 0
        for other in node.inputs:
            if other is t:
                return node.outputs[0], offset + before
            dims = shapes.get(other.name)
            if not dims or len(dims) < 2 or not isinstance(dims[1], int):
                return f"{node.name} (Concat input {other.name} has unknown channels)"
            before += dims[1]
    if node.op in HOMOGENEOUS and node.inputs[0] is t and node.op != "PRelu":
        return node.outputs[0], offset
    return f"{node.name} ({node.op}) through a branch"


def _finish(
    first: gs.Node,
    second: gs.Node,
    path: list[gs.Node],
    bounds: list[gs.Node],
    shapes: dict[str, list],
) -> Link | str:
    if reason := _layer_reason(second):
        return f"next layer {second.name}: {reason}"
    flat = [n for n in path if n.op in ("Flatten", "Reshape")]
    if flat and (path[-1] is not flat[0] or len(flat) > 1 or second.op == "Conv"):
        return "Flatten/Reshape is not the last node before a Gemm/MatMul"
    block = _block(flat[0], shapes) if flat else 1
    if block is None:
        return f"{flat[0].name}: channel blocks unknown (need static C x H x W)"
    if in_features(second) != out_channels(first) * block:
        return f"{second.name} reads {in_features(second)} features, not {out_channels(first)}"
    if second.op == "MatMul" and graph_utils.checked_const_input(second, 1).ndim != 2:
        return f"{second.name}: MatMul weight is not 2-D"
    return Link(first, second, path, block, bounds)


def _layer_reason(node: gs.Node) -> str | None:
    weight = node.inputs[1] if len(node.inputs) > 1 else None
    if graph_utils.const_value(weight) is None:
        return "weight is not a constant"
    if graph_utils.is_shared(weight):
        return "weight is shared with other nodes"
    bias = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2].name else None
    if bias is not None and (graph_utils.const_value(bias) is None or graph_utils.is_shared(bias)):
        return "bias is not a constant used by this node alone"
    if node.op == "Gemm" and graph_utils.attr_int(node, "transA", 0):
        return "Gemm with transA"
    if node.op == "Gemm" and not _gemm_bias_per_column(node):
        return "Gemm bias varies over rows"
    return None


def _gemm_bias_per_column(node: gs.Node) -> bool:
    bias = graph_utils.const_input(node, 2)
    return bias is None or bias.ndim < 2 or bias.shape[0] == 1


def _path_reason(node: gs.Node, tensor: gs.Tensor) -> str | None:
    if node.inputs[0] is not tensor:
        return f"{node.name} ({node.op}) reads the channels as a side input"
    if node.op in HOMOGENEOUS:
        if node.op == "PRelu" and graph_utils.const_input(node, 1) is None:
            return f"{node.name}: PRelu slope is not a constant"
        return None
    if node.op in ("Flatten", "Reshape"):
        return None
    if node.op == "Pad":
        value = graph_utils.const_input(node, 2)
        mode = graph_utils.attr_str(node, "mode", "constant")
        ok = mode == "constant" and (value is None or float(np.max(np.abs(value))) == 0.0)
        return None if ok else f"{node.name}: Pad is not zero-constant"
    if node.op in ("Clip", "Min"):
        lo, _ = bound_of(node) or (None, None)
        return None if lo == 0.0 else f"{node.name}: {node.op} lower bound is not 0"
    return f"path goes through {node.op} ({node.name}), which does not commute with scaling"


def bound_of(node: gs.Node) -> tuple[float, np.ndarray] | None:
    """(lower bound, upper bound per channel or scalar) of a Clip or a Min-by-constant.

    A Min by a constant must follow a Relu (checked by the caller's path order) to
    have lower bound 0; here it reports lower bound 0 only if its input comes from a
    Relu or a Clip with lower bound 0.
    """
    if node.op == "Clip":
        limits = normal.activation_bounds(node)
        return None if limits is None else (limits[0], np.asarray(limits[1], np.float64))
    if node.op == "Min" and len(node.inputs) == 2:
        value = graph_utils.const_input(node, 1)
        prev = graph_utils.producer(node.inputs[0])
        if value is None or prev is None or prev.op != "Relu":
            return None
        return 0.0, value.astype(np.float64)
    return None


def _block(flat: gs.Node, shapes: dict[str, list]) -> int | None:
    shape, out = shapes.get(flat.inputs[0].name), shapes.get(flat.outputs[0].name)
    if shape is None or len(shape) < 2 or out is None or len(out) != 2:
        return None
    dims = shape[1:]
    if any(not isinstance(d, int) or d <= 0 for d in dims):
        return None
    if flat.op == "Flatten" and graph_utils.attr_int(flat, "axis", 1) != 1:
        return None
    block = math.prod(dims[1:])
    return block if flat.op == "Flatten" or out[1] == dims[0] * block else None


def out_channels(node: gs.Node) -> int:
    """Output channels of a Conv/Gemm (its weight's output axis)."""
    w = graph_utils.checked_const_input(node, 1)
    if node.op == "Conv":
        return int(w.shape[0])
    return int(w.shape[0] if graph_utils.attr_int(node, "transB", 0) else w.shape[1])


def in_features(node: gs.Node) -> int:
    """Input channels/features a Conv/Gemm/MatMul reads."""
    w = graph_utils.checked_const_input(node, 1)
    if node.op == "Conv":
        return int(w.shape[1]) * graph_utils.attr_int(node, "group", 1)
    if node.op == "Gemm" and graph_utils.attr_int(node, "transB", 0):
        return int(w.shape[1])
    return int(w.shape[0])
