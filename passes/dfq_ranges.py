"""Activation ranges from per-channel statistics, for the qdq step of dfq (DESIGN.md 5.5).

A layer output with pre-activation N(mean_c, std_c^2) per channel gets the interval
[mean_c - k std_c, mean_c + k std_c] per channel; each activation that follows
(the only reader of the tensor) maps the interval through itself: Relu [max(lo, 0),
max(hi, 0)], Clip(a, b) and Min(c) clip it, LeakyRelu/PRelu scale its negative end.
A tensor's range is the union over channels. Max/average pooling keep per-channel
intervals (their output stays inside), so the walk goes on through them.

Tensors that are not a layer output or an activation chain after one (residual sums,
Concat, pooling outputs, the graph input) are measured on the same inputs the
statistics came from (`measured_ranges`, a percentile of the observed values).
"""
from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from graphcomp import graph_utils, observe, quant
from graphcomp import stats as channel_stats
from graphcomp.pass_base import ChannelStats

Range = tuple[float, float, str]
POOLS = ("MaxPool", "AveragePool", "Identity", "Dropout")
MAX_WALK = 8
PER_BATCH = 1 << 15  # values kept per tensor and batch for the percentile


def activation_ranges(graph: gs.Graph, known: dict[str, ChannelStats], k: float
                      ) -> dict[str, Range]:
    """Tensor name -> (lo, hi, source) for every layer output in `known` and its chain."""
    tensors = graph.tensors()
    out: dict[str, Range] = {}
    for name, st in known.items():
        tensor = tensors.get(name)
        if tensor is None:
            continue
        mean, std = np.asarray(st.mean, np.float64), np.asarray(st.std, np.float64)
        lo, hi = mean - k * std, mean + k * std
        out[name] = (float(lo.min()), float(hi.max()), st.source)
        for _ in range(MAX_WALK):
            node = graph_utils.only_consumer(tensor, graph)
            if node is None or node.inputs[0] is not tensor:
                break
            mapped = _through(node, lo, hi)
            if mapped is None:
                break
            lo, hi = mapped
            tensor = node.outputs[0]
            out[tensor.name] = (float(lo.min()), float(hi.max()), st.source)
    return out


def _through(node: gs.Node, lo: np.ndarray, hi: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray] | None:
    if node.op in POOLS:
        return lo, hi
    if node.op in ("Relu", "Clip"):
        bounds = channel_stats.activation_bounds(node)
        if bounds is None:
            return None
        return np.clip(lo, *bounds), np.clip(hi, *bounds)
    if node.op == "Min" and len(node.inputs) == 2:
        c = graph_utils.const_input(node, 1)
        if c is None:
            return None
        c = np.broadcast_to(c.astype(np.float64).reshape(-1), lo.shape)
        return np.minimum(lo, c), np.minimum(hi, c)
    slope = channel_stats.activation_slope(node)
    if slope is None:
        return None
    slope = np.broadcast_to(np.asarray(slope, np.float64).reshape(-1), lo.shape)
    return np.where(lo < 0, lo * slope, lo), np.where(hi < 0, hi * slope, hi)


def measured_ranges(model: onnx.ModelProto, names: list[str], batches: list[observe.Feeds],
                    percentile: float, source: str) -> dict[str, Range]:
    """(lo, hi) per tensor: the `percentile` range of its values on `batches` (subsampled)."""
    rng = np.random.default_rng(0)
    kept: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for values in observe.stream(model, names, batches):
        for name, value in values.items():
            flat = np.asarray(value, np.float32).ravel()
            flat = flat[np.isfinite(flat)]
            if flat.size > PER_BATCH:
                flat = rng.choice(flat, PER_BATCH, replace=False)
            kept[name].append(flat)
    out: dict[str, Range] = {}
    for name, parts in kept.items():
        values = np.concatenate(parts) if parts else np.zeros(0)
        if values.size:
            lo, hi = quant.percentile(values, percentile)
            out[name] = (lo, hi, f"{source}:percentile({percentile:g})")
    return out
