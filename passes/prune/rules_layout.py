"""Per-op rules of the channel-group walk: layout, reduction and indexing ops.

Each rule follows the channel axis through the op (Transpose moves it, Squeeze and
Reduce with keepdims=0 shift it, Flatten/Reshape fold it into blocks of features)
or blocks the space with the reason when the op mixes channels (a reduction or
softmax over them, a Reshape that splits them, bounds or sizes computed at run time).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_graphsurgeon as gs

from graphcomp.core import graph_utils
from graphcomp.passes.prune.groups import ChannelGraph, Space

INT_LIMIT = 2**62  # Slice ends beyond this mean "to the end"
POOLS = ("MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool")
REDUCE = (
    "ReduceMean",
    "ReduceSum",
    "ReduceMax",
    "ReduceMin",
    "ReduceProd",
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "ReduceSumSquare",
)


def rank(t: gs.Tensor | None) -> int | None:
    """Rank of a tensor (constants included), None when unknown."""
    value = graph_utils.const_value(t)
    if value is not None:
        return value.ndim
    return None if t is None or t.shape is None else len(t.shape)


def dim(t: gs.Tensor, k: int) -> int | None:
    """Static size of axis `k` of `t`, None when unknown."""
    value = graph_utils.const_value(t)
    shape = value.shape if value is not None else t.shape
    if shape is None or not 0 <= k < len(shape) or not isinstance(shape[k], (int, np.integer)):
        return None
    return int(shape[k]) if shape[k] >= 0 else None


def norm_axis(axis: int, r: int) -> int:
    """`axis` made non-negative for rank `r`."""
    return axis + r if axis < 0 else axis


def identity(cg: ChannelGraph, node: gs.Node, out_axis: int | None = None) -> Space | None:
    """Continue the space of input 0 on output 0 (same channels, axis `out_axis`)."""
    x = cg.space(node.inputs[0])
    if x is None:
        return None
    extra = [t for t in node.inputs[1:] if cg.space(t)]
    used = [t for t in node.outputs[1:] if t.outputs or graph_utils.is_graph_output(cg.graph, t)]
    if extra or used:
        cg.block(x, f"{node.name}: {node.op} with channel inputs or extra outputs in use")
        return None
    y = cg.add_space(node.outputs[0], x.axis if out_axis is None else out_axis, x.size)
    if y is None or dim(node.outputs[0], y.axis) not in (None, x.size):
        cg.block(x, f"{node.name}: output channels cannot be followed")
        return None
    cg.same(x, y)
    return y


def _axes(cg: ChannelGraph, node: gs.Node, r: int) -> list[int] | None:
    """The `axes` of a node from its attribute or input 1, non-negative; None if absent."""
    value: list[int] | np.ndarray | None = graph_utils.attr_ints(node, "axes")
    if value is None and len(node.inputs) > 1 and node.inputs[1].name:
        value = cg.input_value(node, 1)
        if value is None:
            return None
    return None if value is None else [norm_axis(int(a), r) for a in np.ravel(value)]


def _pool(cg: ChannelGraph, node: gs.Node) -> None:
    x = cg.space(node.inputs[0])
    if x is not None and x.axis != 1:
        cg.block(x, f"{node.name}: pooling over the channel axis")
        return
    identity(cg, node)


def _transpose(cg: ChannelGraph, node: gs.Node) -> None:
    x = cg.space(node.inputs[0])
    if x is None:
        return
    perm = graph_utils.attr_ints(node, "perm", range(x.rank - 1, -1, -1))
    identity(cg, node, perm.index(x.axis))


def _squeeze(cg: ChannelGraph, node: gs.Node) -> None:
    x = cg.space(node.inputs[0])
    if x is None:
        return
    axes = _axes(cg, node, x.rank)
    if axes is None and (node.inputs[0].shape is None or len(node.inputs) > 1):
        cg.block(x, f"{node.name}: Squeeze axes unknown")
        return
    if axes is None:
        axes = [i for i, d in enumerate(node.inputs[0].shape) if d == 1]
    if x.axis in axes:
        cg.block(x, f"{node.name}: squeezes the channel axis")
        return
    identity(cg, node, x.axis - sum(a < x.axis for a in axes))


def _unsqueeze(cg: ChannelGraph, node: gs.Node) -> None:
    x = cg.space(node.inputs[0])
    if x is None:
        return
    out_rank = rank(node.outputs[0])
    axes = _axes(cg, node, out_rank) if out_rank is not None else None
    if axes is None or out_rank is None:
        cg.block(x, f"{node.name}: Unsqueeze axes unknown")
        return
    kept = [p for p in range(out_rank) if p not in axes]
    identity(cg, node, kept[x.axis])


def _reduce(cg: ChannelGraph, node: gs.Node) -> None:
    x = cg.space(node.inputs[0])
    if x is None:
        return
    axes = _axes(cg, node, x.rank)
    if not axes and not graph_utils.attr_int(node, "noop_with_empty_axes", 0):
        axes = list(range(x.rank))
    if x.axis in (axes or []):
        cg.block(x, f"{node.name}: {node.op} reduces over the channels")
        return
    keep = graph_utils.attr_int(node, "keepdims", 1)
    identity(cg, node, x.axis if keep else x.axis - sum(a < x.axis for a in axes or []))


def _softmax(cg: ChannelGraph, node: gs.Node) -> None:
    x = cg.space(node.inputs[0])
    if x is None:
        return
    old = (cg.graph.opset or 13) < 13
    axis = norm_axis(graph_utils.attr_int(node, "axis", 1 if old else -1), x.rank)
    if (
        x.axis == axis
        or (old and x.axis > axis)
        or (node.op == "LayerNormalization" and x.axis >= axis)
    ):
        cg.block(x, f"{node.name}: {node.op} mixes the channels")
        return
    identity(cg, node)


def _gather(cg: ChannelGraph, node: gs.Node) -> None:
    x, idx = cg.space(node.inputs[0]), cg.input_value(node, 1)
    if x is None:
        return
    axis = norm_axis(graph_utils.attr_int(node, "axis", 0), x.rank)
    if axis == x.axis or idx is None:
        cg.block(x, f"{node.name}: Gather picks channels or has run-time indices")
        return
    identity(cg, node, x.axis if x.axis < axis else x.axis + idx.ndim - 1)


def _pad(cg: ChannelGraph, node: gs.Node) -> None:
    x = cg.space(node.inputs[0])
    if x is None:
        return
    pads: list[int] | np.ndarray | None = graph_utils.attr_ints(node, "pads")
    if pads is None:
        pads = cg.input_value(node, 1)
    axes = (
        cg.input_value(node, 3)
        if len(node.inputs) > 3 and node.inputs[3].name
        else np.arange(x.rank)
    )
    if pads is None or axes is None:
        cg.block(x, f"{node.name}: Pad amounts computed at run time")
        return
    amounts, padded = np.ravel(pads), [norm_axis(int(a), x.rank) for a in np.ravel(axes)]
    if x.axis in padded:
        j = padded.index(x.axis)
        if amounts[j] != 0 or amounts[j + len(padded)] != 0:
            cg.block(x, f"{node.name}: pads the channel axis")
            return
    identity(cg, node)


def _resize(cg: ChannelGraph, node: gs.Node) -> None:
    x = cg.space(node.inputs[0])
    if x is None:
        return
    pos = _resize_position(node, x)
    scale_at = 1 if node.op == "Upsample" else 2
    sizes_given = len(node.inputs) > 3 and node.inputs[3].name
    values: np.ndarray | list[float] | None = cg.input_value(node, 3 if sizes_given else scale_at)
    if values is None and node.op == "Upsample":
        values = graph_utils.attr_floats(node, "scales")
    if pos is not None and values is None:
        cg.block(x, f"{node.name}: resize scales or sizes computed at run time")
        return
    if (
        pos is not None
        and not sizes_given
        and values is not None  # always, given pos (checked above)
        and float(np.ravel(values)[pos]) != 1.0
    ):
        cg.block(x, f"{node.name}: resizes the channel axis")
        return
    y = identity(cg, node)
    if y is not None and pos is not None and sizes_given:
        cg.bind("resize", node, x, y, index=3, pos=pos)


def _resize_position(node: gs.Node, x: Space) -> int | None:
    """Index of the channel axis in Resize's scales/sizes (None: the op leaves it alone)."""
    axes = graph_utils.attr_ints(node, "axes")
    if axes is None:
        return x.axis
    axes = [norm_axis(a, x.rank) for a in axes]
    return axes.index(x.axis) if x.axis in axes else None


