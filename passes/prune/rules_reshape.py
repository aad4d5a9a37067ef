"""Per-op rules of the channel-group walk: Slice, Flatten and Reshape (channel to feature maps).

Slice on the channel axis (step 1) maps output channel i to input channel start + i.
Flatten and Reshape that fold C x H x W into features map channel c to the H*W
consecutive features c*H*W .. (c+1)*H*W - 1 of the consumer (more generally to
output index c*q .. c*q + q - 1 of the output axis that starts where the channel axis
starts). They need static shapes; a Reshape that splits the channel axis (heads,
channel shuffle) or merges it into earlier axes blocks the group.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from graphcomp.core import graph_utils
from graphcomp.passes.prune.groups import ChannelGraph, Space
from graphcomp.passes.prune.rules_layout import clamp_range, identity, norm_axis, slice_params

Dims = Sequence[Any]  # a tensor's dims: ints, or str / None where dynamic


def _slice(cg: ChannelGraph, node: gs.Node) -> None:
    x = cg.space(node.inputs[0])
    if x is None:
        return
    params = slice_params(cg, node, x.rank)
    if params is None:
        cg.block(x, f"{node.name}: Slice bounds computed at run time")
        return
    starts, ends, axes, steps = params
    if x.axis not in axes:
        identity(cg, node)
        return
    j = axes.index(x.axis)
    begin, end = clamp_range(starts[j], ends[j], x.size)
    if steps[j] != 1 or end <= begin:
        cg.block(x, f"{node.name}: Slice of the channels with step {steps[j]} or empty")
        return
    y = cg.add_space(node.outputs[0], x.axis, end - begin)
    if y is None:
        cg.block(x, f"{node.name}: output channels cannot be followed")
        return
    cg.union(y.ids(), x.ids(np.arange(begin, end)))
    cg.bind("slice", node, x, y, pos=j, begin=begin, end=end)


def _static(dims: Sequence[object]) -> bool:
    return all(isinstance(d, (int, np.integer)) and d >= 0 for d in dims)


def _flatten(cg: ChannelGraph, node: gs.Node) -> None:
    x = cg.space(node.inputs[0])
    if x is None:
        return
    shape = list(node.inputs[0].shape)
    axis = norm_axis(graph_utils.attr_int(node, "axis", 1), x.rank)
    if x.axis < axis or not _static(shape[axis:]):
        cg.block(x, f"{node.name}: Flatten merges the channels into rows or H, W unknown")
        return
    outer = int(np.prod(shape[axis : x.axis], dtype=np.int64))
    inner = int(np.prod(shape[x.axis + 1 :], dtype=np.int64))
    _fold(cg, node, x, 1, outer, inner)


def _fold(cg: ChannelGraph, node: gs.Node, x: Space, out_axis: int, outer: int, inner: int) -> None:
    """Output axis `out_axis` holds `outer` copies of [C blocks of `inner` features]."""
    y = cg.add_space(node.outputs[0], out_axis, outer * x.size * inner)
    if y is None:
        cg.block(x, f"{node.name}: too many features to track")
        return
    channel = np.broadcast_to(np.arange(x.size)[None, :, None], (outer, x.size, inner))
    cg.union(y.ids(np.arange(y.size)), x.ids(channel.ravel()))
    if out_axis != 1 or node.op != "Flatten":
        cg.bind("reshape", node, x, y, axis=out_axis, per_channel=inner * outer)


def _reshape(cg: ChannelGraph, node: gs.Node) -> None:
    x = cg.space(node.inputs[0])
    if x is None:
        return
    target = cg.input_value(node, 1)
    dst = node.outputs[0].shape
    if target is None:
        target, dst = _batch_view(cg, node)
        if dst is not None and node.outputs[0].shape is None:
            node.outputs[0].shape = dst
    found = _reshape_map(node.inputs[0].shape, dst, x.axis, x.size)
    if target is None or isinstance(found, str):
        cg.block(
            x,
            f"{node.name}: "
            + (found if isinstance(found, str) else "Reshape target computed at run time"),
        )
        return
    k, per_channel = found
    zeros = [i for i, v in enumerate(np.ravel(target)) if v == 0]
    if (
        zeros
        and (
            graph_utils.attr_int(node, "allowzero", 0)
            or x.axis in zeros
            and (x.axis != k or per_channel != 1)
            or k in zeros
            and k != x.axis
        )
        or (cg.input_value(node, 1) is None and target[k] != -1)
    ):
        cg.block(x, f"{node.name}: Reshape copies the channel count to another axis")
        return
    if per_channel == 1 and k == x.axis:
        y = identity(cg, node, k)
        if y is not None:
            cg.bind("reshape", node, x, y, axis=k, per_channel=1)
        return
    _fold(cg, node, x, k, 1, per_channel)


def _batch_view(cg: ChannelGraph, node: gs.Node) -> tuple[np.ndarray | None, Dims | None]:
    """Target and output dims of `x.view(x.size(0), ...)`, else (None, None).

    The target is a Concat of constants and the input's own dynamic batch size
    (Shape -> Gather 0 -> Unsqueeze).
    """
    maker, src = graph_utils.producer(node.inputs[1]), node.inputs[0].shape
    if (
        maker is None
        or maker.op != "Concat"
        or src is None
        or _static(src[:1])
        or not _static(src[1:])
    ):
        return None, None
    entries: list[int] = []
    for part in maker.inputs:
        value = cg.value(part)
        if value is None and _is_batch_size(cg, part, node.inputs[0]) and not entries:
            entries.append(0)
        elif value is not None:
            entries += [int(v) for v in np.ravel(value)]
        else:
            return None, None
    if not entries or entries[0] != 0 or entries[1:].count(-1) > 1 or 0 in entries[1:]:
        return None, None
    known = int(np.prod([e for e in entries[1:] if e != -1], dtype=np.int64))
    total = int(np.prod(src[1:], dtype=np.int64))
    if known <= 0 or total % known:
        return None, None
    dst = [src[0], *[total // known if e == -1 else e for e in entries[1:]]]
    return np.array(entries, dtype=np.int64), dst


def _is_batch_size(cg: ChannelGraph, part: gs.Tensor, data: gs.Tensor) -> bool:
    """True when `part` is Unsqueeze(Gather(Shape(t), 0)) with t's dim 0 the batch."""
    node = graph_utils.producer(part)
    if node is not None and node.op == "Unsqueeze":
        node = graph_utils.producer(node.inputs[0])
    if node is None or node.op != "Gather":
        return False
    index = cg.input_value(node, 1)
    if index is None or np.ravel(index).tolist() != [0]:
        return False
    shape = graph_utils.producer(node.inputs[0])
    if shape is None or shape.op != "Shape" or graph_utils.attr_int(shape, "start", 0) != 0:
        return False
    source = shape.inputs[0].shape  # `data` itself, or the graph input (the same batch)
    return shape.inputs[0] is data or bool(source) and not _static(source[:1])


