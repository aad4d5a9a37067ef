"""Per-channel pre-activation statistics (mean, std) of every Conv/Gemm/MatMul output.

The shared source for the data-free steps (DESIGN.md 5.3-5.6): absorb-bias, bias
correction, activation ranges, and prune compensation. Sources, in precedence order:

- "bn": BatchNormalization beta / |gamma|, left in `ctx.stats` by fold-bn (Nagel et
  al., ICCV 2019, section 4.2). Always wins where present.
- "calibration": the float model run on the user's samples (`ctx.calibration`).
- "synthetic": the float model run on seeded generated inputs (no data).
- "analytic": means and variances propagated layer by layer from an input prior
  (graphcomp.stats_analytic), no onnxruntime run.

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
import math

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from graphcomp import graph_utils, observe
from graphcomp.errors import ConfigError
from graphcomp.pass_base import ChannelStats, PassContext

log = logging.getLogger(__name__)

LAYER_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
METHODS = ("auto", "data-free", "bn", "analytic", "synthetic", "calibration")
DEFAULT_DATA_FREE = "synthetic"
PRIORS = ("normal", "smooth")  # synthetic inputs: white N(0, 1) or 1/f natural-image-like
DEFAULT_PRIOR = "smooth"
SYNTHETIC_SAMPLES = 64
MIN_STD = 1e-8  # std floor: a dead channel still gets a finite z-score
_SQRT2 = math.sqrt(2.0)


def layer_outputs(graph: gs.Graph) -> dict[str, int]:
    """Output tensor name -> channel axis for every Conv/Gemm/MatMul with a constant weight."""
    out: dict[str, int] = {}
    for node in graph_utils.nodes_of(graph, LAYER_OPS):
        if graph_utils.const_input(node, 1) is None or not node.outputs:
            continue
        out[node.outputs[0].name] = 1 if node.op != "MatMul" else -1
    return out


def estimate(model: gs.Graph | onnx.ModelProto, ctx: PassContext, method: str = "auto",
             names: list[str] | None = None, samples: int = SYNTHETIC_SAMPLES,
             seed: int = 0, prior: str = DEFAULT_PRIOR) -> dict[str, ChannelStats]:
    """Statistics for the pre-activation tensors `names` (default: every layer output).

    Entries of `ctx.stats` with source "bn" take precedence under "auto" and "bn";
    entries of the resolved source itself are reused (passes that rescale a layer keep
    them in step). Tensors that no source can estimate are absent from the result.
    """
    if method not in METHODS:
        raise ConfigError(f"unknown statistics method '{method}'; choose from {METHODS}")
    graph = model if isinstance(model, gs.Graph) else gs.import_onnx(model)
    axes = layer_outputs(graph)
    wanted = [n for n in (names if names is not None else list(axes)) if n in axes]
    source = "bn" if method == "bn" else _data_source(method, ctx)
    kept = ("bn", source) if method in ("auto", "data-free", "bn") else (source,)
    tensors = graph.tensors()
    out = {n: ctx.stats[n] for n in wanted if n in ctx.stats and ctx.stats[n].source in kept
           and np.size(ctx.stats[n].mean) == channels(tensors.get(n))}
    rest = [n for n in wanted if n not in out]
    if not rest or method == "bn":
        return out
    if source == "analytic":
        from graphcomp import stats_analytic

        out.update(stats_analytic.propagate(graph, ctx, rest))
    else:
        out.update(_measure(graph, ctx, rest, axes, source, feeds(
            to_model(graph), ctx, source, samples, seed, prior)))
    return out


def channels(tensor: gs.Tensor | None) -> int | None:
    """Channel count of a layer output (from its producer's weight), None when unknown."""
    node = graph_utils.producer(tensor) if tensor is not None else None
    w = graph_utils.const_input(node, 1) if node is not None else None
    if w is None:
        return None
    if node.op == "Conv":
        return int(w.shape[0])
    if node.op == "ConvTranspose":
        return int(w.shape[1]) * int(graph_utils.attr(node, "group", 1))
    trans = node.op == "Gemm" and graph_utils.attr(node, "transB", 0)
    return int(w.shape[0] if trans else w.shape[-1])


def _data_source(method: str, ctx: PassContext) -> str:
    if method == "calibration" and ctx.calibration is None:
        raise ConfigError("statistics method 'calibration' needs --calibration-data")
    if method == "data-free":
        return DEFAULT_DATA_FREE
    if method != "auto":
        return method
    return "calibration" if ctx.calibration is not None else DEFAULT_DATA_FREE


def feeds(model: onnx.ModelProto, ctx: PassContext, source: str, samples: int, seed: int,
          prior: str) -> list[observe.Feeds]:
    """Input batches of a measured source: the user's samples or seeded synthetic ones."""
    if source == "calibration":
        return observe.calibration_feeds(model, ctx.calibration or {})
    if prior not in PRIORS:
        raise ConfigError(f"unknown synthetic prior '{prior}'; choose from {PRIORS}")
    if prior == "smooth":
        return observe.smooth_feeds(model, samples, seed, ctx.input_shapes)
    return observe.synthetic_feeds(model, samples, seed, ctx.input_shapes)


def _measure(graph: gs.Graph, ctx: PassContext, names: list[str], axes: dict[str, int],
             source: str, batches: list[observe.Feeds]) -> dict[str, ChannelStats]:
    """Run the float model (as it is now) on the given batches."""
    model = to_model(graph)
    out: dict[str, ChannelStats] = {}
    for axis in sorted(set(axes[n] for n in names)):
        group = [n for n in names if axes[n] == axis]
        for name, (mean, std) in observe.channel_moments(model, group, batches, axis).items():
            out[name] = ChannelStats(mean, np.maximum(std, MIN_STD), source)
    return out


def to_model(graph: gs.Graph) -> onnx.ModelProto:
    """A runnable ModelProto of the graph as it is now (the graph is not modified)."""
    copy = graph.copy()
    copy.cleanup(remove_unused_graph_inputs=False).toposort()
    model = gs.export_onnx(copy, do_type_check=False)
    model.ir_version = min(model.ir_version, onnx.IR_VERSION)
    return model


def normal_cdf(z: np.ndarray) -> np.ndarray:
    """Phi(z), elementwise; +-inf allowed."""
    erf = np.vectorize(math.erf, otypes=[np.float64])
    return 0.5 * (1.0 + erf(np.asarray(z, dtype=np.float64) / _SQRT2))


def normal_pdf(z: np.ndarray) -> np.ndarray:
    """phi(z), elementwise; 0 at +-inf."""
    z = np.asarray(z, dtype=np.float64)
    with np.errstate(over="ignore"):
        return np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)


