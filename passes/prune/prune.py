"""prune: structured channel removal over channel groups (DESIGN.md 3).

Channels are removed whole: a unit is every tensor channel that must go together
(passes/prune/groups.py: residual Add/Mul coupling, depthwise in/out, Concat offsets,
Split/Slice, Flatten/Reshape blocks into Gemm, per-channel constants). Which units go
is decided data-free (passes/prune/select.py): by default the output energy a unit
feeds its consumers, ||W2[:, u]||^2 Var[x_u]; or L1/L2 filter norms or BN |gamma|.
`ratio` removes that share of every group; `macs` (fraction of MACs to keep) lets a
greedy schedule choose per-group ratios where the relative loss per MAC saved is
smallest. `latency` (fraction of the measured latency to keep) runs the same schedule
on each node's measured kernel time instead of its MACs (graphcomp/measure/cost.py:
one thread, batch 1; elementwise nodes scale with their channels), and the output is
measured again for the report. Kept counts are multiples of `round_to` (odd channel
counts made onnxruntime 2-3x slower in our measurements; multiples of 8 run at par).
With `compensate` the mean of each removed channel is folded into its consumers' biases
(passes/prune/compensate.py).

Will not touch (each blocked group is a skip with its reason): groups reaching a graph
output, an op without a rule, a run-time shape, a grouped (not depthwise) conv, a
shared weight, a subgraph. Never removes every channel of a tensor.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from graphcomp.core import analysis, graph_utils, model_io
from graphcomp.core.errors import ConfigError
from graphcomp.core.pass_base import Pass, PassContext, PassResult
from graphcomp.measure import cost as measure_cost
from graphcomp.measure import fields, inputs, speed
from graphcomp.passes.prune import apply as prune_apply
from graphcomp.passes.prune import compensate as prune_comp
from graphcomp.passes.prune import groups as prune_groups
from graphcomp.passes.prune import prep as prune_prep
from graphcomp.passes.prune import reconstruct as prune_recon
from graphcomp.passes.prune import score as prune_score
from graphcomp.passes.prune import select as prune_select
from graphcomp.passes.prune import walk
from graphcomp.passes.prune.groups import ChannelGraph

ROUND_STEP = 0.8  # auto rounds keep at least this share of MACs each (glyph MobileNetV2 at
# 0.5x: 1 round 0.46 accuracy, 4 rounds 0.72; EfficientNet-Lite0 at 0.8x: 1 round best)
EPS = 1e-9
BUDGET_SLACK = 0.02  # a MAC target missed by more than this (channel rounding) is warned
LATENCY_SLACK = 0.05  # a measured latency above target + this is warned (timing noise)
MAX_REPAIR = 10_000  # cap on units restored so that no tensor loses every channel


@dataclasses.dataclass(frozen=True)
class PruneConfig:
    """Fields of `prune(...)`; `macs` (fraction of MACs kept) overrides `ratio`."""

    ratio: float = 0.3  # share of each group's channels removed
    macs: float | None = None  # e.g. 0.5: keep half the model's MACs
    latency: float | None = None  # e.g. 0.7: keep 70% of its measured latency (not with macs)
    importance: str = "energy"  # energy | l1 | l2 | bn
    compensate: bool = True  # fold removed channels' means into the next biases
    reconstruct: bool = True  # least-squares refit of the next layers (data or noise)
    min_channels: int = 1  # never keep fewer channels in a group
    round_to: int = 8  # kept counts are multiples of this (or the whole group)
    layers: str = ""  # per-layer ratios by producer name glob: "conv1*:0.5;fc*:0"
    prior: str = inputs.DEFAULT_PRIOR  # data-free inputs for statistics: smooth | normal
    samples: int = fields.SYNTHETIC_SAMPLES  # synthetic inputs for statistics and refits
    seed: int = 0
    rounds: int = 0  # a MAC budget reached in this many re-measured steps; 0: auto

    def __post_init__(self) -> None:
        if not 0.0 <= self.ratio < 1.0:
            raise ConfigError(f"ratio must be in [0, 1), got {self.ratio}")
        for name in ("macs", "latency"):
            value = getattr(self, name)
            if value is not None and not 0.0 < value <= 1.0:
                raise ConfigError(f"{name} must be in (0, 1], got {value}")
        if self.macs is not None and self.latency is not None:
            raise ConfigError("give one budget: macs or latency, not both")
        if self.importance not in prune_score.IMPORTANCE:
            raise ConfigError(
                f"importance must be one of {prune_score.IMPORTANCE}, got '{self.importance}'"
            )
        fields.check(self)
        if self.round_to < 1 or self.min_channels < 1 or self.rounds < 0:
            raise ConfigError("round_to and min_channels must be >= 1, rounds >= 0")
        try:
            prune_select.parse_overrides(self.layers)
        except ValueError as e:
            raise ConfigError(str(e)) from e

    @property
    def target(self) -> float | None:
        """The budget's fraction: of MACs or of measured latency; None for `ratio`."""
        return self.macs if self.macs is not None else self.latency

    def steps(self) -> int:
        """Rounds of a budget: as set, or auto (each round keeps >= ROUND_STEP)."""
        if self.target is None:
            return 1
        if self.rounds:
            return self.rounds
        return max(1, math.ceil(math.log(self.target) / math.log(ROUND_STEP) - EPS))

    def budget(self) -> prune_select.Budget:
        """The selection budget these fields describe."""
        return prune_select.Budget(
            self.ratio,
            self.target,
            self.min_channels,
            self.round_to,
            prune_select.parse_overrides(self.layers),
        )


