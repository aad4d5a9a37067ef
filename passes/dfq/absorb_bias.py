"""High-bias absorption: move the always-on part of a channel into the next layer's bias.

For a link y = W2 f(W1 x + b1) + b2 with f a ReLU-type activation and the
pre-activation of channel i ~ N(beta_i, gamma_i^2), c_i = max(0, beta_i - k gamma_i)
is (with probability Phi(k)) always passed through f unchanged, so
f(W1 x + b1 - c) = f(W1 x + b1) - c and W2 (a - c) + (b2 + W2 c) = W2 a + b2, with W2 c
summed over each channel's kernel (or Flatten block). This shrinks the activation
range the quantizer has to cover after equalization. Clipping bounds on the path
become hi_i - c_i (Clip turns into Relu -> Min per channel), or with clip="stats" the
Clip is kept and channels reaching it (mean + clip_k std > hi) absorb nothing. Exact when every
pre-activation value stays above c (and away from zero-padded borders, where the
padding would stand for -c: such links are skipped unless padded=true); the report
gives the share of channels absorbed and the expected share of values below c, Phi(-k).

Statistics come from graphcomp.measure.stats ("bn" where BatchNorm was folded, else the
chosen data-free or calibration source) and are shifted in ctx.stats.
Will not touch: links without a ReLU-type activation, a MatMul consumer (no bias),
links `dfq_chains` rejects. Ref: Nagel et al., ICCV 2019, section 4.2.2.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import onnx_graphsurgeon as gs

from graphcomp.core import graph_utils
from graphcomp.core.errors import ConfigError
from graphcomp.core.pass_base import ChannelStats, Pass, PassContext, PassResult
from graphcomp.measure import fields
from graphcomp.measure import stats as channel_stats
from graphcomp.passes.dfq import layers as layers
from graphcomp.passes.dfq.bounds import write_bounds
from graphcomp.passes.dfq.chains import Link, bound_of, find_links

RELU_LIKE = ("Relu", "LeakyRelu", "PRelu", "Clip", "Min")


@dataclasses.dataclass(frozen=True)
class AbsorbBiasConfig:
    """How much of each channel is absorbed and where its statistics come from."""

    k: float = 3.0  # c = max(0, mean - k * std)
    clip: str = "per-channel"  # per-channel: Clip -> Relu + Min(hi - c); stats: keep the Clip
    clip_k: float = 4.0  # clip="stats": channels with mean + clip_k std > hi keep c = 0
    stats: str = "auto"  # auto, data-free, bn, analytic, synthetic, calibration
    samples: int = channel_stats.SYNTHETIC_SAMPLES
    prior: str = channel_stats.DEFAULT_PRIOR  # synthetic inputs: smooth (1/f) or normal
    seed: int = 0
    padded: bool = False  # also absorb into zero-padded convs (wrong by W2 c on borders)

    def __post_init__(self) -> None:
        if not self.k >= 0.0:
            raise ConfigError(f"k must be >= 0, got {self.k}")
        if self.clip not in ("per-channel", "stats"):
            raise ConfigError(f"clip must be 'per-channel' or 'stats', got '{self.clip}'")
        fields.check(self)


class AbsorbBiasPass(Pass):
    """High-bias absorption across ReLU-type links."""

    name = "absorb-bias"
    summary = "move each channel's always-on bias (mean - k std) into the next layer"
    matches = frozenset({"Conv", "Gemm", "Clip", "Min"})
    creates = frozenset({"Relu", "Min"})
    lossless = False
    config_class = AbsorbBiasConfig
    reads = frozenset({"stats"})
    writes = frozenset({"stats"})  # means shifted by the absorbed c
    invalidates = frozenset({"ranges"})  # activations are shifted per channel

    def apply(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        """Absorb every link with a ReLU-type activation and a known pre-activation."""
        result = PassResult(self.name)
        links, skips = find_links(graph)
        for node, reason in skips:
            result.skip(node, reason)
        todo = []
        for link in links:
            if why := _link_reason(link, self.config.padded):
                result.skip(link.first, why)
            else:
                todo.append(link)
        cfg = self.config
        names = [link.first.outputs[0].name for link in todo]
        known = (
            channel_stats.estimate(graph, ctx, cfg.stats, names, cfg.samples, cfg.seed, cfg.prior)
            if todo
            else {}
        )
        absorbed = 0
        for link in todo:
            st = known.get(link.first.outputs[0].name)
            if st is None:
                result.skip(link.first, "no statistics for its output")
                continue
            c = np.maximum(0.0, np.asarray(st.mean, np.float64) - cfg.k * st.std)
            keep_clip = cfg.clip == "stats" and _scalar_clip(link) is not None
            if keep_clip:  # channels that reach the clip keep it exact: nothing absorbed
                c = np.where(st.mean + cfg.clip_k * st.std > _scalar_clip(link), 0.0, c)
            if not np.any(c > 0):
                result.skip(
                    link.first,
                    f"no channel has mean - {cfg.k:g} std > 0"
                    + (" below the clip" if keep_clip else ""),
                )
                continue
            _absorb(graph, link, c, keep_clip)
            ctx.stats[link.first.outputs[0].name] = ChannelStats(st.mean - c, st.std, st.source)
            absorbed += 1
            result.change(
                link.first,
                f"absorbed c into {link.second.name}: "
                f"{int(np.sum(c > 0))}/{c.size} channels, max c {c.max():.4g} "
                f"(stats: {st.source})",
            )
        result.notes.update(
            links=len(links),
            absorbed=absorbed,
            values_below_c=f"{0.5 * math.erfc(cfg.k / math.sqrt(2)):.2%}",
        )
        return result


def _link_reason(link: Link, padded: bool) -> str | None:
    if len(link.readers) > 1:
        return f"the channels reach {len(link.readers)} layers through branches/Concat"
    if not any(n.op in RELU_LIKE for n in link.path):
        return "no ReLU-type activation between the layers (nothing always-on to absorb)"
    if link.second.op == "MatMul":
        return f"{link.second.name} is a MatMul without a bias to take W2 c"
    if not padded and (
        _zero_padded(link.second) or any(n.op == "Pad" or _zero_padded(n) for n in link.path)
    ):
        return (
            f"{link.second.name} or its path zero-pads: on the border the padding would "
            "stand for -c (set padded=true to absorb anyway)"
        )
    return None


def _zero_padded(node: gs.Node) -> bool:
    """True when a Conv/AveragePool pads its input with zeros that enter the result."""
    if node.op not in ("Conv", "AveragePool"):
        return False
    auto = graph_utils.attr_str(node, "auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        return True
    pads = graph_utils.attr_ints(node, "pads")
    if node.op == "AveragePool" and not graph_utils.attr_int(node, "count_include_pad", 0):
        return False
    return pads is not None and any(p != 0 for p in pads)


def _scalar_clip(link: Link) -> float | None:
    """The smallest upper bound of the Clips on `link`'s path (None: a Min or no Clip)."""
    if not link.bounds or any(n.op != "Clip" for n in link.bounds):
        return None
    bounds = [bound_of(n) for n in link.bounds]
    highs = [b[1] for b in bounds if b is not None]
    if len(highs) < len(bounds):
        return None
    return float(min(np.min(hi) for hi in highs))


def _absorb(graph: gs.Graph, link: Link, c: np.ndarray, keep_clip: bool) -> None:
    first, second = link.first, link.second
    dtype = graph_utils.checked_const_input(first, 1).dtype
    layers.set_bias(graph, first, layers.bias_of(first, link.channels) - c, dtype)
    w2 = graph_utils.checked_const_input(second, 1).astype(np.float64) * layers.alpha(second)
    shift = layers.input_sums(second, w2, link.channels, link.block) @ c
    outs = layers.out_channels_of(second)
    layers.set_bias(graph, second, layers.bias_of(second, outs) + shift, dtype)
    if not keep_clip:
        write_bounds(graph, link, np.ones(link.channels), c)
