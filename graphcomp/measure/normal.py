"""Moments of a normal N(mu, sigma^2) pushed through an activation (DESIGN.md 5.4-5.5).

For ReLU E[y] = mu Phi(mu/sigma) + sigma phi(mu/sigma); for Clip(a, b) the doubly
clipped normal; for LeakyRelu/PRelu E[y] = E[relu(x)] + alpha (mu - E[relu(x)]).
Also the bounds and slopes of the activations these formulas know.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_graphsurgeon as gs

from graphcomp.core import graph_utils
from graphcomp.core.pass_base import ChannelStats

MIN_STD = 1e-8  # std floor: a dead channel still gets a finite z-score
_SQRT2 = math.sqrt(2.0)


def normal_cdf(z: np.ndarray) -> np.ndarray:
    """Phi(z), elementwise; +-inf allowed."""
    erf = np.vectorize(math.erf, otypes=[np.float64])
    return 0.5 * (1.0 + erf(np.asarray(z, dtype=np.float64) / _SQRT2))


def normal_pdf(z: np.ndarray) -> np.ndarray:
    """phi(z), elementwise; 0 at +-inf."""
    z = np.asarray(z, dtype=np.float64)
    with np.errstate(over="ignore"):
        return np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)


def clipped_moments(
    mean: np.ndarray, std: np.ndarray, lo: float = 0.0, hi: float = math.inf
) -> tuple[np.ndarray, np.ndarray]:
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


def leaky_moments(
    mean: np.ndarray, std: np.ndarray, alpha: np.ndarray | float
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


def activation_moments(
    stats: ChannelStats, act: gs.Node | None
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
    bounds: list[float | None] = [
        graph_utils.attr_float(node, "min"),
        graph_utils.attr_float(node, "max"),
    ]
    for k in (1, 2):
        if k < len(node.inputs) and node.inputs[k].name:
            value = graph_utils.const_input(node, k)
            if value is None:
                return None
            bounds[k - 1] = float(value)
    return (
        -math.inf if bounds[0] is None else bounds[0],
        math.inf if bounds[1] is None else bounds[1],
    )


def activation_slope(node: gs.Node) -> np.ndarray | float | None:
    """Negative-side slope of LeakyRelu (scalar) or PRelu (per channel); else None."""
    if node.op == "LeakyRelu":
        return graph_utils.attr_float(node, "alpha", 0.01)
    if node.op == "PRelu":
        slope = graph_utils.const_input(node, 1)
        return None if slope is None else slope.astype(np.float64).reshape(-1)
    return None
