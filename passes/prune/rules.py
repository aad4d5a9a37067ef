"""Per-op rules of the channel-group walk (passes/prune/walk.py): layers, joins, offsets.

Layers (Conv, ConvTranspose, Gemm, MatMul with a constant weight) start a new space
on their output and bind their weights; pass-through ops continue a space; Add, Mul,
Max, ... couple spaces; Concat, Split and Slice map channel offsets. Layout and
reduction ops are in passes/prune/rules_layout.py. An op with no rule blocks every
space it reads (fail closed).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_graphsurgeon as gs

from graphcomp.core import graph_utils
from graphcomp.passes.prune import rules_layout as shape_rules
from graphcomp.passes.prune import rules_reshape as index_rules
from graphcomp.passes.prune.groups import ChannelGraph
from graphcomp.passes.prune.rules_layout import dim, identity, norm_axis, rank

UNARY = frozenset(
    {
        "Relu",
        "LeakyRelu",
        "Sigmoid",
        "Tanh",
        "HardSigmoid",
        "HardSwish",
        "Elu",
        "Selu",
        "Celu",
        "Softplus",
        "Softsign",
        "Mish",
        "Gelu",
        "Erf",
        "Exp",
        "Log",
        "Sqrt",
        "Neg",
        "Abs",
        "Reciprocal",
        "Floor",
        "Ceil",
        "Round",
        "Sign",
        "Identity",
        "Cast",
        "Clip",
        "Dropout",
        "ThresholdedRelu",
        "Sin",
        "Cos",
        "Not",
        "IsNaN",
        "IsInf",
        "Swish",
    }
)
ELEMENTWISE = frozenset(
    {
        "Add",
        "Sub",
        "Mul",
        "Div",
        "Max",
        "Min",
        "Sum",
        "Mean",
        "Pow",
        "PRelu",
        "Where",
        "And",
        "Or",
        "Xor",
        "Equal",
        "Greater",
        "Less",
        "GreaterOrEqual",
        "LessOrEqual",
        "Mod",
    }
)
NORM_PARAMS = {"BatchNormalization": (1, 2, 3, 4), "InstanceNormalization": (1, 2)}


def apply_rule(cg: ChannelGraph, node: gs.Node) -> None:
    """Apply the rule of `node`'s op; block what it reads when there is none."""
    rule = _rule_for(node)
    if rule is not None:
        rule(cg, node)
        return
    for t in node.inputs:
        cg.block(
            cg.space(t),
            f"{t.name} is read by {node.op} {node.name}, which prune does not understand",
        )


def _rule_for(node: gs.Node) -> Callable[[ChannelGraph, gs.Node], object] | None:
    if node.domain not in (None, "", "ai.onnx"):
        return None
    if node.op in UNARY:
        return identity
    if node.op in ELEMENTWISE:
        return lambda cg, n: couple(cg, n, list(range(len(n.inputs))))
    if node.op in NORM_PARAMS:
        return _norm
    return RULES.get(node.op) or shape_rules.RULES.get(node.op) or index_rules.RULES.get(node.op)


def _weight_reason(cg: ChannelGraph, node: gs.Node) -> str | None:
    """Why the weights of layer `node` cannot be edited, or None."""
    weight = node.inputs[1] if len(node.inputs) > 1 else None
    if cg.value(weight) is None:
        return f"{node.name}: weight is not a constant"
    if graph_utils.is_shared(weight):
        return f"{node.name}: weight is shared with other nodes"
    if len(node.inputs) > 2 and node.inputs[2].name and cg.input_value(node, 2) is None:
        return f"{node.name}: bias is not a constant"
    return None


def _dynamic_weights(cg: ChannelGraph, node: gs.Node) -> None:
    for t in node.inputs[1:]:
        cg.block(cg.space(t), f"{t.name} is a weight or bias of {node.name}")


