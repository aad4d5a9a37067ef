"""Remove channels: slice every weight, constant and attribute a removal touches.

Given a keep mask per space (passes/prune/groups.py), each binding is edited:
Conv weight axis 0 (outputs) and 1 (inputs; a depthwise conv gets group = channels
kept), ConvTranspose axes 1 and 0, Gemm/MatMul weight rows and columns and bias,
per-channel constants of BatchNormalization, InstanceNormalization, PRelu and
elementwise ops, Split sizes, Slice bounds, Reshape targets and Resize sizes. Arrays
are never written in place: each edit assigns a new constant. Tensor shapes of the
edited spaces are updated too; the pipeline re-infers the rest.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_graphsurgeon as gs

from graphcomp.core import graph_utils
from graphcomp.passes.prune.groups import Binding, ChannelGraph

Keep = dict[str, np.ndarray]
LAYERS = ("conv", "convT", "gemm", "matmul")


def remove(cg: ChannelGraph, keep: Keep) -> dict[str, tuple[int, int, str]]:
    """Edit the graph for `keep`; per edited layer name: (params before, after, detail)."""
    changed = {name for name, mask in keep.items() if not mask.all()}
    edits: dict[str, tuple[int, int, str]] = {}
    for b in cg.bindings:
        spaces = {b.inp, b.out, *b.extra.get("outputs", [])}
        if not spaces & changed:
            continue
        before = _params(b.node)
        EDITS[b.kind](cg, b, keep)
        if b.kind in LAYERS:
            edits[b.node.name] = (before, _params(b.node), _detail(b, keep))
    for name in changed:
        sp = cg.spaces[name]
        if sp.tensor.shape is not None:
            shape = list(sp.tensor.shape)
            shape[sp.axis] = int(keep[name].sum())
            sp.tensor.shape = shape
    return edits


def _params(node: gs.Node) -> int:
    return sum(
        int(np.prod(v.shape))
        for i in range(1, len(node.inputs))
        if (v := graph_utils.const_input(node, i)) is not None
    )


def _detail(b: Binding, keep: Keep) -> str:
    parts = []
    if b.inp is not None and not keep[b.inp].all():
        parts.append(f"inputs {keep[b.inp].size} -> {int(keep[b.inp].sum())}")
    if b.out is not None and not keep[b.out].all():
        parts.append(f"outputs {keep[b.out].size} -> {int(keep[b.out].sum())}")
    return ", ".join(parts)


def _mask(keep: Keep, name: str | None, size: int) -> np.ndarray:
    return keep[name] if name is not None else np.ones(size, dtype=bool)


def _kept(keep: Keep, name: str | None) -> np.ndarray:
    """keep[name] of a space the binding always names (KeyError, a bug, if it names none)."""
    if name is None:
        raise KeyError(name)
    return keep[name]


def _slice_bias(graph: gs.Graph, node: gs.Node, index: int, out: np.ndarray) -> None:
    bias = graph_utils.const_input(node, index)
    if bias is None or bias.size != out.size:
        return
    axis = bias.ndim - 1
    graph_utils.set_const_input(graph, node, index, np.compress(out, bias, axis=axis))


def _conv(cg: ChannelGraph, b: Binding, keep: Keep) -> None:
    graph = cg.graph
    node, w = b.node, cg.checked_input_value(b.node, 1)
    out = _mask(keep, b.out, w.shape[0])
    new = w[out]
    if b.extra.get("depthwise"):
        node.attrs["group"] = int(_kept(keep, b.inp).sum())
    elif b.inp is not None:
        new = new[:, keep[b.inp]]
    graph_utils.set_const_input(graph, node, 1, new)
    _slice_bias(graph, node, 2, out)


def _conv_transpose(cg: ChannelGraph, b: Binding, keep: Keep) -> None:
    graph = cg.graph
    node, w = b.node, cg.checked_input_value(b.node, 1)
    out = _mask(keep, b.out, w.shape[1])
    new = w[_mask(keep, b.inp, w.shape[0])][:, out]
    graph_utils.set_const_input(graph, node, 1, new)
    _slice_bias(graph, node, 2, out)


def _gemm(cg: ChannelGraph, b: Binding, keep: Keep) -> None:
    graph = cg.graph
    node, w = b.node, cg.checked_input_value(b.node, 1)
    trans = bool(graph_utils.attr_int(node, "transB", 0)) and b.kind == "gemm"
    rows, cols = (w.shape[1], w.shape[0]) if trans else w.shape
    inp, out = _mask(keep, b.inp, rows), _mask(keep, b.out, cols)
    new = w[out][:, inp] if trans else w[inp][:, out]
    graph_utils.set_const_input(graph, node, 1, new)
    if b.kind == "gemm":
        _slice_bias(graph, node, 2, out)


def _const(cg: ChannelGraph, b: Binding, keep: Keep) -> None:
    graph = cg.graph
    index, axis = b.extra["index"], b.extra["axis"]
    value = cg.input_value(b.node, index)
    mask = _kept(keep, b.out)
    if value is not None and value.shape[axis] == mask.size:
        graph_utils.set_const_input(graph, b.node, index, np.compress(mask, value, axis=axis))


def _split(cg: ChannelGraph, b: Binding, keep: Keep) -> None:
    graph = cg.graph
    node = b.node
    sizes = np.array([int(keep[name].sum()) for name in b.extra["outputs"]], dtype=np.int64)
    node.attrs.pop("num_outputs", None)
    if "split" in node.attrs or (graph.opset or 13) < 13:
        node.attrs["split"] = sizes.tolist()
    else:
        graph_utils.set_const_input(graph, node, 1, sizes)


def _slice(cg: ChannelGraph, b: Binding, keep: Keep) -> None:
    graph = cg.graph
    node, mask, pos = b.node, _kept(keep, b.inp), b.extra["pos"]
    begin = int(mask[: b.extra["begin"]].sum())
    end = begin + int(mask[b.extra["begin"] : b.extra["end"]].sum())
    for slot, value in ((1, begin), (2, end)):
        key = "starts" if slot == 1 else "ends"
        if key in node.attrs:
            entries = list(node.attrs[key])
            entries[pos] = value
            node.attrs[key] = entries
        else:
            values = cg.checked_input_value(node, slot).copy()
            values[pos] = value
            graph_utils.set_const_input(graph, node, slot, values)


def _reshape(cg: ChannelGraph, b: Binding, keep: Keep) -> None:
    graph = cg.graph
    target = cg.input_value(b.node, 1)
    axis = b.extra["axis"]
    if target is not None and target[axis] > 0:
        target = target.copy()
        target[axis] = int(_kept(keep, b.out).sum())
        graph_utils.set_const_input(graph, b.node, 1, target)


def _resize(cg: ChannelGraph, b: Binding, keep: Keep) -> None:
    graph = cg.graph
    index, pos = b.extra["index"], b.extra["pos"]
    sizes = cg.checked_input_value(b.node, index).copy()
    sizes[pos] = int(_kept(keep, b.out).sum())
    graph_utils.set_const_input(graph, b.node, index, sizes)


EDITS: dict[str, Callable[[ChannelGraph, Binding, Keep], None]] = {
    "conv": _conv,
    "convT": _conv_transpose,
    "gemm": _gemm,
    "matmul": _gemm,
    "const": _const,
    "split": _split,
    "slice": _slice,
    "reshape": _reshape,
    "resize": _resize,
}
