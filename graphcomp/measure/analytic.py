"""Per-channel statistics propagated analytically from an input prior (no model run).

Every float graph input starts as N(0, 1) per element (the usual normalised input).
Moments (mean m_c, variance v_c per channel of axis 1) flow in topological order,
assuming independent elements (the approximation that makes it cheap):

- Conv / Gemm / MatMul: m_o = b_o + sum_{i,k} W_{o,i,k} m_i,
  v_o = sum_{i,k} W_{o,i,k}^2 v_i (zero padding ignored);
- BatchNormalization, Mul/Add/Sub by a constant: affine per channel;
- Relu, Clip, LeakyRelu, PRelu: moments of the clipped / leaky normal (graphcomp.measure.stats);
- Add/Sub of two tensors: means add, variances add;
- AveragePool: variance / kernel size; GlobalAveragePool: variance / (H W);
  MaxPool: mean + std e_n, variance v_n sigma^2 for the max of n independent normals;
- Identity, Dropout, Pad, Flatten/Reshape (channel blocks repeated), Concat on axis 1.
Anything else stops the flow: layers behind it get no analytic estimate.
Cost: one pass over the weights, linear in the parameter count.

`pushed_input` starts from known statistics instead of the prior (BatchNorm's beta /
|gamma| that fold-bn kept): the moments of a layer's data input through one activation
(or one elementwise function of the known tensor: SiLU, HardSwish written out, an
affine after it; graphcomp.measure.elementwise) and mean-preserving ops (average /
global pooling, zero Pad, Identity, Dropout, a Flatten or Reshape to [N, C H W]).
Pooling keeps the variance (neighbouring pixels of a feature map are highly
correlated, so var / kernel would be far too small; keeping it over-estimates the
spread, the safe side for ranges). `derived` applies the `_linear` rule to it: the
output statistics of a layer behind a global pool (a classifier head, a
squeeze-excitation branch) from BatchNorm statistics, with no model run (source
"bn-derived"). Not pushed through MaxPool (the mean of a max is not the max of
means) nor through any other op.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import numpy as np
import onnx_graphsurgeon as gs
from onnx import shape_inference

from graphcomp.core import graph_utils, model_io
from graphcomp.core.pass_base import ChannelStats, PassContext
from graphcomp.measure import elementwise, normal

Moments = tuple[np.ndarray, np.ndarray]  # mean, variance per channel
# expected max and variance of the max of n iid N(0, 1), for pooling windows
MAX_OF_N = {
    1: (0.0, 1.0),
    2: (0.5642, 0.6817),
    4: (1.0294, 0.4917),
    9: (1.4850, 0.3573),
    16: (1.7660, 0.3129),
}
PASS_THROUGH = ("Identity", "Dropout", "Pad", "Cast")
SOURCE = "analytic"
DERIVED = "bn-derived"  # a layer's output statistics computed from BatchNorm statistics
MEAN_PRESERVING = ("AveragePool", "GlobalAveragePool", "Identity", "Dropout", "Pad")
ACTIVATIONS = ("Relu", "Clip", "LeakyRelu", "PRelu")
MAX_WALK = 16  # nodes walked back from a layer to known statistics


def propagate(graph: gs.Graph, ctx: PassContext, names: list[str]) -> dict[str, ChannelStats]:
    """ChannelStats (source "analytic") for the tensors `names` the flow reaches.

    Any tensor with a channel axis can be asked for (layer outputs, layer inputs).
    """
    model = shape_inference.infer_shapes(model_io.to_model(graph), data_prop=True)
    g = model_io.import_graph(model)
    flow: dict[str, Moments] = {}
    for tensor in g.inputs:
        shape = ctx.input_shapes.get(tensor.name) or tensor.shape
        if shape is not None and len(shape) >= 2 and isinstance(shape[1], int):
            flow[tensor.name] = (np.zeros(shape[1]), np.ones(shape[1]))
    for node in g.nodes:
        moments = _node(node, flow)
        if moments is not None and node.outputs:
            flow[node.outputs[0].name] = moments
    return {
        n: ChannelStats(flow[n][0], np.sqrt(np.maximum(flow[n][1], 0.0)) + 0.0, SOURCE)
        for n in names
        if n in flow
    }


def _node(node: gs.Node, flow: dict[str, Moments]) -> Moments | None:
    x = flow.get(node.inputs[0].name) if node.inputs else None
    if node.op in ("Conv", "Gemm", "MatMul"):
        return _linear(node, x)
    if x is None:
        return None
    if node.op in PASS_THROUGH:
        return x
    if node.op in ("Relu", "Clip", "LeakyRelu", "PRelu"):
        return _activation(node, x)
    if node.op in ("Add", "Sub", "Mul"):
        return _binary(node, flow)
    if node.op == "BatchNormalization":
        return _batchnorm(node, x)
    if node.op in ("AveragePool", "GlobalAveragePool", "MaxPool"):
        return _pool(node, x)
    if node.op in ("Flatten", "Reshape"):
        return _flatten(node, x)
    if node.op == "Concat" and graph_utils.attr_int(node, "axis", 0) == 1:
        parts = [p for t in node.inputs if (p := flow.get(t.name)) is not None]
        if len(parts) < len(node.inputs):
            return None
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    return None


def _linear(node: gs.Node, x: Moments | None) -> Moments | None:
    w = graph_utils.const_input(node, 1)
    if x is None or w is None:
        return None
    w = w.astype(np.float64)
    m, v = x
    if node.op == "Conv":
        group = graph_utils.attr_int(node, "group", 1)
        if m.size != w.shape[1] * group:
            return None
        out_g, in_g = w.shape[0] // group, w.shape[1]
        wg = w.reshape(group, out_g, in_g, -1)
        mg, vg = m.reshape(group, 1, in_g, 1), v.reshape(group, 1, in_g, 1)
        mean = (wg * mg).sum(axis=(2, 3)).reshape(-1)
        var = (wg * wg * vg).sum(axis=(2, 3)).reshape(-1)
    else:
        kn = w.T if node.op == "Gemm" and graph_utils.attr_int(node, "transB", 0) else w
        if kn.ndim != 2 or m.size != kn.shape[0]:
            return None
        alpha = graph_utils.attr_float(node, "alpha", 1.0) if node.op == "Gemm" else 1.0
        mean, var = alpha * (m @ kn), alpha * alpha * (v @ (kn * kn))
    bias = graph_utils.const_input(node, 2) if node.op != "MatMul" else None
    if bias is not None:
        beta = graph_utils.attr_float(node, "beta", 1.0) if node.op == "Gemm" else 1.0
        mean = mean + beta * np.broadcast_to(bias.astype(np.float64).reshape(-1), mean.shape)
    return mean, var


def _activation(node: gs.Node, x: Moments) -> Moments | None:
    st = ChannelStats(x[0], np.sqrt(np.maximum(x[1], 0.0)), SOURCE)
    moments = normal.activation_moments(st, node)
    return None if moments is None else (moments[0], moments[1] ** 2)


def _binary(node: gs.Node, flow: dict[str, Moments]) -> Moments | None:
    a, b = (flow.get(t.name) for t in node.inputs[:2])
    consts = [graph_utils.const_value(t) for t in node.inputs[:2]]
    sign = -1.0 if node.op == "Sub" else 1.0
    if a is not None and b is not None and node.op != "Mul":
        return a[0] + sign * b[0], a[1] + b[1]
    x, c = (a, consts[1]) if a is not None else (b, consts[0])
    if x is None or c is None or c.size not in (1, x[0].size):
        return None
    c = np.broadcast_to(c.astype(np.float64).reshape(-1), x[0].shape)
    if node.op == "Mul":
        return x[0] * c, x[1] * c * c
    if node.op == "Sub" and a is None:  # c - x
        return c - x[0], x[1]
    return x[0] + sign * c, x[1]


def _batchnorm(node: gs.Node, x: Moments) -> Moments | None:
    params = [p for i in range(1, 5) if (p := graph_utils.const_input(node, i)) is not None]
    if len(params) < 4:
        return None
    gamma, beta, mean, var = (p.astype(np.float64) for p in params)
    scale = gamma / np.sqrt(var + graph_utils.attr_float(node, "epsilon", 1e-5))
    return scale * (x[0] - mean) + beta, scale * scale * x[1]


def _pool(node: gs.Node, x: Moments) -> Moments | None:
    if node.op == "GlobalAveragePool":
        shape = node.inputs[0].shape
        if shape is None or any(not isinstance(d, int) for d in shape[2:]):
            return None
        return x[0], x[1] / max(math.prod(shape[2:]), 1)
    kernel = graph_utils.attr_ints(node, "kernel_shape")
    if kernel is None:
        return None
    n = math.prod(kernel)
    if node.op == "AveragePool":
        return x[0], x[1] / n
    key = max(k for k in MAX_OF_N if k <= n)
    shift, shrink = MAX_OF_N[key]
    return x[0] + shift * np.sqrt(np.maximum(x[1], 0.0)), x[1] * shrink


def _flatten(node: gs.Node, x: Moments) -> Moments | None:
    shape = node.inputs[0].shape
    if shape is None or len(shape) < 2 or any(not isinstance(d, int) for d in shape[2:]):
        return None
    block = math.prod(shape[2:])
    return np.repeat(x[0], block), np.repeat(x[1], block)


@dataclasses.dataclass(frozen=True)
class Pushed:
    """Moments of a layer's data input pushed from a producer's statistics."""

    mean: np.ndarray  # per input feature (channel blocks of a Flatten repeated)
    var: np.ndarray
    source: str  # the producer statistics' source
    pooled: bool  # a global pool lies on the way (one feature per channel)


def pushed_input(node: gs.Node, known: Mapping[str, ChannelStats]) -> Pushed | None:
    """`node`'s data input moments from `known` statistics upstream, None if not provable."""
    tensor, act, block, pooled = node.inputs[0], None, 1, False
    for _ in range(MAX_WALK):
        prev = graph_utils.producer(tensor)
        if prev is None:
            return None
        if tensor.name in known:
            st = known[tensor.name]
            moments = normal.activation_moments(st, act)
            if moments is None:
                return None
            mean, std = (np.repeat(np.asarray(m, np.float64), block) for m in moments)
            return Pushed(mean, std * std, st.source, pooled)
        if prev.op in ACTIVATIONS and act is None:
            act = prev
        elif prev.op in elementwise.OPS and prev.op not in MEAN_PRESERVING and act is None:
            return _pushed_function(prev, known, block, pooled)
        elif prev.op in ("Flatten", "Reshape") and block == 1:
            found = flatten_block(prev)
            if found is None:
                return None
            block = found
        elif prev.op not in MEAN_PRESERVING or (prev.op == "Pad" and not _zero_pad(prev)):
            return None
        pooled = pooled or prev.op == "GlobalAveragePool"
        tensor = prev.inputs[0]
    return None