def _shape(cg: ChannelGraph, node: gs.Node) -> None:
    x = cg.space(node.inputs[0])
    if x is None:
        return
    start = norm_axis(graph_utils.attr_int(node, "start", 0), x.rank)
    end = graph_utils.attr_int(node, "end")
    end = x.rank if end is None else min(norm_axis(end, x.rank), x.rank)
    if not start <= x.axis < end:
        return
    out = node.outputs[0]
    readers = graph_utils.consumers(out)
    if graph_utils.is_graph_output(cg.graph, out) or not all(
        _skips_position(cg, r, x.axis - start, end - start) for r in readers
    ):
        cg.block(x, f"{node.name}: the channel count is read at run time")


def _skips_position(cg: ChannelGraph, reader: gs.Node, pos: int, length: int) -> bool:
    """True when `reader` of a shape vector provably ignores entry `pos`."""
    if reader.op == "Gather" and graph_utils.attr_int(reader, "axis", 0) == 0:
        idx = cg.input_value(reader, 1)
        return idx is not None and pos not in [norm_axis(int(i), length) for i in np.ravel(idx)]
    if reader.op == "Slice":
        params = slice_params(cg, reader, 1)
        if params is None or params[3] != [1]:
            return False
        begin, end = clamp_range(params[0][0], params[1][0], length)
        return not begin <= pos < end
    return False


