"""Expected input E[x] per input channel of a layer, for bias correction (DESIGN.md 5.4).

Pushed ("bn"): when the layer's input comes from a layer with BatchNorm statistics
(beta, gamma) through one activation and mean-preserving ops (average / global
pooling, zero Pad, Identity, Dropout, Flatten), E[x_c] is the mean of N(beta_c,
gamma_c^2) through that activation (graphcomp.measure.normal.activation_moments), repeated over
the `block` features a Flatten gives each channel. Measured ("synthetic" /
"calibration"): the mean of the input tensor itself over every axis but the channel,
with the float model run on generated or user samples (graphcomp.measure.observe).

Analytic ("analytic"): the input's mean from graphcomp.measure.analytic. Under "auto" a
layer gets the pushed mean when it can, else the measured one. Not
pushed through MaxPool (the mean of a max is not the max of means) nor through any
op but one activation; graph inputs and residual sums are measured.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphcomp.core import graph_utils, model_io
from graphcomp.core.pass_base import ChannelStats, PassContext
from graphcomp.measure import analytic, normal, observe, stats

MEAN_PRESERVING = ("AveragePool", "GlobalAveragePool", "Identity", "Dropout", "Pad")
ACTIVATIONS = ("Relu", "Clip", "LeakyRelu", "PRelu")
MAX_WALK = 16


def input_means(
    graph: gs.Graph,
    ctx: PassContext,
    nodes: list[gs.Node],
    method: str = "auto",
    samples: int = stats.SYNTHETIC_SAMPLES,
    seed: int = 0,
    prior: str = stats.DEFAULT_PRIOR,
) -> dict[str, tuple[np.ndarray, str]]:
    """Layer name -> (E[x] per input feature of its data input, source of the estimate)."""
    out: dict[str, tuple[np.ndarray, str]] = {}
    if method in ("auto", "data-free", "bn"):
        known = stats.estimate(graph, ctx, "bn")
        for node in nodes:
            mean = pushed_mean(node, known)
            if mean is not None:
                out[node.name] = (mean, "bn")
    if method == "bn":
        return out
    rest = [n for n in nodes if n.name not in out]
    if rest and method == "analytic":
        flow = analytic.propagate(graph, ctx, [n.inputs[0].name for n in rest])
        out.update(
            {
                n.name: (flow[n.inputs[0].name].mean, "analytic")
                for n in rest
                if n.inputs[0].name in flow
            }
        )
    elif rest:
        out.update(_measured(graph, ctx, rest, method, samples, seed, prior))
    return out


def pushed_mean(node: gs.Node, known: dict[str, ChannelStats]) -> np.ndarray | None:
    """E[x] of `node`'s data input from a producer's statistics, or None if not provable."""
    tensor, act, block = node.inputs[0], None, 1
    for _ in range(MAX_WALK):
        prev = graph_utils.producer(tensor)
        if prev is None:
            return None
        if tensor.name in known:
            moments = normal.activation_moments(known[tensor.name], act)
            return None if moments is None else np.repeat(moments[0], block)
        if prev.op in ACTIVATIONS and act is None:
            act = prev
        elif prev.op == "Flatten" and block == 1:
            found = _block(prev)
            if found is None:
                return None
            block = found
        elif prev.op not in MEAN_PRESERVING or (prev.op == "Pad" and not _zero_pad(prev)):
            return None
        tensor = prev.inputs[0]
    return None


def _zero_pad(node: gs.Node) -> bool:
    value = graph_utils.const_input(node, 2)
    return value is None or float(np.max(np.abs(value))) == 0.0


def _block(flat: gs.Node) -> int | None:
    shape = flat.inputs[0].shape
    if shape is None or any(not isinstance(d, int) for d in shape[2:]):
        return None
    axis = int(np.asarray(graph_utils.attr(flat, "axis", 1)))
    return int(np.prod(shape[2:])) if axis == 1 else None


def _measured(
    graph: gs.Graph,
    ctx: PassContext,
    nodes: list[gs.Node],
    method: str,
    samples: int,
    seed: int,
    prior: str,
) -> dict[str, tuple[np.ndarray, str]]:
    source = (
        "calibration"
        if method == "calibration" or (method == "auto" and ctx.calibration is not None)
        else "synthetic"
    )
    model = model_io.to_model(graph)
    src = stats.measure_source(ctx, source, samples, seed, prior)
    axes = {n.inputs[0].name: -1 if n.op == "MatMul" else 1 for n in nodes}
    moments = observe.channel_moments(model, axes, src)
    return {n.name: (moments[n.inputs[0].name][0], source) for n in nodes}
