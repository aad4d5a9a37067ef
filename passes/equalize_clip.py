"""How equalize keeps a clipping activation (ReLU6 = Clip(0, hi)) exact.

Dividing channel i by s_i moves its clip point to hi / s_i. Three answers:

- "per-channel": the bound follows every channel exactly: Clip becomes Relu -> Min by
  a per-channel constant (equalize_apply.write_bounds). Exact for every input; but
  onnxruntime runs the Min in float between a DequantizeLinear and a QuantizeLinear.
- "constrain": a channel is scaled only when its pre-activation provably never
  reaches hi (interval bound u_i from a clipped input), with s_i >= u_i / hi; the
  others keep s_i = 1. Exact for every input, and the Clip stays (fused by onnxruntime).
- "stats": channels whose pre-activation reaches hi (mean + k std > hi, from the
  run's statistics) share one scale s*, so the Clip keeps one scalar bound hi / s*
  and stays exact for them; every other channel gets s_i >= s* (mean_i + k std_i) / hi,
  so its values stay under the new bound unless they exceed mean + k std (probability
  about Phi(-k) per value under the statistics). The Clip stays a Clip (fused).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from graphcomp import graph_utils
from graphcomp.pass_base import ChannelStats
from passes import dfq_layers as layers
from passes.dfq_chains import Link, bound_of
from passes.equalize_apply import input_bound

TINY = 1e-12


@dataclasses.dataclass
class ClipRule:
    """The constraint of one link with a clip on its path."""

    mode: str  # constrain or stats
    hi: float  # the clip bound in the layer's original units
    allowed: np.ndarray | None = None  # constrain: channels that may be scaled
    upper: np.ndarray | None = None  # stats: mean + k std per channel, original units
    saturating: np.ndarray | None = None  # stats: channels that reach the bound
    bound: float = 0.0  # stats: the current scalar bound


def clip_rule(link: Link, weight: np.ndarray, bias: np.ndarray, mode: str,
              stats: ChannelStats | None, k: float) -> ClipRule | None:
    """The rule of `link` under `mode`; None when the link is unconstrained."""
    if mode == "per-channel" or not link.bounds:
        return None
    if any(n.op != "Clip" for n in link.bounds) or mode == "stats" and stats is None:
        mode = "constrain"  # a Min bound or no statistics: only provable scaling
    hi_all = [np.broadcast_to(bound_of(n)[1].reshape(-1), (link.channels,)) for n in link.bounds]
    hi = float(np.min(hi_all))
    if not np.isfinite(hi):
        return None  # Clip(0, inf) is a Relu: nothing to keep
    if mode == "constrain":
        upper = provable_upper(link, weight, bias)
        return ClipRule(mode, hi, allowed=upper <= np.min(hi_all, axis=0))
    upper = np.asarray(stats.mean, np.float64) + k * np.asarray(stats.std, np.float64)
    return ClipRule(mode, hi, upper=upper, saturating=upper > hi, bound=hi)


def provable_upper(link: Link, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Upper bound of `first`'s pre-activation per channel (inf when the input is unbounded)."""
    bound = input_bound(link.first)
    if bound is None or link.first.op != "Conv":
        return np.full(link.channels, np.inf)
    rows = layers.out_rows(link.first, weight)
    return bias + bound * np.maximum(rows, 0.0).sum(axis=1)


def constrain(rule: ClipRule, s: np.ndarray, total: np.ndarray, link: Link,
              weight: np.ndarray, bias: np.ndarray, r1: np.ndarray, r2: np.ndarray
              ) -> np.ndarray:
    """The step scales `s` made to respect `rule` (current weights, cumulative `total`)."""
    if rule.mode == "constrain":
        upper = provable_upper(link, weight, bias)
        return np.where(rule.allowed, np.maximum(s, upper / rule.hi), 1.0)
    sat = rule.saturating
    star = 1.0
    if np.any(sat):
        star = float(np.sqrt(max(r1[sat].max(), TINY) / max(r2[sat].max(), TINY)))
    out = np.where(sat, star, s)
    need = star * (rule.upper / total) / rule.bound
    out = np.where(sat, out, np.maximum(out, need))
    rule.bound = rule.bound / star
    return out


def write_scalar_bound(graph: object, link: Link, rule: ClipRule) -> None:
    """Set every Clip on `link`'s path to the rule's scalar upper bound."""
    for node in link.bounds:
        dtype = np.float32
        if len(node.inputs) > 2 and node.inputs[2].name:
            old = graph_utils.const_input(node, 2)
            dtype = old.dtype if old is not None else dtype
            graph_utils.set_const_input(graph, node, 2, np.asarray(rule.bound, dtype=dtype))
        else:
            node.attrs["max"] = float(rule.bound)


def activation_floor(link: Link, stats: ChannelStats | None, k: float) -> np.ndarray | None:
    """Smallest cumulative scale per channel that keeps its activation under the tensor max.

    u_i is the channel's upper activation value (mean + k std through the activation,
    capped by a clip); scaling by s_i makes it u_i / s_i, which stays <= max_j u_j when
    s_i >= u_i / max_j u_j. None without statistics.
    """
    if stats is None:
        return None
    mean, std = np.asarray(stats.mean, np.float64), np.asarray(stats.std, np.float64)
    if not any(n.op in ("Relu", "Clip", "Min", "LeakyRelu", "PRelu") for n in link.path):
        upper = np.maximum(np.abs(mean - k * std), np.abs(mean + k * std))
    else:
        upper = np.maximum(mean + k * std, 0.0)
        for node in link.bounds:
            lo_hi = bound_of(node)
            if lo_hi is not None:
                upper = np.minimum(upper, np.broadcast_to(lo_hi[1].reshape(-1), upper.shape))
    top = float(upper.max()) if upper.size else 0.0
    return upper / top if top > TINY else None