def slice_params(cg: ChannelGraph, node: gs.Node, r: int) -> tuple[list[int], ...] | None:
    """(starts, ends, axes, steps) of a Slice as int lists (axes non-negative), or None."""
    if "starts" in node.attrs:
        starts, ends = list(node.attrs["starts"]), list(node.attrs["ends"])
        axes, steps = node.attrs.get("axes"), None
    else:
        values = [cg.input_value(node, i) for i in range(1, 5)]
        if (
            values[0] is None
            or values[1] is None
            or any(
                v is None and i < len(node.inputs) and node.inputs[i].name
                for i, v in zip(range(3, 5), values[2:], strict=True)
            )
        ):
            return None
        starts, ends = values[0].tolist(), values[1].tolist()
        axes, steps = values[2], values[3]
    axis_list = (
        list(range(len(starts))) if axes is None else [norm_axis(int(a), r) for a in np.ravel(axes)]
    )
    step_list = [1] * len(starts) if steps is None else [int(s) for s in np.ravel(steps)]
    return [int(s) for s in starts], [int(e) for e in ends], axis_list, step_list


def clamp_range(start: int, end: int, size: int) -> tuple[int, int]:
    """[start, end) of a step-1 slice over `size` entries, clamped as ONNX does."""
    start = start + size if start < 0 else start
    end = size if end >= INT_LIMIT else (end + size if end < 0 else end)
    return min(max(start, 0), size), min(max(end, 0), size)


RULES: dict[str, Callable[[ChannelGraph, gs.Node], None]] = {
    **{op: _pool for op in POOLS},
    **{op: _reduce for op in REDUCE},
    "Transpose": _transpose,
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Softmax": _softmax,
    "LogSoftmax": _softmax,
    "Hardmax": _softmax,
    "LayerNormalization": _softmax,
    "Gather": _gather,
    "Pad": _pad,
    "Resize": _resize,
    "Upsample": _resize,
    "Shape": _shape,
}
