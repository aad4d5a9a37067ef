"""Fold inference BatchNormalization into the Conv, ConvTranspose or Gemm before it.

With s = gamma / sqrt(var + eps): W'[c] = s[c] W[c] along the output-channel axis and
b' = s (b - mean) + beta. Lossless up to float rounding. The BN's beta and
|gamma| sqrt(var / (var + eps)) (the std of gamma (x - mean) / sqrt(var + eps) + beta
when x has the running variance; |gamma| alone overstates it wherever var is not
large against eps, as in dead channels) are kept in the run's context as the
per-channel mean and std of the folded layer's output (DESIGN.md 5.1), for the dfq
steps that follow.

Will not touch (skipped with the reason): BN after any other op, BN whose producer's
output is read by others too or is a graph output, a weight shared with other nodes,
training-mode BN, non-constant BN parameters or weights, Gemm with transA or a
bias that varies over rows.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphcomp.core import graph_utils
from graphcomp.core.pass_base import ChannelStats, Pass, PassContext, PassResult

FOLDABLE = ("Conv", "ConvTranspose", "Gemm")


class FoldBnPass(Pass):
    """BatchNormalization folded into its producing Conv/ConvTranspose/Gemm."""

    name = "fold-bn"
    summary = "fold BatchNormalization into the preceding Conv/ConvTranspose/Gemm, keep its stats"
    matches = frozenset({"BatchNormalization", "Conv", "ConvTranspose", "Gemm"})
    creates = frozenset()
    lossless = True
    writes = frozenset({"stats"})  # BN beta/std of each folded layer's output

    def apply(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        """Fold every foldable BN; record its statistics under the output tensor name."""
        result = PassResult(self.name)
        for bn in graph_utils.nodes_of(graph, {"BatchNormalization"}):
            layer = graph_utils.producer(bn.inputs[0])
            if (reason := _skip_reason(graph, bn)) or layer is None:
                result.skip(bn, reason or "input comes from a graph input")
                continue
            scale, shift, beta, std = _affine(bn)
            _fold_into(graph, layer, scale, shift)
            layer.outputs = [bn.outputs[0]]
            bn.inputs.clear()
            bn.outputs.clear()
            ctx.stats[layer.outputs[0].name] = ChannelStats(beta, std, "bn")
            result.change(layer, f"folded {bn.name} ({scale.size} channels)")
        return result


def _affine(bn: gs.Node) -> tuple[np.ndarray, ...]:
    """(scale, shift, beta, output std) with y = scale * x + shift, in float64."""
    gamma, beta, mean, var = (
        graph_utils.checked_const_input(bn, i).astype(np.float64) for i in range(1, 5)
    )
    eps = graph_utils.attr_float(bn, "epsilon", 1e-5)
    scale = gamma / np.sqrt(var + eps)
    return scale, beta - scale * mean, beta, np.abs(scale) * np.sqrt(np.maximum(var, 0.0))


def _skip_reason(graph: gs.Graph, bn: gs.Node) -> str | None:
    if (
        len(bn.outputs) > 1
        and any(t.outputs for t in bn.outputs[1:])
        or graph_utils.attr_int(bn, "training_mode", 0)
    ):
        return "training-mode BatchNormalization"
    if any(graph_utils.const_input(bn, i) is None for i in range(1, 5)):
        return "BN parameters are not constants"
    layer = graph_utils.producer(bn.inputs[0])
    if layer is None or layer.op not in FOLDABLE:
        source = layer.op if layer else "a graph input"
        return f"input comes from {source}, not {'/'.join(FOLDABLE)}"
    if graph_utils.only_consumer(bn.inputs[0], graph) is not bn:
        return f"output of {layer.name} is also read elsewhere"
    weight = layer.inputs[1]
    if graph_utils.const_value(weight) is None or graph_utils.is_shared(weight):
        return f"weight of {layer.name} is not a constant used by this node alone"
    if (
        len(layer.inputs) > 2
        and layer.inputs[2].name
        and (
            graph_utils.const_value(layer.inputs[2]) is None
            or graph_utils.is_shared(layer.inputs[2])
        )
    ):
        return f"bias of {layer.name} is not a constant used by this node alone"
    if layer.op == "Gemm":
        return _gemm_reason(layer)
    return None


def _gemm_reason(gemm: gs.Node) -> str | None:
    if graph_utils.attr_int(gemm, "transA", 0):
        return "Gemm with transA"
    bias = graph_utils.const_input(gemm, 2)
    if bias is not None and bias.ndim == 2 and bias.shape[0] != 1:
        return "Gemm bias varies over rows"
    return None


def _fold_into(graph: gs.Graph, layer: gs.Node, scale: np.ndarray, shift: np.ndarray) -> None:
    weight = graph_utils.checked_const_input(layer, 1)
    dtype = weight.dtype
    w = weight.astype(np.float64)
    if layer.op == "Conv":
        w = w * scale.reshape(-1, *([1] * (w.ndim - 1)))
    elif layer.op == "ConvTranspose":
        group = graph_utils.attr_int(layer, "group", 1)
        grouped = w.reshape(group, w.shape[0] // group, w.shape[1], *w.shape[2:])
        per_group = scale.reshape(group, 1, w.shape[1], *([1] * (w.ndim - 2)))
        w = (grouped * per_group).reshape(w.shape)
    else:  # Gemm: output columns are rows of B when transB
        w = w * (scale[:, None] if graph_utils.attr_int(layer, "transB", 0) else scale[None, :])
    graph_utils.set_const_input(graph, layer, 1, w.astype(dtype))
    graph_utils.set_const_input(graph, layer, 2, _new_bias(layer, scale, shift).astype(dtype))


def _new_bias(layer: gs.Node, scale: np.ndarray, shift: np.ndarray) -> np.ndarray:
    bias = graph_utils.const_input(layer, 2)
    b = np.zeros_like(scale) if bias is None else bias.astype(np.float64).reshape(-1)
    if layer.op == "Gemm":
        b = b * graph_utils.attr_float(layer, "beta", 1.0)
        layer.attrs["beta"] = 1.0
        b = np.broadcast_to(b, scale.shape)
    return scale * b + shift