def _pushed_function(
    node: gs.Node, known: Mapping[str, ChannelStats], block: int, pooled: bool
) -> Pushed | None:
    """Moments of `node`'s output as an elementwise function of one known tensor."""
    fn = elementwise.function_of(node, known.__contains__, lambda n: np.size(known[n].mean))
    if fn is None:
        return None
    st = known[fn.root]
    std = np.asarray(st.std, np.float64)
    moments = fn.moments(np.asarray(st.mean, np.float64), std * std)
    if moments is None:
        return None
    mean, var = (np.repeat(m, block) for m in moments)
    return Pushed(mean, var, st.source, pooled)


def derived(
    graph: gs.Graph, known: Mapping[str, ChannelStats], names: list[str]
) -> dict[str, ChannelStats]:
    """Output statistics of the layers writing `names` behind a global pool, from `known`.

    Layers are taken in graph order, so a derived layer can feed the next (an MLP head).
    Source "bn-derived"; the layers this cannot reach are absent.
    """
    wanted, have, out = set(names), dict(known), {}
    for node in graph.nodes:
        if node.op not in ("Conv", "Gemm", "MatMul") or not node.outputs:
            continue
        name = node.outputs[0].name
        if name not in wanted or name in have:
            continue
        pushed = pushed_input(node, have)
        if pushed is None or not (pushed.pooled or pushed.source == DERIVED):
            continue
        moments = _linear(node, (pushed.mean, pushed.var))
        if moments is not None:
            have[name] = out[name] = ChannelStats(
                moments[0], np.sqrt(np.maximum(moments[1], 0.0)), DERIVED
            )
    return out