def _reshape_map(src: Dims | None, dst: Dims | None, axis: int, size: int) -> tuple[int, int] | str:
    """(output axis k, features per channel q) of a Reshape, or why it cannot be mapped."""
    if src is None or dst is None:
        return "Reshape shapes unknown"
    src, dst, start = list(src), list(dst), 0
    if src and dst and not _static(src[:1]):
        if _static(dst[:1]):
            return "Reshape moves the dynamic batch axis"
        start = 1
    if axis < start or not _static(src[start:]) or not _static(dst[start:]):
        return "Reshape shapes are not static"
    if np.prod(src[start:], dtype=np.int64) != np.prod(dst[start:], dtype=np.int64):
        return "Reshape moves the dynamic batch axis"
    prefix = int(np.prod(src[start:axis], dtype=np.int64))
    acc, k = 1, start
    while k < len(dst) and acc < prefix:
        acc, k = acc * int(dst[k]), k + 1
    while k < len(dst) and dst[k] == 1 and size != 1:
        k += 1
    inner = int(np.prod(src[axis + 1 :], dtype=np.int64))
    if acc != prefix or k >= len(dst) or dst[k] % size or inner % (dst[k] // size):
        return "Reshape splits or merges the channel axis"
    return k, int(dst[k]) // size


RULES: dict[str, Callable[[ChannelGraph, gs.Node], None]] = {
    "Slice": _slice,
    "Flatten": _flatten,
    "Reshape": _reshape,
}
