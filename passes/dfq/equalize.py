"""Cross-layer equalization (CLE): even out per-channel weight ranges between layers.

For y = W2 f(W1 x + b1) + b2 with f positively homogeneous per channel, output channel
i of layer 1 is divided by s_i and input channel i of layer 2 multiplied by s_i, with
s_i = sqrt(r1_i / r2_i) (r = max |w| of the channel): both then have range
sqrt(r1_i r2_i). Links sharing a layer (conv -> depthwise -> conv) are swept in turn
until no scale moves by more than `tol` (in log) or `max_iter` sweeps.

A clipping activation (Clip(0, 6), Relu -> Min) is kept exact: clip="per-channel"
divides the bound by s_i too (Clip becomes Relu -> Min by a per-channel constant);
clip="range" also moves the scales so every bound stays past the
activation's quantization range (the bound then costs nothing in int8);
clip="constrain" scales a channel only when its pre-activation provably never reaches
the bound. See equalize_clip.py. With strength < 1 the converged scales are applied
as s^strength (partial equalization: less spread in the activations).
With act_aware, the scales are also floored so no channel's activation (mean +
clip_k std after the activation) grows past the largest one before equalization:
the per-tensor activation range then does not widen (s_i >= u_i / max_j u_j).
BN statistics in ctx.stats follow the scaling. Function-preserving up to rounding.
Will not touch the pairs `dfq_chains` rejects (residual junctions, Concat, shared
weights, non-homogeneous activations): they are skipped with the reason.
Ref: Nagel et al., "Data-Free Quantization Through Weight Equalization and Bias
Correction", ICCV 2019, section 4.1.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import onnx_graphsurgeon as gs

from graphcomp.core import graph_utils
from graphcomp.core.errors import ConfigError
from graphcomp.core.pass_base import ChannelStats, Pass, PassContext, PassResult
from graphcomp.measure import fields
from graphcomp.measure import stats as channel_stats
from graphcomp.passes.dfq import layers as layers
from graphcomp.passes.dfq.bounds import write_bounds
from graphcomp.passes.dfq.chains import Link, find_links
from graphcomp.passes.dfq.clip import (
    ClipRule,
    activation_floor,
    clip_rule,
    constrain,
    link_upper,
    range_fit,
)

log = logging.getLogger(__name__)

CLIP_MODES = ("per-channel", "range", "constrain")
TINY_RANGE = 1e-12  # channels with a smaller range are left at scale 1
MAX_STEP = 1e4  # largest scale one step may apply


@dataclasses.dataclass(frozen=True)
class EqualizeConfig:
    """How equalization runs."""

    clip: str = "per-channel"  # clipping activations, see passes/dfq/clip.py
    max_iter: int = 100  # sweeps over all links at most
    tol: float = 1e-4  # stop when every |log s| of a sweep is below this
    clip_k: float = 4.0  # act_aware: a channel's activation reaches mean + clip_k std
    act_aware: bool = False  # never scale a channel's activation past the tensor's range
    strength: float = 1.0  # apply the converged scales s^strength (1: full CLE)
    stats: str = "auto"  # act_aware: where the statistics come from (graphcomp.measure.stats)
    samples: int = channel_stats.SYNTHETIC_SAMPLES
    prior: str = channel_stats.DEFAULT_PRIOR
    seed: int = 0

    def __post_init__(self) -> None:
        if self.clip not in CLIP_MODES:
            raise ConfigError(f"clip must be one of {CLIP_MODES}, got '{self.clip}'")
        if self.max_iter < 1:
            raise ConfigError(f"max_iter must be >= 1, got {self.max_iter}")
        if not 0.0 < self.tol < 1.0:
            raise ConfigError(f"tol must be in (0, 1), got {self.tol}")
        if not 0.0 < self.strength <= 1.0:
            raise ConfigError(f"strength must be in (0, 1], got {self.strength}")
        if not self.clip_k > 0.0:
            raise ConfigError("clip_k must be > 0")
        fields.check(self)


@dataclasses.dataclass
class _State:
    """Working float64 copies of every linked layer's weight and bias."""

    weight: dict[str, np.ndarray]
    bias: dict[str, np.ndarray]
    total: list[np.ndarray]  # cumulative s per link