def _conv(cg: ChannelGraph, node: gs.Node) -> None:
    x, w = cg.space(node.inputs[0]), cg.input_value(node, 1)
    _dynamic_weights(cg, node)
    y = cg.add_space(
        node.outputs[0],
        1,
        graph_utils.channel_count(node.outputs[0]) or (w.shape[0] if w is not None else None),
    )
    group = graph_utils.attr_int(node, "group", 1)
    reason = _weight_reason(cg, node)
    if reason is None and y is None:
        reason = f"{node.name}: output channel count unknown"
    if reason is None and w is not None and y is not None:  # no reason: both are known
        if group == 1:
            cg.bind("conv", node, x, y)
            return
        if w.shape[1] == 1 and x is not None and x.size == group:
            mult = w.shape[0] // group
            cg.union(y.ids(), x.ids(np.repeat(np.arange(group), mult)))
            cg.bind("conv", node, x, y, depthwise=mult)
            return
        reason = (
            f"{node.name}: depthwise conv on channels prune does not track"
            if w.shape[1] == 1
            else f"{node.name}: grouped conv (group={group})"
        )
    reason = reason or f"{node.name}: weight is not a constant"
    cg.block(x, reason)
    cg.block(y, reason)


def _conv_transpose(cg: ChannelGraph, node: gs.Node) -> None:
    x = cg.space(node.inputs[0])
    _dynamic_weights(cg, node)
    group = graph_utils.attr_int(node, "group", 1)
    size = graph_utils.channel_count(node.outputs[0])
    y = cg.add_space(node.outputs[0], 1, size)
    reason = _weight_reason(cg, node)
    if reason is None and group != 1:
        reason = f"{node.name}: grouped ConvTranspose (group={group})"
    if reason is None and y is not None:
        cg.bind("convT", node, x, y)
        return
    cg.block(x, reason or f"{node.name}: output channel count unknown")
    cg.block(y, reason or f"{node.name}: output channel count unknown")


def _gemm(cg: ChannelGraph, node: gs.Node) -> None:
    a, b = cg.space(node.inputs[0]), cg.input_value(node, 1)
    _dynamic_weights(cg, node)
    trans_b = graph_utils.attr_int(node, "transB", 0)
    size = b.shape[0 if trans_b else 1] if b is not None and b.ndim == 2 else None
    y = cg.add_space(node.outputs[0], 1, size)
    reason = _weight_reason(cg, node) or _gemm_bias_reason(cg, node, size)
    if reason is None and y is None:
        reason = f"{node.name}: output size unknown"
    if reason is not None:
        cg.block(a, reason)
        cg.block(y, reason)
        return
    if a is not None and (graph_utils.attr_int(node, "transA", 0) or a.axis != 1):
        cg.block(a, f"{node.name}: Gemm reads its input transposed")
        a = None
    cg.bind("gemm", node, a, y)


def _gemm_bias_reason(cg: ChannelGraph, node: gs.Node, size: int | None) -> str | None:
    bias = cg.input_value(node, 2)
    if bias is None or bias.size in (1, size) and (bias.ndim < 2 or bias.shape[0] == 1):
        return None
    return f"{node.name}: Gemm bias varies over rows"


def _matmul(cg: ChannelGraph, node: gs.Node) -> None:
    a, b = cg.space(node.inputs[0]), cg.input_value(node, 1)
    reason = _weight_reason(cg, node)
    if reason is None and b is not None and b.ndim != 2:
        reason = f"{node.name}: MatMul weight is not 2-D"
    out_rank = rank(node.outputs[0])
    if reason is not None or out_rank is None or b is None:  # b is None only with a reason
        reason = reason or f"{node.name}: output rank unknown"
        cg.block(a, reason)
        cg.block(cg.space(node.inputs[1]), reason)
        return
    y = cg.add_space(node.outputs[0], out_rank - 1, b.shape[1])
    if a is not None and a.axis != a.rank - 1:
        cg.block(a, f"{node.name}: MatMul contracts an axis other than the channels")
        a = None
    if y is None:
        cg.block(a, f"{node.name}: output size unknown")
        return
    cg.bind("matmul", node, a, y)


def _norm(cg: ChannelGraph, node: gs.Node) -> None:
    x = cg.space(node.inputs[0])
    if x is not None and x.axis != 1:
        cg.block(x, f"{node.name}: {node.op} normalizes another axis than the channels")
        return
    y = identity(cg, node)
    if y is None:
        return
    for i in NORM_PARAMS[node.op]:
        value = cg.input_value(node, i)
        if value is None or value.shape != (y.size,):
            cg.block(y, f"{node.name}: parameter {i} is not a constant per channel")
            return
        cg.bind("const", node, out=y, index=i, axis=0)


