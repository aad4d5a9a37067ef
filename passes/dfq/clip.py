"""How equalize keeps a clipping activation (ReLU6 = Clip(0, hi)) exact.

Dividing channel i by s_i moves its clip point to hi / s_i. Two answers:

- "per-channel": the bound follows every channel exactly: Clip becomes Relu -> Min by
  a per-channel constant (equalize_apply.write_bounds). Exact for every input; but
  onnxruntime runs the Min in float between a DequantizeLinear and a QuantizeLinear.
- "constrain": a channel is scaled only when its pre-activation provably never
  reaches hi (interval bound u_i from a clipped input), with s_i >= u_i / hi; the
  others keep s_i = 1. Exact for every input, and the Clip stays (fused by onnxruntime).
- "range": the per-channel bound is written as for "per-channel" (exact float model),
  and the converged scales are moved to the nearest (in log) scales whose every bound
  hi_i / s_i lies at or past the tensor's activation range max_j u_j / s_j (u_j: the
  channel's upper value, mean + clip_k std capped at hi, from the statistics). The
  quantizer then saturates before any bound, the Min on the codes is a no-op, and qdq
  drops it (passes/qdq/clamp.py): the int8 model runs as fast as one without
  equalization, and equals the exact-ReLU6 model quantized with that range.

A third answer was measured and dropped: channels that reach the clip (by their
statistics) sharing one scale so the Clip keeps a scalar bound. On an ImageNet
EfficientNet-Lite0 the BN statistics misjudged which channels reach 6 and the float
model's output moved by 28% (relative), so it is not offered.

`activation_floor` gives equalize's act_aware option its per-channel lower bounds.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from graphcomp.core.pass_base import ChannelStats
from graphcomp.passes.dfq import layers as layers
from graphcomp.passes.dfq.bounds import input_bound
from graphcomp.passes.dfq.chains import Link, bound_of

TINY = 1e-12


@dataclasses.dataclass
class ClipRule:
    """The constraint of one link with a clip on its path (clip="constrain")."""

    hi: float  # the clip bound in the layer's original units
    allowed: np.ndarray  # channels that may be scaled (provably never clipped)


def clip_rule(link: Link, weight: np.ndarray, bias: np.ndarray, mode: str) -> ClipRule | None:
    """The rule of `link` under `mode`; None when the link is unconstrained."""
    if mode in ("per-channel", "range") or not link.bounds:
        return None
    hi_all = [
        np.broadcast_to(b[1].reshape(-1), (link.channels,))
        for n in link.bounds
        if (b := bound_of(n)) is not None  # every path bound has one (chains checked)
    ]
    hi = float(np.min(hi_all))
    if not np.isfinite(hi):
        return None  # Clip(0, inf) is a Relu: nothing to keep
    upper = provable_upper(link, weight, bias)
    return ClipRule(hi, allowed=upper <= np.min(hi_all, axis=0))


def provable_upper(link: Link, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Upper bound of `first`'s pre-activation per channel (inf when the input is unbounded)."""
    bound = input_bound(link.first)
    if bound is None or link.first.op != "Conv":
        return np.full(link.channels, np.inf)
    rows = layers.out_rows(link.first, weight)
    return bias + bound * np.maximum(rows, 0.0).sum(axis=1)


def constrain(
    rule: ClipRule, s: np.ndarray, link: Link, weight: np.ndarray, bias: np.ndarray
) -> np.ndarray:
    """The step scales `s` made to respect `rule` (current weights)."""
    upper = provable_upper(link, weight, bias)
    return np.where(rule.allowed, np.maximum(s, upper / rule.hi), 1.0)


def range_fit(total: np.ndarray, upper: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """The scales nearest `total` (sum of squared log ratios) with u_j T <= s_j <= hi_j T.

    T = max_i s_i / hi_i makes every bound hi_i / s_i >= 1 / T >= every range u_j / s_j.
    The best T is one of the break points total_j / hi_j, total_j / u_j.
    """
    upper = np.clip(upper, 0.0, hi)
    live = upper > TINY
    points = np.concatenate([total / hi, total[live] / upper[live]])
    best, best_cost = total, np.inf
    for t in np.unique(points):
        s = np.clip(total, upper * t, hi * t)
        cost = float(np.sum(np.log(s / total) ** 2))
        if cost < best_cost:
            best, best_cost = s, cost
    return best


def link_upper(
    link: Link, stats: ChannelStats | None, k: float
) -> tuple[np.ndarray, np.ndarray] | None:
    """(u, hi) per channel of a clipped link: mean + k std capped at the bound, the bound."""
    if stats is None or not link.bounds:
        return None
    his = [b[1] for n in link.bounds if (b := bound_of(n)) is not None]
    if len(his) != len(link.bounds):
        return None
    hi = np.min([np.broadcast_to(b.reshape(-1), (link.channels,)) for b in his], axis=0)
    if not np.all(np.isfinite(hi)) or np.any(hi <= 0):
        return None
    mean, std = np.asarray(stats.mean, np.float64), np.asarray(stats.std, np.float64)
    return np.minimum(np.maximum(mean + k * std, 0.0), hi), hi


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