class EqualizePass(Pass):
    """Cross-layer equalization of Conv/Gemm chains through homogeneous activations."""

    name = "equalize"
    summary = "cross-layer equalization of per-channel weight ranges (function-preserving)"
    matches = frozenset({"Conv", "Gemm", "MatMul", "Clip", "Min"})
    creates = frozenset({"Relu", "Min"})
    lossless = True
    config_class = EqualizeConfig
    reads = frozenset({"stats"})  # act_aware: the activations' statistics
    writes = frozenset({"stats"})  # kept in step with the scaled channels
    invalidates = frozenset({"ranges"})  # activations are rescaled per channel

    def apply(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        """Equalize every provable link; report per-layer ranges and coverage."""
        result = PassResult(self.name)
        links, skips = find_links(graph)
        for node, reason in skips:
            result.skip(node, reason)
        before = channel_ranges(graph)
        state = _load(links)
        known = self._stats(graph, ctx, links)
        rules = [
            clip_rule(
                link, state.weight[link.first.name], state.bias[link.first.name], self.config.clip
            )
            for link in links
        ]
        floors = [
            activation_floor(link, known.get(link.first.outputs[0].name), self.config.clip_k)
            if self.config.act_aware
            else None
            for link in links
        ]
        sweeps, worst = 0, 0.0
        for sweeps in range(1, self.config.max_iter + 1):  # noqa: B007 - reported below
            worst = max(
                (_step(link, state, k, rules[k], floors[k]) for k, link in enumerate(links)),
                default=0.0,
            )
            if worst < self.config.tol:
                break
        if self.config.strength < 1.0 or self.config.clip == "range":
            state = _partial(
                links,
                state,
                self.config.strength,
                self._fits(links, known) if self.config.clip == "range" else None,
            )
        for k, link in enumerate(links):
            _store(graph, link, state, k, ctx)
            if rules[k] is None:
                write_bounds(graph, link, state.total[k])
        after = channel_ranges(graph)
        for k, link in enumerate(links):
            result.change(link.first, _detail(link, state.total[k], before, after))
        result.notes.update(_notes(graph, links, sweeps, worst < self.config.tol, before, after))
        return result

    def _stats(
        self, graph: gs.Graph, ctx: PassContext, links: list[Link]
    ) -> dict[str, ChannelStats]:
        cfg = self.config
        wanted = [
            link.first.outputs[0].name
            for link in links
            if cfg.act_aware or (cfg.clip == "range" and link.bounds)
        ]
        if not wanted:
            return {}
        return channel_stats.estimate(
            graph, ctx, cfg.stats, wanted, cfg.samples, cfg.seed, cfg.prior
        )

    def _fits(self, links: list[Link], known: dict[str, ChannelStats]) -> list:
        """Per link: (u, hi) for clip="range", None where it has no bound or no statistics."""
        return [
            link_upper(link, known.get(link.first.outputs[0].name), self.config.clip_k)
            for link in links
        ]


def _partial(links: list[Link], state: _State, strength: float, fits: list | None = None) -> _State:
    """The original weights with every link's converged scales raised to `strength`.

    With `fits` (clip="range"), the scales are then moved so the bounds stay past the
    activation range (equalize_clip.range_fit).
    """
    fresh = _load(links)
    for k, link in enumerate(links):
        s = state.total[k] ** strength
        if fits is not None and fits[k] is not None:
            s = range_fit(s, *fits[k])
        first = link.first
        fresh.weight[first.name] = layers.scale_out(first, fresh.weight[first.name], 1.0 / s)
        fresh.bias[first.name] = fresh.bias[first.name] / s
        _scale_readers(link, fresh.weight, s)
        fresh.total[k] = s
    return fresh


def _load(links: list[Link]) -> _State:
    weight, bias = {}, {}
    for link in links:
        for node in (link.first, *(r.node for r in link.readers)):
            weight[node.name] = graph_utils.checked_const_input(node, 1).astype(np.float64)
        bias[link.first.name] = layers.bias_of(link.first, link.channels)
    return _State(weight, bias, [np.ones(link.channels) for link in links])


def _step(
    link: Link, state: _State, k: int, rule: ClipRule | None, floor: np.ndarray | None
) -> float:
    """One equalization step of `link`; returns max |log s| applied."""
    first = link.first
    r1 = layers.out_ranges(first, state.weight[first.name])
    r2 = _reader_ranges(link, state.weight)
    live = (r1 > TINY_RANGE) & (r2 > TINY_RANGE)
    s = np.ones(link.channels)
    s[live] = np.clip(np.sqrt(r1[live] / r2[live]), 1.0 / MAX_STEP, MAX_STEP)
    if rule is not None:
        s = constrain(rule, s, link, state.weight[first.name], state.bias[first.name])
    if floor is not None:  # a channel's activation may not outgrow the tensor's range
        s = np.maximum(s, floor / state.total[k])
    state.weight[first.name] = layers.scale_out(first, state.weight[first.name], 1.0 / s)
    state.bias[first.name] = state.bias[first.name] / s
    _scale_readers(link, state.weight, s)
    state.total[k] = state.total[k] * s
    return float(np.max(np.abs(np.log(s)))) if s.size else 0.0


def _reader_ranges(link: Link, weight: dict[str, np.ndarray]) -> np.ndarray:
    """Per channel of `link.first`: max |w| over every reader's input slice of it."""
    parts = [
        layers.in_ranges(r.node, weight[r.node.name], r.total, r.block)[
            r.offset : r.offset + link.channels
        ]
        for r in link.readers
    ]
    return np.max(parts, axis=0)


def _scale_readers(link: Link, weight: dict[str, np.ndarray], s: np.ndarray) -> None:
    """Multiply every reader's input channels of `link.first` by s (new arrays)."""
    for r in link.readers:
        factor = np.ones(r.total)
        factor[r.offset : r.offset + link.channels] = s
        weight[r.node.name] = layers.scale_in(r.node, weight[r.node.name], factor, r.block)


def _store(graph: gs.Graph, link: Link, state: _State, k: int, ctx: PassContext) -> None:
    for node in (link.first, *(r.node for r in link.readers)):
        dtype = graph_utils.checked_const_input(node, 1).dtype
        graph_utils.set_const_input(graph, node, 1, state.weight[node.name].astype(dtype))
    dtype = graph_utils.checked_const_input(link.first, 1).dtype
    layers.set_bias(graph, link.first, state.bias[link.first.name], dtype)
    name, total = link.first.outputs[0].name, state.total[k]
    if name in ctx.stats:
        old = ctx.stats[name]
        ctx.stats[name] = ChannelStats(old.mean / total, old.std / total, old.source)
    for node in link.path:  # measured layer inputs on the path scale with the channels
        out = node.outputs[0].name
        if out not in ctx.stats:
            continue
        old, size = ctx.stats[out], np.size(ctx.stats[out].mean)
        if size % link.channels or len(link.readers) > 1:
            del ctx.stats[out]  # a channel mapping this cannot prove: measured again
            continue
        per = np.repeat(total, size // link.channels)  # a Flatten's channel blocks
        ctx.stats[out] = ChannelStats(old.mean / per, old.std / per, old.source)


def channel_ranges(graph: gs.Graph) -> dict[str, np.ndarray]:
    """Max |w| per output channel of every Conv/Gemm with a constant weight."""
    out = {}
    for node in graph_utils.nodes_of(graph, ("Conv", "Gemm")):
        w = graph_utils.const_input(node, 1)
        if w is not None:
            out[node.name] = layers.out_ranges(node, w.astype(np.float64))
    return out


def _detail(link: Link, total: np.ndarray, before: dict, after: dict) -> str:
    def spread(r: np.ndarray) -> float:
        return float(r.max() / max(float(np.median(r)), TINY_RANGE))

    name = link.first.name
    more = f" (+{len(link.readers) - 1} readers)" if len(link.readers) > 1 else ""
    return (
        f"with {link.second.name}{more}: s in [{total.min():.3g}, {total.max():.3g}], "
        f"max/median channel range {spread(before[name]):.1f} -> {spread(after[name]):.1f}"
        + (f", bound of {link.bounds[0].name} scaled per channel" if link.bounds else "")
    )


def _notes(
    graph: gs.Graph, links: list[Link], sweeps: int, converged: bool, before: dict, after: dict
) -> dict:
    layer_nodes = graph_utils.nodes_of(graph, ("Conv", "Gemm", "MatMul"))
    covered = {n.name for link in links for n in (link.first, *(r.node for r in link.readers))}
    size = {
        n.name: int(np.size(w))
        for n in layer_nodes
        if (w := graph_utils.const_input(n, 1)) is not None
    }
    total = max(sum(size.values()), 1)
    return {
        "links": len(links),
        "sweeps": sweeps,
        "converged": converged,
        "layers_covered": f"{len(covered & set(size))}/{len(size)}",
        "params_covered": round(sum(size[n] for n in covered if n in size) / total, 4),
        "channel_ranges": {
            n: {"before": before[n].round(6).tolist(), "after": after[n].round(6).tolist()}
            for n in before
        },
    }