class PrunePass(Pass):
    """Structured channel pruning over channel groups."""

    name = "prune"
    summary = "remove whole channels (ratio, MAC or latency target), data-free, bias compensated"
    matches = frozenset(
        {
            "Conv",
            "ConvTranspose",
            "Gemm",
            "MatMul",
            "BatchNormalization",
            "InstanceNormalization",
            "PRelu",
            "Clip",
            "Add",
            "Sub",
            "Mul",
            "Div",
            "Max",
            "Min",
            "Sum",
            "Mean",
            "Pow",
            "Where",
            "Concat",
            "Split",
            "Slice",
            "Reshape",
            "Resize",
        }
    )
    creates = frozenset()
    lossless = False
    config_class = PruneConfig
    reads = frozenset({"stats"})  # BN scales / moments for importance and compensation
    invalidates = frozenset({"stats", "ranges"})  # channel counts and next layers change

    def apply(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        """Find the groups, choose the units, refit or compensate, slice; report each group.

        With `rounds` > 1 a MAC budget is reached in steps of equal ratio, statistics and
        refits measured again on the partly pruned model before each step.
        """
        cfg: PruneConfig = self.config
        result = PassResult(self.name)
        rounds = cfg.steps()
        original = None
        key = "macs" if cfg.latency is None else "latency_us"
        before = model_io.to_model(graph) if cfg.latency is not None else None
        for r in range(rounds):
            if r:
                prune_prep.forget_shapes(graph)
            target = None
            if cfg.target is not None:  # this step's share of the original, made relative
                target = cfg.target ** ((r + 1) / rounds)
                if original is not None:
                    target *= original / max(result.notes[f"{key}_expected"], 1e-9)
            if not self._round(graph, ctx, result, target, first=r == 0):
                break
            original = original or result.notes[f"{key}_before"]
        if before is not None and result.changes:
            _measured_latency(before, graph, ctx, result)
        if warning := _budget_warning(cfg, result.notes):
            result.notes["budget_warning"] = warning
        return result

    def _round(
        self,
        graph: gs.Graph,
        ctx: PassContext,
        result: PassResult,
        target: float | None,
        first: bool,
    ) -> bool:
        cfg: PruneConfig = self.config
        cg = walk.analyze(graph)
        if first:
            _report_blocked(cg, result)
        groups = [g for g in cg.groups if g.prunable]
        result.notes.update(groups=len(cg.groups), prunable=len(groups))
        if not groups:
            return False
        moments = (
            _moments(self, cg, ctx, result)
            if (cfg.compensate or cfg.importance == "energy")
            else None
        )
        bn_std = prune_score.bn_scales(cg, dict(ctx.stats)) if cfg.importance == "bn" else {}
        scores = prune_score.scores(
            cg, groups, cfg.importance, moments, bn_std, centered=cfg.compensate
        )
        removed = _choose(cg, groups, scores, cfg, ctx, result, target)
        keep = cg.keep_masks(_repair(cg, removed))
        refitted = _refit(cg, ctx, keep, moments if cfg.compensate else None, cfg, result)
        result.notes["reconstructed"] = result.notes.get("reconstructed", 0) + len(refitted)
        if cfg.compensate and moments is not None:
            done, missed = prune_comp.compensate(cg, keep, moments, frozenset(refitted))
            result.notes.update(compensated=done, not_compensated=missed)
        nodes = {n.name: n for n in graph.nodes}
        for name, (before, after, detail) in prune_apply.remove(cg, keep).items():
            result.change(nodes[name], detail, before, after)
        result.notes["channels_removed"] = result.notes.get("channels_removed", 0) + int(
            sum((~k).sum() for n, k in keep.items() if _is_producer_space(cg, n))
        )
        return True


def _budget_warning(cfg: PruneConfig, notes: dict[str, Any]) -> str | None:
    """What the summary says when nothing is pruned or a budget is missed."""
    if not notes.get("prunable"):
        return "nothing to prune: no channel group can be removed (reasons under skipped)"
    if cfg.latency is not None and "latency_after_fraction" in notes:
        reached = notes["latency_after_fraction"]
        if reached <= cfg.latency + LATENCY_SLACK:
            return None
        return (
            f"latency={cfg.latency:g} is not met: the output measured {reached:.3f}x the "
            "input's latency (one thread, batch 1; the estimate was "
            f"{notes['latency_us_expected'] / notes['latency_us_before']:.3f}x)"
        )
    if cfg.macs is None or not notes.get("macs_before"):
        return None
    reached = notes["macs_expected"] / notes["macs_before"]
    if reached <= cfg.macs + BUDGET_SLACK:
        return None
    return (
        f"macs={cfg.macs:g} is out of reach: the prunable channel groups bring the "
        f"model only to {reached:.3f}x its MACs"
    )


def _measured_latency(
    before: onnx.ModelProto, graph: gs.Graph, ctx: PassContext, result: PassResult
) -> None:
    """The output's latency over the input's, as the report states it.

    Paired as verification measures it (full onnxruntime optimizations); the profile's
    totals where that is not measured (a slow or lazy model).
    """
    after = model_io.to_model(graph)
    ratio = speed.latency_ratio(before, after, ctx.input_shapes)
    if ratio is None:
        ratio = measure_cost.node_costs(after, ctx.input_shapes).total / max(
            result.notes["latency_us_before"], 1e-9
        )
    result.notes["latency_after_fraction"] = round(ratio, 4)


def _refit(
    cg: ChannelGraph,
    ctx: PassContext,
    keep: dict[str, np.ndarray],
    moments: prune_score.Moments | None,
    cfg: PruneConfig,
    result: PassResult,
) -> list[str]:
    if not cfg.reconstruct:
        return []
    try:
        return prune_recon.reconstruct(cg, ctx, keep, moments, cfg.prior, cfg.seed, cfg.samples)
    except Exception as e:  # noqa: BLE001 - e.g. inputs the model rejects; compensate instead
        result.notes["reconstruct_error"] = f"{type(e).__name__}: {str(e)[:200]}"
        return []


def _report_blocked(cg: ChannelGraph, result: PassResult) -> None:
    for g in cg.groups:
        if g.prunable:
            continue
        node = graph_utils.producer(cg.spaces[g.spaces[0]].tensor)
        if node is not None:
            result.skip(node, f"group {g.index} ({g.units.size} channels): {g.reason}")


def _is_producer_space(cg: ChannelGraph, name: str) -> bool:
    return any(b.out == name and b.kind in prune_apply.LAYERS for b in cg.bindings)


def _moments(
    self: PrunePass, cg: ChannelGraph, ctx: PassContext, result: PassResult
) -> prune_score.Moments:
    names = prune_comp.consumer_spaces(cg)
    try:
        cfg = self.config
        moments, source = prune_comp.measure(cg, ctx, names, cfg.prior, cfg.samples, cfg.seed)
    except Exception as e:  # noqa: BLE001 - e.g. inputs the model rejects; go on without
        result.notes["statistics_error"] = f"{type(e).__name__}: {str(e)[:200]}"
        moments, source = {}, "none"
    from_bn = {} if source == "calibration" else prune_comp.bn_moments(cg, ctx, names)
    for name, (mean, second) in from_bn.items():  # BN means, measured spreads
        var = moments[name][1] - moments[name][0] ** 2 if name in moments else second - mean**2
        moments[name] = (mean, var + mean**2)
    result.notes["statistics"] = {"bn": len(from_bn), source: len(moments) - len(from_bn)}
    return moments


def _choose(
    cg: ChannelGraph,
    groups: list[prune_groups.Group],
    scores: dict[int, np.ndarray],
    cfg: PruneConfig,
    ctx: PassContext,
    result: PassResult,
    target: float | None,
) -> np.ndarray:
    budget = dataclasses.replace(cfg.budget(), target=target)
    base, total = _layer_macs(cg.graph, ctx)
    macs = prune_select.MacModel(cg, base, total)
    cost = macs
    if cfg.latency is not None:  # the same schedule, on measured kernel times
        costs = measure_cost.node_costs(model_io.to_model(cg.graph), ctx.input_shapes)
        cost = prune_select.MacModel(cg, costs.nodes, costs.total, elementwise=True)
        result.notes.setdefault("latency_us_before", round(costs.total, 1))
    if target is None:
        removed = prune_select.select_ratio(groups, scores, budget)
    else:
        removed = prune_select.select_macs(cg, groups, scores, budget, cost)
    keep = cg.keep_masks(removed)
    for model in {id(m): m for m in (macs, cost)}.values():
        for name in model.gone:
            model.gone[name] = {0: int((~keep[name]).sum())}
    result.notes.setdefault("macs_before", total)
    result.notes["macs_expected"] = int(round(macs.total()))
    if cost is not macs:
        result.notes["latency_us_expected"] = round(cost.total(), 1)
    return removed


def _layer_macs(graph: gs.Graph, ctx: PassContext) -> tuple[dict[str, int], int]:
    model = model_io.to_model(graph)
    shapes = analysis.infer_shapes(model, ctx.input_shapes)
    per_node = {n.name: analysis.node_macs(n, shapes) for n in model.graph.node}
    return per_node, int(sum(per_node.values()))


def _repair(cg: ChannelGraph, removed: np.ndarray) -> np.ndarray:
    """Restore units until no space loses all of its channels."""
    gone = set(removed.tolist())
    for _ in range(MAX_REPAIR):
        empty = next(
            (
                roots
                for roots in cg.roots.values()
                if roots.size and all(r in gone for r in roots.tolist())
            ),
            None,
        )
        if empty is None:
            break
        gone.discard(int(empty[0]))
    return np.array(sorted(gone), dtype=np.int64)
