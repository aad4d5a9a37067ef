"""Expected input E[x] per input channel of a layer, for bias correction (DESIGN.md 5.4).

Pushed ("bn"): when the layer's input comes from a layer with BatchNorm statistics
(beta, gamma) through one activation and mean-preserving ops (average / global
pooling, zero Pad, Identity, Dropout, Flatten), E[x_c] is the mean of N(beta_c,
gamma_c^2) through that activation, repeated over the `block` features a Flatten gives
each channel (graphcomp.measure.analytic.pushed_input). Measured ("synthetic" /
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

from graphcomp.core import model_io
from graphcomp.core.pass_base import ChannelStats, PassContext
from graphcomp.measure import analytic, observe, stats


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
        known = {n: st for n, st in stats.estimate(graph, ctx, "bn").items() if st.source == "bn"}
        for node in nodes:
            mean = pushed_mean(node, known)
            if mean is not None:
                out[node.name] = (mean, "bn")
    if method == "bn":
        return out
    rest = [n for n in nodes if n.name not in out]
    measured = _measured_source(method, ctx)
    for node in list(rest):  # measured with the statistics (dfq's stats step), in step
        st = ctx.stats.get(node.inputs[0].name)
        if measured is not None and st is not None and st.source == measured:
            out[node.name] = (np.asarray(st.mean, np.float64), measured)
            rest.remove(node)
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
    pushed = analytic.pushed_input(node, known)
    return None if pushed is None else pushed.mean


def to_measure(graph: gs.Graph, ctx: PassContext, nodes: list[gs.Node]) -> dict[str, int]:
    """Data inputs (name -> channel axis) of `nodes` whose mean BN statistics cannot give.

    dfq's stats step measures them in its own forward pass (and equalize keeps them in
    step), so bias-correct needs no second one.
    """
    known = {n: st for n, st in ctx.stats.items() if st.source == "bn"}
    return {
        node.inputs[0].name: -1 if node.op == "MatMul" else 1
        for node in nodes
        if pushed_mean(node, known) is None
    }


def _measured_source(method: str, ctx: PassContext) -> str | None:
    """The measured source `method` resolves to, None for bn / analytic."""
    if method == "calibration" or (method == "auto" and ctx.calibration is not None):
        return "calibration"
    return "synthetic" if method in ("auto", "data-free", "synthetic") else None


def _measured(
    graph: gs.Graph,
    ctx: PassContext,
    nodes: list[gs.Node],
    method: str,
    samples: int,
    seed: int,
    prior: str,
) -> dict[str, tuple[np.ndarray, str]]:
    source = _measured_source(method, ctx) or "synthetic"
    model = model_io.to_model(graph)
    src = stats.measure_source(ctx, source, samples, seed, prior)
    axes = {n.inputs[0].name: -1 if n.op == "MatMul" else 1 for n in nodes}
    moments = observe.channel_moments(model, axes, src)
    return {n.name: (moments[n.inputs[0].name][0], source) for n in nodes}
