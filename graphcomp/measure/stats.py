"""Per-channel pre-activation statistics (mean, std) of every Conv/Gemm/MatMul output.

The shared source for the data-free steps (DESIGN.md 5.3-5.6): absorb-bias, bias
correction, activation ranges, and prune compensation. Sources, in precedence order:

- "bn": BatchNormalization beta / |gamma|, left in `ctx.stats` by fold-bn (Nagel et
  al., ICCV 2019, section 4.2). Always wins where present.
- "bn-derived": a layer behind a global pool (a classifier head) whose input the "bn"
  statistics reach through one activation (graphcomp.measure.analytic.derived): no
  model run. Wins like "bn" (so a model with BN everywhere but its head needs no
  forward pass for its statistics).
- "calibration": the float model run on the user's samples (`ctx.calibration`).
- "synthetic": the float model run on seeded generated inputs (no data).
- "analytic": means and variances propagated layer by layer from an input prior
  (graphcomp.measure.analytic), no onnxruntime run.

`estimate(..., method="auto")` takes "bn" where present, then "calibration" when the
user gave samples, else `DEFAULT_DATA_FREE`; "data-free" is "auto" that never uses
the user's samples (for comparisons in one run that has samples). The helpers give
the moments of a normal N(mu, sigma^2) pushed through an activation: for ReLU
E[y] = mu Phi(mu/sigma) + sigma phi(mu/sigma); for Clip(a, b) the doubly clipped
normal; for LeakyRelu/PRelu E[y] = E[relu(x)] + alpha (mu - E[relu(x)]).

Will not estimate: layers whose weight is not a constant, tensors without a channel
axis; those names are simply absent from the result.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from graphcomp.core import graph_utils, model_io
from graphcomp.core.errors import ConfigError
from graphcomp.core.pass_base import ChannelStats, PassContext
from graphcomp.measure import analytic, inputs, normal, observe
from graphcomp.measure.fields import METHODS, SYNTHETIC_SAMPLES

log = logging.getLogger(__name__)

LAYER_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
DEFAULT_DATA_FREE = "synthetic"
PRIORS = inputs.PRIORS  # synthetic inputs: 1/f^2 natural-image-like or N(0, 1)
DEFAULT_PRIOR = inputs.DEFAULT_PRIOR


def layer_outputs(graph: gs.Graph) -> dict[str, int]:
    """Output tensor name -> channel axis for every Conv/Gemm/MatMul with a constant weight."""
    out: dict[str, int] = {}
    for node in graph_utils.nodes_of(graph, LAYER_OPS):
        if graph_utils.const_input(node, 1) is None or not node.outputs:
            continue
        out[node.outputs[0].name] = 1 if node.op != "MatMul" else -1
    return out


def estimate(
    model: gs.Graph | onnx.ModelProto,
    ctx: PassContext,
    method: str = "auto",
    names: list[str] | None = None,
    samples: int = SYNTHETIC_SAMPLES,
    seed: int = 0,
    prior: str = DEFAULT_PRIOR,
    extra: Mapping[str, int] | None = None,
) -> dict[str, ChannelStats]:
    """Statistics for the pre-activation tensors `names` (default: every layer output).

    Entries of `ctx.stats` with source "bn" take precedence under "auto" and "bn";
    entries of the resolved source itself are reused (passes that rescale a layer keep
    them in step). Tensors that no source can estimate are absent from the result.
    `extra` (tensor name -> channel axis, e.g. layer inputs) are measured in the same
    model run as the layers when the source is a measured one, and returned too.
    """
    if method not in METHODS:
        raise ConfigError(f"unknown statistics method '{method}'; choose from {METHODS}")
    graph = model if isinstance(model, gs.Graph) else model_io.import_graph(model)
    axes = layer_outputs(graph)
    wanted = [n for n in (names if names is not None else list(axes)) if n in axes]
    source = "bn" if method == "bn" else _data_source(method, ctx)
    from_bn = method in ("auto", "data-free", "bn")
    kept = ("bn", analytic.DERIVED, source) if from_bn else (source,)
    out = {n: ctx.stats[n] for n in wanted if n in ctx.stats and ctx.stats[n].source in kept}
    rest = [n for n in wanted if n not in out]
    if rest and from_bn:
        bn = {n: st for n, st in ctx.stats.items() if st.source == "bn"}
        out.update(analytic.derived(graph, bn, rest) if bn else {})
        rest = [n for n in wanted if n not in out]
    more = dict(extra or {}) if source in ("synthetic", "calibration") else {}
    if (not rest and not more) or method == "bn":
        return out
    if source == "analytic":
        out.update(analytic.propagate(graph, ctx, rest))
    else:
        src = measure_source(ctx, source, samples, seed, prior)
        out.update(_measure(graph, {**{n: axes[n] for n in rest}, **more}, src))
    return out


def _data_source(method: str, ctx: PassContext) -> str:
    if method == "calibration" and ctx.calibration is None:
        raise ConfigError("statistics method 'calibration' needs --calibration-data")
    if method == "data-free":
        return DEFAULT_DATA_FREE
    if method != "auto":
        return method
    return "calibration" if ctx.calibration is not None else DEFAULT_DATA_FREE


def measure_source(
    ctx: PassContext, source: str, samples: int, seed: int, prior: str
) -> inputs.Source:
    """The inputs of a measured source: the user's samples ("calibration") or a prior."""
    if source == "calibration":
        return inputs.Source(data=ctx.calibration or {})
    return inputs.Source(
        prior=inputs.canonical_prior(prior), samples=samples, seed=seed, shapes=ctx.input_shapes
    )


def _measure(
    graph: gs.Graph, axes: Mapping[str, int], src: inputs.Source
) -> dict[str, ChannelStats]:
    """Run the float model (as it is now) on `src` once, one session for every tensor."""
    model = model_io.to_model(graph)
    found = observe.channel_moments(model, axes, src)
    return {
        name: ChannelStats(mean, np.maximum(std, normal.MIN_STD), src.label)
        for name, (mean, std) in found.items()
    }
