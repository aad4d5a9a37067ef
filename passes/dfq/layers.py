"""Per-channel views of Conv/Gemm/MatMul weights for the dfq passes.

Output side (a producing layer's channel c): Conv weight row c, Gemm column c of the
product (row c of B when transB). Input side (a consuming layer's channel c, with
`block` consecutive features per channel after a Flatten): Conv input channel c is
column c mod (C_in / group) of the rows of group c // (C_in / group); Gemm/MatMul
rows c*block .. (c+1)*block - 1 of the (K x N) weight. All math is in float64 on new
arrays; nothing is written in place.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphcomp.core import graph_utils


def _kn(node: gs.Node, w: np.ndarray) -> np.ndarray:
    """Gemm/MatMul weight as K x N (input features x outputs)."""
    return w.T if node.op == "Gemm" and graph_utils.attr_int(node, "transB", 0) else w


def out_rows(node: gs.Node, w: np.ndarray) -> np.ndarray:
    """The weight as (output channels, everything else)."""
    if node.op == "Conv":
        return w.reshape(w.shape[0], -1)
    return _kn(node, w).T


def out_ranges(node: gs.Node, w: np.ndarray) -> np.ndarray:
    """Max |w| per output channel."""
    return np.abs(out_rows(node, w)).max(axis=1)


def scale_out(node: gs.Node, w: np.ndarray, factor: np.ndarray) -> np.ndarray:
    """Weight with output channel c multiplied by factor[c]."""
    if node.op == "Conv":
        return w * factor.reshape(-1, *([1] * (w.ndim - 1)))
    if graph_utils.attr_int(node, "transB", 0):
        return w * factor[:, None]
    return w * factor[None, :]


def in_groups(node: gs.Node, w: np.ndarray, channels: int, block: int) -> np.ndarray:
    """|w| arranged as (input channel, everything that channel touches)."""
    a = np.abs(w)
    if node.op == "Conv":
        group = graph_utils.attr_int(node, "group", 1)
        cin_g = w.shape[1]
        per = a.reshape(group, w.shape[0] // group, cin_g, -1)  # g, out_g, in_g, k
        return per.transpose(0, 2, 1, 3).reshape(channels, -1)
    return _kn(node, a).reshape(channels, -1)


def in_ranges(node: gs.Node, w: np.ndarray, channels: int, block: int) -> np.ndarray:
    """Max |w| over everything input channel c touches."""
    return in_groups(node, w, channels, block).max(axis=1)


def scale_in(node: gs.Node, w: np.ndarray, factor: np.ndarray, block: int) -> np.ndarray:
    """Weight with input channel c (its `block` features) multiplied by factor[c]."""
    if node.op == "Conv":
        group = graph_utils.attr_int(node, "group", 1)
        cin_g = w.shape[1]
        f = factor.reshape(group, 1, cin_g)  # per group: the columns of its rows
        grouped = w.reshape(group, w.shape[0] // group, cin_g, -1) * f[..., None]
        return grouped.reshape(w.shape)
    per_feature = np.repeat(factor, block)
    if node.op == "Gemm" and graph_utils.attr_int(node, "transB", 0):
        return w * per_feature[None, :]
    return w * per_feature[:, None]


def input_sums(node: gs.Node, w: np.ndarray, channels: int, block: int) -> np.ndarray:
    """(outputs, input channels): weight summed over each channel's kernel / block.

    Multiplying by a per-input-channel constant vector gives the output shift a
    constant input shift causes (ignoring zero padding at the borders).
    """
    if node.op == "Conv":
        group = graph_utils.attr_int(node, "group", 1)
        cout, cin_g = w.shape[0], w.shape[1]
        sums = w.reshape(cout, cin_g, -1).sum(axis=2)  # out, in_g
        full = np.zeros((cout, channels))
        out_g = cout // group
        for g in range(group):
            full[g * out_g : (g + 1) * out_g, g * cin_g : (g + 1) * cin_g] = sums[
                g * out_g : (g + 1) * out_g
            ]
        return full
    kn = _kn(node, w)
    return kn.reshape(channels, block, -1).sum(axis=1).T


def alpha(node: gs.Node) -> float:
    """Gemm's alpha (1 for other ops): the weight's effective multiplier."""
    return graph_utils.attr_float(node, "alpha", 1.0) if node.op == "Gemm" else 1.0


def bias_of(node: gs.Node, channels: int) -> np.ndarray:
    """The layer's effective bias per output channel (Gemm beta applied), float64."""
    bias = graph_utils.const_input(node, 2)
    if bias is None:
        return np.zeros(channels)
    b = bias.astype(np.float64).reshape(-1)
    if node.op == "Gemm":
        b = b * graph_utils.attr_float(node, "beta", 1.0)
    return np.broadcast_to(b, (channels,)).copy()


def set_bias(graph: gs.Graph, node: gs.Node, bias: np.ndarray, dtype: np.dtype) -> None:
    """Store `bias` (effective, per output channel) as the layer's bias input."""
    if node.op == "Gemm":
        node.attrs["beta"] = 1.0
    graph_utils.set_const_input(graph, node, 2, bias.astype(dtype))


def out_channels_of(node: gs.Node) -> int:
    """Output channels of a Conv/Gemm/MatMul from its weight."""
    w = graph_utils.checked_const_input(node, 1)
    if node.op == "Conv":
        return int(w.shape[0])
    return int(_kn(node, w).shape[1])


def in_features_of(node: gs.Node, w: np.ndarray) -> int:
    """Input features (channels) a Conv/Gemm/MatMul reads."""
    if node.op == "Conv":
        return int(w.shape[1]) * graph_utils.attr_int(node, "group", 1)
    return int(_kn(node, w).shape[0])