def clipped_moments(mean: np.ndarray, std: np.ndarray, lo: float = 0.0,
                    hi: float = math.inf) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of clip(X, lo, hi) for X ~ N(mean, std^2), per channel."""
    mu = np.asarray(mean, dtype=np.float64)
    s = np.maximum(np.asarray(std, dtype=np.float64), MIN_STD)
    a, b = (lo - mu) / s, (hi - mu) / s
    pa, pb, da, db = normal_cdf(a), normal_cdf(b), normal_pdf(a), normal_pdf(b)
    mid = pb - pa
    fin_lo = 0.0 if math.isinf(lo) else lo
    fin_hi = 0.0 if math.isinf(hi) else hi
    a_da = np.where(np.isfinite(a), np.nan_to_num(a) * da, 0.0)
    b_db = np.where(np.isfinite(b), np.nan_to_num(b) * db, 0.0)
    m1 = fin_lo * pa + fin_hi * (1.0 - pb) + mu * mid + s * (da - db)
    inner = mu * mu * mid + 2.0 * mu * s * (da - db) + s * s * (mid + a_da - b_db)
    m2 = fin_lo**2 * pa + fin_hi**2 * (1.0 - pb) + inner
    return m1, np.sqrt(np.maximum(m2 - m1 * m1, 0.0))


def leaky_moments(mean: np.ndarray, std: np.ndarray, alpha: np.ndarray | float
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of LeakyRelu/PRelu(X) = max(X, 0) + alpha min(X, 0), X ~ N(mean, std^2)."""
    mu = np.asarray(mean, dtype=np.float64)
    pos_m, pos_s = clipped_moments(mu, std, 0.0, math.inf)
    neg_m, neg_s = clipped_moments(mu, std, -math.inf, 0.0)
    alpha = np.asarray(alpha, dtype=np.float64)
    m1 = pos_m + alpha * neg_m
    # E[max(X,0) min(X,0)] = 0, so E[y^2] = E[pos^2] + alpha^2 E[neg^2]
    m2 = pos_s**2 + pos_m**2 + alpha**2 * (neg_s**2 + neg_m**2)
    return m1, np.sqrt(np.maximum(m2 - m1 * m1, 0.0))


def activation_moments(stats: ChannelStats, act: gs.Node | None
                       ) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-channel (mean, std) after `act` (None = identity); None for unknown ops."""
    if act is None or act.op == "Identity":
        return np.asarray(stats.mean, np.float64), np.asarray(stats.std, np.float64)
    bounds = activation_bounds(act)
    if bounds is not None:
        return clipped_moments(stats.mean, stats.std, *bounds)
    alpha = activation_slope(act)
    if alpha is not None:
        return leaky_moments(stats.mean, stats.std, alpha)
    return None


def post_activation_mean(stats: ChannelStats, act: gs.Node | None) -> np.ndarray | None:
    """E[act(x)] per channel for x ~ N(stats.mean, stats.std^2); None for unknown ops."""
    moments = activation_moments(stats, act)
    return None if moments is None else moments[0]


def activation_bounds(node: gs.Node) -> tuple[float, float] | None:
    """(lo, hi) of a clipping activation: Relu (0, inf), Clip (min, max); else None."""
    if node.op == "Relu":
        return 0.0, math.inf
    if node.op == "Clip":
        return _clip_limits(node)
    return None


def _clip_limits(node: gs.Node) -> tuple[float, float] | None:
    """Clip's (min, max) from attributes (opset < 11) or constant inputs; None if unknown."""
    lo = graph_utils.attr(node, "min", None)
    hi = graph_utils.attr(node, "max", None)
    bounds: list[float | None] = [None if lo is None else float(lo),
                                  None if hi is None else float(hi)]
    for k in (1, 2):
        if k < len(node.inputs) and node.inputs[k].name:
            value = graph_utils.const_input(node, k)
            if value is None:
                return None
            bounds[k - 1] = float(value)
    return (-math.inf if bounds[0] is None else bounds[0],
            math.inf if bounds[1] is None else bounds[1])


def activation_slope(node: gs.Node) -> np.ndarray | float | None:
    """Negative-side slope of LeakyRelu (scalar) or PRelu (per channel); else None."""
    if node.op == "LeakyRelu":
        return float(graph_utils.attr(node, "alpha", 0.01))
    if node.op == "PRelu":
        slope = graph_utils.const_input(node, 1)
        return None if slope is None else slope.astype(np.float64).reshape(-1)
    return None