def couple(cg: ChannelGraph, node: gs.Node, inputs: list[int]) -> None:
    """Elementwise (broadcasting) op: spaces on the same output axis share channels."""
    out = node.outputs[0]
    r_out = rank(out)
    spaced = [(i, s) for i in inputs if (s := cg.space(node.inputs[i]))]
    if not spaced:
        return
    axes = {s.axis + r_out - s.rank for _, s in spaced} if r_out is not None else set()
    size = dim(out, next(iter(axes))) if len(axes) == 1 else None
    if size is None:
        for _, s in spaced:
            cg.block(s, f"{node.name}: inputs carry channels on different axes")
        return
    axis = axes.pop()
    real = [(i, s) for i, s in spaced if s.size == size]
    for _, s in spaced:
        if s.size != size:
            cg.block(s, f"{node.name}: {s.size} channels broadcast against {size}")
    consts, reason = _other_inputs(cg, node, inputs, axis, size)
    y = cg.add_space(out, axis, size) if real and reason is None else None
    for _, s in real:
        if y is None:
            cg.block(s, reason or f"{node.name}: output channels cannot be followed")
        else:
            cg.same(s, y)
    for i, k in consts if y is not None else []:
        cg.bind("const", node, out=y, index=i, axis=k)


def _other_inputs(
    cg: ChannelGraph, node: gs.Node, inputs: list[int], axis: int, size: int
) -> tuple[list[tuple[int, int]], str | None]:
    """Constants to slice (input index, axis) and a reason when an input cannot follow."""
    r_out = rank(node.outputs[0]) or 0
    consts = []
    for i in inputs:
        t = node.inputs[i]
        if not t.name or cg.space(t) is not None:
            continue
        k = axis - (r_out - (rank(t) or 0))
        d = 1 if k < 0 else dim(t, k)
        if d == 1:
            continue
        if d == size and cg.value(t) is not None:
            consts.append((i, k))
            continue
        return [], f"{node.name}: channels meet {t.name}, which prune does not track"
    return consts, None


def _concat(cg: ChannelGraph, node: gs.Node) -> None:
    out = node.outputs[0]
    spaced = [s for t in node.inputs if (s := cg.space(t))]
    r_out = rank(out)
    if not spaced or r_out is None:
        for s in spaced:
            cg.block(s, f"{node.name}: output rank unknown")
        return
    axis = norm_axis(graph_utils.attr_int(node, "axis", 0), r_out)
    if all(s.axis != axis for s in spaced):
        couple(cg, node, list(range(len(node.inputs))))
        return
    dims = [d for t in node.inputs if (d := dim(t, axis)) is not None]
    y = cg.add_space(out, axis, sum(dims)) if len(dims) == len(node.inputs) else None
    if y is None or any(s.axis != axis for s in spaced):
        for s in spaced:
            cg.block(s, f"{node.name}: Concat sizes unknown or channel axes differ")
        return
    offset = 0
    for t, d in zip(node.inputs, dims, strict=True):
        s, index = cg.space(t), np.arange(offset, offset + d)
        if s is not None:
            cg.union(y.ids(index), s.ids())
        else:
            cg.block(y, f"{node.name}: joins {t.name}, which prune does not track", index)
        offset += d


def _split(cg: ChannelGraph, node: gs.Node) -> None:
    x = cg.space(node.inputs[0])
    if x is None:
        return
    if norm_axis(graph_utils.attr_int(node, "axis", 0), x.rank) != x.axis:
        for out in node.outputs:
            y = cg.add_space(out, x.axis, x.size)
            cg.same(x, y) if y is not None else cg.block(x, f"{node.name}: output unknown")
        return
    dims = [d for out in node.outputs if (d := dim(out, x.axis)) is not None]
    if len(dims) < len(node.outputs) or sum(dims) != x.size:
        cg.block(x, f"{node.name}: Split sizes unknown")
        return
    offset = 0
    names: list[str] = []
    for out, d in zip(node.outputs, dims, strict=True):
        y = cg.add_space(out, x.axis, d)
        if y is None:
            cg.block(x, f"{node.name}: output {out.name} cannot be followed")
            return
        cg.union(y.ids(), x.ids(np.arange(offset, offset + d)))
        offset, names = offset + d, [*names, y.name]
    cg.bind("split", node, x, outputs=names)


RULES: dict[str, Callable[[ChannelGraph, gs.Node], None]] = {
    "Conv": _conv,
    "ConvTranspose": _conv_transpose,
    "Gemm": _gemm,
    "MatMul": _matmul,
    "Concat": _concat,
    "Split": _split,
}
