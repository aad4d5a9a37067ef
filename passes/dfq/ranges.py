"""Activation ranges from per-channel statistics, for the qdq step of dfq (DESIGN.md 5.5).

One pass in topological order carries, per tensor, per-channel intervals [lo_c, hi_c]
and moments (mean_c, var_c):
- a layer output with pre-activation N(mean_c, std_c^2) gets [mean_c - k std_c,
  mean_c + k std_c];
- an activation maps the interval through itself (Relu [max(lo, 0), max(hi, 0)],
  Clip(a, b) and Min(c) clip it, LeakyRelu/PRelu scale its negative end) and the
  moments through the clipped / leaky normal (graphcomp.measure.stats);
- pooling (global average pooling too), zero Pad, Identity, Dropout keep both (the
  output stays inside the interval; zero padding adds 0; the variance of a pooled
  channel is kept, not divided by the window: neighbouring pixels are highly
  correlated, and on EfficientNet-Lite0's head the kept spread gives the classifier
  input a range close to the one measured on photos);
- Flatten (axis 1) or Reshape of [N, C, H, W] to [N, C H W]: each channel's interval
  and moments repeat over its H W features;
- Add of two carried tensors: means and variances add (independent branches), the
  interval is mean +- k std of the sum (residual junctions);
- Concat along the channel axis of carried tensors: the channels' intervals and moments
  are concatenated (dense blocks);
- any other elementwise function of one tensor carried from BatchNorm statistics (SiLU
  as x * Sigmoid(x), HardSwish written out, a learnable affine after it;
  graphcomp.measure.elementwise): the function's range on the interval and its moments
  under the normal. From measured statistics the function's output is measured
  instead, on the same inputs: on the realbench tuning split carrying SiLU from
  measured conv statistics cost the captcha recognizer 0.06 character agreement.
A tensor's range is the union over its channels (qdq caps a Relu output read only by
a per-channel Min at the Min's range, passes/qdq/clamp.py).

Tensors the flow does not reach (graph inputs, residual sums of unknown branches, ...)
are measured on the same inputs the statistics came from (`measured_ranges`, a
percentile of the observed values).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from graphcomp.core import graph_utils, quant
from graphcomp.core.pass_base import ChannelStats
from graphcomp.measure import analytic, elementwise, inputs, normal, observe

Range = tuple[float, float, str]
KEEP = (
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "Identity",
    "Dropout",
    "Pad",
)
FLATTEN = ("Flatten", "Reshape")
FROM_BN = ("bn", analytic.DERIVED)  # statistics from BatchNorm (elementwise functions carry)
PER_BATCH = 1 << 15  # values kept per tensor and batch for the percentile


class _Flow:
    """Per-channel interval and moments of each tensor reached, with its source."""

    def __init__(self) -> None:
        self.iv: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.mo: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.src: dict[str, str] = {}

    def put(
        self,
        name: str,
        iv: tuple[np.ndarray, np.ndarray],
        mo: tuple[np.ndarray, np.ndarray] | None,
        src: str,
    ) -> None:
        self.iv[name], self.src[name] = iv, src
        if mo is not None:
            self.mo[name] = mo


def activation_ranges(
    graph: gs.Graph, known: dict[str, ChannelStats], k: float
) -> dict[str, Range]:
    """Tensor name -> (lo, hi, source) for every tensor the statistics reach."""
    flow = _Flow()
    for node in _sorted(graph):
        if not node.outputs:
            continue
        out = node.outputs[0].name
        if out in known:
            st = known[out]
            mean, std = np.asarray(st.mean, np.float64), np.asarray(st.std, np.float64)
            flow.put(out, (mean - k * std, mean + k * std), (mean, std * std), st.source)
        else:
            if node.inputs and node.inputs[0].name in flow.iv:
                _step(node, flow, k)
            if out not in flow.iv and node.op in elementwise.OPS:
                _elementwise(node, flow)
    return {
        n: (float(lo.min()), float(hi.max()), flow.src[n])
        for n, (lo, hi) in flow.iv.items()
        if lo.size
    }


def _sorted(graph: gs.Graph) -> list[gs.Node]:
    copy = graph.copy()
    copy.toposort()
    order = {n.name: i for i, n in enumerate(copy.nodes)}
    return sorted(graph.nodes, key=lambda n: order.get(n.name, len(order)))


def _step(node: gs.Node, flow: _Flow, k: float) -> None:
    name, src = node.inputs[0].name, flow.src[node.inputs[0].name]
    (lo, hi), mo = flow.iv[name], flow.mo.get(name)
    out = node.outputs[0].name
    if node.op in KEEP:
        if node.op == "Pad" and not _zero_pad(node):
            return
        flow.put(
            out,
            (np.minimum(lo, 0.0), np.maximum(hi, 0.0)) if node.op == "Pad" else (lo, hi),
            mo,
            src,
        )
        return
    if node.op == "Concat":
        _concat(node, flow)
        return
    if node.op in FLATTEN:
        block = analytic.flatten_block(node)
        shape = node.inputs[0].shape
        if block is not None and shape is not None and shape[1] == lo.size:
            moments = None if mo is None else (np.repeat(mo[0], block), np.repeat(mo[1], block))
            flow.put(out, (np.repeat(lo, block), np.repeat(hi, block)), moments, src)
        return
    if node.op == "Add" and len(node.inputs) == 2:
        other = node.inputs[1].name
        if mo is None or other not in flow.mo or flow.mo[other][0].shape != mo[0].shape:
            return
        mean, var = mo[0] + flow.mo[other][0], mo[1] + flow.mo[other][1]
        std = np.sqrt(var)
        flow.put(out, (mean - k * std, mean + k * std), (mean, var), src)
        return
    mapped = _through(node, lo, hi)
    if mapped is None:
        return
    moments = None
    if mo is not None:
        st = ChannelStats(mo[0], np.sqrt(np.maximum(mo[1], 0.0)), src)
        got = normal.activation_moments(st, node) if node.op != "Min" else None
        moments = None if got is None else (got[0], got[1] ** 2)
    flow.put(out, mapped, moments, src)


def _elementwise(node: gs.Node, flow: _Flow) -> None:
    """An elementwise function f of one carried tensor x: f of its interval and moments."""
    fn = elementwise.function_of(
        node,
        lambda name: name in flow.iv and name in flow.mo,
        lambda name: flow.iv[name][0].size,
    )
    if fn is None or flow.src[fn.root] not in FROM_BN:
        return  # measured statistics: measure the function's output on the same inputs
    (lo, hi), (mean, var) = flow.iv[fn.root], flow.mo[fn.root]
    iv, mo = fn.interval(lo, hi), fn.moments(mean, var)
    if iv is not None and mo is not None:
        flow.put(node.outputs[0].name, iv, mo, flow.src[fn.root])


def _concat(node: gs.Node, flow: _Flow) -> None:
    """Channel-axis Concat: every input carried; intervals (and moments if all have them) join."""
    names = [t.name for t in node.inputs]
    shape = node.outputs[0].shape or node.inputs[0].shape
    axis = int(np.asarray(graph_utils.attr(node, "axis", 1)))
    if shape is not None and len(shape) > 1:
        axis %= len(shape)
    if axis != 1 or any(n not in flow.iv for n in names):
        return
    lo = np.concatenate([flow.iv[n][0] for n in names])
    hi = np.concatenate([flow.iv[n][1] for n in names])
    moments = None
    if all(n in flow.mo for n in names):
        moments = (
            np.concatenate([flow.mo[n][0] for n in names]),
            np.concatenate([flow.mo[n][1] for n in names]),
        )
    flow.put(node.outputs[0].name, (lo, hi), moments, flow.src[names[0]])


def _zero_pad(node: gs.Node) -> bool:
    mode = graph_utils.attr(node, "mode", "constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    value = graph_utils.const_input(node, 2)
    return mode == "constant" and (value is None or float(np.max(np.abs(value))) == 0.0)


def _through(node: gs.Node, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    if node.op in ("Relu", "Clip"):
        bounds = normal.activation_bounds(node)
        if bounds is None:
            return None
        return np.clip(lo, *bounds), np.clip(hi, *bounds)
    if node.op == "Min" and len(node.inputs) == 2:
        c = graph_utils.const_input(node, 1)
        if c is None or c.size not in (1, lo.size):
            return None
        c = np.broadcast_to(c.astype(np.float64).reshape(-1), lo.shape)
        return np.minimum(lo, c), np.minimum(hi, c)
    slope = normal.activation_slope(node)
    if slope is None:
        return None
    slope = np.broadcast_to(np.asarray(slope, np.float64).reshape(-1), lo.shape)
    return np.where(lo < 0, lo * slope, lo), np.where(hi < 0, hi * slope, hi)


def measured_ranges(
    model: onnx.ModelProto,
    names: list[str],
    batches: Sequence[observe.Feeds] | inputs.Source,
    percentile: float,
    source: str,
) -> dict[str, Range]:
    """(lo, hi) per tensor: the `percentile` range of its values on `batches` (subsampled)."""
    rng = np.random.default_rng(0)  # one generator, drawn tensor by tensor, batch by batch
    samplers = {n: observe.Values(rng, per_batch=PER_BATCH) for n in dict.fromkeys(names)}
    observe.collect(model, samplers, batches)
    out: dict[str, Range] = {}
    for name, sampler in samplers.items():
        values = sampler.values()
        if values.size:
            lo, hi = quant.percentile(values, percentile)
            out[name] = (lo, hi, f"{source}:percentile({percentile:g})")
    return out
