"""How equalize keeps a clipping activation (ReLU6 = Clip(0, hi)) exact.

Dividing channel i by s_i moves its clip point to hi / s_i. Two answers:

- "per-channel": the bound follows every channel exactly: Clip becomes Relu -> Min by
  a per-channel constant (equalize_apply.write_bounds). Exact for every input; but
  onnxruntime runs the Min in float between a DequantizeLinear and a QuantizeLinear.
- "constrain": a channel is scaled only when its pre-activation provably never
  reaches hi (interval bound u_i from a clipped input), with s_i >= u_i / hi; the
  others keep s_i = 1. Exact for every input, and the Clip stays (fused by onnxruntime).

A third answer was measured and dropped: channels that reach the clip (by their
statistics) sharing one scale so the Clip keeps a scalar bound. On an ImageNet
EfficientNet-Lite0 the BN statistics misjudged which channels reach 6 and the float
model's output moved by 28% (relative), so it is not offered.

`activation_floor` gives equalize's act_aware option its per-channel lower bounds.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from graphcomp.pass_base import ChannelStats
from passes import dfq_layers as layers
from passes.dfq_chains import Link, bound_of
from passes.equalize_apply import input_bound

TINY = 1e-12


@dataclasses.dataclass
class ClipRule:
    """The constraint of one link with a clip on its path (clip="constrain")."""

    hi: float  # the clip bound in the layer's original units
    allowed: np.ndarray  # channels that may be scaled (provably never clipped)


def clip_rule(link: Link, weight: np.ndarray, bias: np.ndarray, mode: str
              ) -> ClipRule | None:
    """The rule of `link` under `mode`; None when the link is unconstrained."""
    if mode == "per-channel" or not link.bounds:
        return None
    hi_all = [np.broadcast_to(bound_of(n)[1].reshape(-1), (link.channels,)) for n in link.bounds]
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


def constrain(rule: ClipRule, s: np.ndarray, link: Link, weight: np.ndarray,
              bias: np.ndarray) -> np.ndarray:
    """The step scales `s` made to respect `rule` (current weights)."""
    upper = provable_upper(link, weight, bias)
    return np.where(rule.allowed, np.maximum(s, upper / rule.hi), 1.0)


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