def _zero_pad(node: gs.Node) -> bool:
    value = graph_utils.const_input(node, 2)
    return value is None or float(np.max(np.abs(value))) == 0.0


def flatten_block(node: gs.Node) -> int | None:
    """H W when `node` (Flatten axis 1, or Reshape) makes [N, C, H...] into [N, C H...].

    Each channel then owns H W consecutive features; None for any other reshaping.
    """
    shape, out = node.inputs[0].shape, node.outputs[0].shape
    if shape is None or len(shape) < 2 or any(not isinstance(d, int) for d in shape[1:]):
        return None
    block = math.prod(shape[2:])
    if node.op == "Flatten":
        return block if int(np.asarray(graph_utils.attr(node, "axis", 1))) == 1 else None
    if out is not None:
        return block if len(out) == 2 and out[1] == shape[1] * block else None
    # a runtime target shape (x.view(n, -1)): provable when only Gemms read it as A
    # with K = C H W features (A is then [N, C H W])
    readers = graph_utils.consumers(node.outputs[0])
    features = [_gemm_features(r, node.outputs[0]) for r in readers]
    return block if readers and all(k == shape[1] * block for k in features) else None


def _gemm_features(node: gs.Node, tensor: gs.Tensor) -> int | None:
    """K of a Gemm reading `tensor` as its (untransposed) A input, else None."""
    if node.op != "Gemm" or node.inputs[0] is not tensor or graph_utils.attr_int(node, "transA", 0):
        return None
    w = graph_utils.const_input(node, 1)
    if w is None or w.ndim != 2:
        return None
    return int(w.shape[1] if graph_utils.attr_int(node, "transB", 0) else w.shape[0])
