"""Planning for the svd pass: find layers, measure, factor, choose a rank per layer.

Steps: MACs per node (graphcomp.core.analysis) -> splittable layers (svd_layers) ->
overrides and size filter -> input statistics when whitening (svd_probe) -> SVD of
every form (svd_factor) -> per-layer rule (energy / rank_ratio) or a whole-model
budget (svd_rank.allocate, losses from the sensitivity probe or relative energy).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from graphcomp.core import analysis, graph_utils, model_io
from graphcomp.core.errors import GraphcompError
from graphcomp.core.pass_base import PassContext
from graphcomp.passes.svd import probe as svd_probe
from graphcomp.passes.svd import sense as svd_sense
from graphcomp.passes.svd.config import SvdConfig, matching_override
from graphcomp.passes.svd.factor import Whitener, factorize, whitener
from graphcomp.passes.svd.layers import Layer, find_layers
from graphcomp.passes.svd.rank import (
    Candidate,
    Choice,
    allocate,
    between_grid,
    by_energy,
    by_ratio,
    fill,
    options,
)

log = logging.getLogger(__name__)
TOLERANCE = 0.05  # a budget result further below the target than this is reported
CLOSE_ENOUGH = 0.02  # below budget by more than this share of the target: fill off-grid
LOUD_ERROR = 0.1  # predicted relative output error above which the report warns


@dataclass
class Plan:
    """Candidates with their choices, skipped nodes, and pass-level notes."""

    candidates: list[Candidate] = field(default_factory=list)
    choices: list[Choice] = field(default_factory=list)
    skips: list[tuple[gs.Node, str]] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)


def make_plan(graph: gs.Graph, ctx: PassContext, config: SvdConfig) -> Plan:
    """Everything the pass decides before it edits the graph."""
    plan = Plan()
    model = model_io.to_model(graph)
    shapes = analysis.infer_shapes(model, ctx.input_shapes)
    try:
        shapes.update(svd_probe.observed_shapes(model, ctx, config.seed, config.prior))
    except Exception as e:  # noqa: BLE001 - a model that will not run on probe inputs
        log.warning("svd: shapes from shape inference only (probe run failed: %s)", e)
        plan.notes["shapes"] = f"shape inference only (probe run failed: {str(e)[:120]})"
    macs = {n.name: analysis.node_macs(n, shapes) for n in model.graph.node}
    layers, plan.skips = find_layers(graph, macs, shapes, allow_spatial=config.mode != "channel")
    layers = _filter(layers, config, plan)
    stats = _statistics(model, layers, ctx, config, plan)
    for layer in layers:
        plan.candidates.append(_candidate(layer, stats, config))
    kind, value = config.target
    plan.notes.update(target=f"{kind}={value}", layers_considered=len(layers))
    if kind in ("energy", "rank_ratio"):
        plan.choices = [_per_layer(c, kind, value, config) for c in plan.candidates]
    else:
        _budget(plan, model, ctx, config, kind, value, sum(macs.values()))
    return plan


def _filter(layers: list[Layer], config: SvdConfig, plan: Plan) -> list[Layer]:
    kept = []
    for layer in layers:
        rule = matching_override(layer.node.name, config.overrides)
        if rule and rule[0] == "skip":
            plan.skips.append((layer.node, "skipped by an override"))
        elif layer.params < config.min_params:
            plan.skips.append(
                (
                    layer.node,
                    f"weight has {layer.params} values, under min_params={config.min_params}",
                )
            )
        else:
            if config.mode == "spatial" and "spatial" in layer.forms:
                layer.forms.pop("channel", None)
            kept.append(layer)
    return kept


def _activation_axis(layer: Layer) -> int:
    if layer.kind == "conv":
        return 1
    if layer.kind == "matmul_left":
        return -2
    if layer.kind == "gemm" and graph_utils.attr(layer.node, "transA", 0):
        return 0
    return -1


def _statistics(
    model: onnx.ModelProto, layers: list[Layer], ctx: PassContext, config: SvdConfig, plan: Plan
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Input (E[x x^T], E[x]) by tensor name when whitening is on, else {}."""
    on = config.whiten == "always" or (config.whiten == "auto" and ctx.calibration is not None)
    if not on or not layers:
        return {}
    src = svd_probe.source(ctx, config.samples, config.seed, config.prior)
    axes = {layer.input_name: _activation_axis(layer) for layer in layers}
    try:
        plan.notes["statistics"] = f"{src.label} ({src.count(model)} samples)"
        return svd_probe.moments(model, axes, src)
    except GraphcompError as e:  # the model does not run on synthetic inputs
        if ctx.calibration is not None:
            raise
        log.warning("svd: no input statistics, plain SVD (synthetic run failed: %s)", e)
        plan.notes["statistics"] = f"none, plain SVD (synthetic run failed: {str(e)[:120]})"
        return {}


def _candidate(
    layer: Layer, stats: dict[str, tuple[np.ndarray, np.ndarray]], config: SvdConfig
) -> Candidate:
    """Factor every form, whitened by the input covariance when there are statistics.

    The covariance is centred when the mean shift goes to the bias (correct_mean):
    then only x - E[x] needs fitting.
    """
    facts, spectra = {}, {}
    cov, mean = stats.get(layer.input_name, (None, None))
    if cov is not None and mean is not None and config.correct_mean:
        cov = cov - np.outer(mean, mean)
    for mode, form in layer.forms.items():
        white = _whitener_for(cov, layer, form.matrix.shape[0], config.shrink)
        rows, cols = form.matrix.shape
        by_macs = (1.0 - config.min_saving) * form.dense_macs / max(form.macs_per_rank, 1e-30)
        cap = max(1, min(int(by_macs), rows * cols // (rows + cols)))
        facts[mode] = factorize(form.matrix, white, rank_cap=cap, seed=config.seed)
        if white is not None and config.energy_of == "weights":
            spectra[mode] = factorize(form.matrix, None, rank_cap=cap, seed=config.seed)
    use_mean = mean is not None and config.correct_mean and mean.size == layer.input_channels
    return Candidate(layer, facts, mean=mean if use_mean else None, spectra=spectra)


def _whitener_for(
    cov: np.ndarray | None, layer: Layer, rows: int, shrink: float
) -> Whitener | None:
    if cov is None or cov.shape[0] != layer.input_channels or rows % cov.shape[0]:
        return None
    return whitener(cov, rows // cov.shape[0], shrink)


def _per_layer(cand: Candidate, kind: str, value: float, config: SvdConfig) -> Choice:
    rule = matching_override(cand.layer.node.name, config.overrides)
    if rule is not None:
        kind, value = rule
    if kind == "rank":
        mode = min(cand.facts, key=lambda m: cand.layer.forms[m].macs_per_rank)
        return cand.at(mode, min(int(value), len(cand.facts[mode].s)))  # honoured as asked
    if kind == "energy":
        return by_energy(cand, value, config.round_to, config.min_saving)
    return by_ratio(cand, value, config.round_to, config.min_saving)


def _budget(
    plan: Plan,
    model: onnx.ModelProto,
    ctx: PassContext,
    config: SvdConfig,
    kind: str,
    value: float,
    total_macs: float,
) -> None:
    """Choices meeting a whole-model MAC or parameter budget."""
    cands = plan.candidates
    svd_sense.relative_energy(cands)
    plan.notes["allocation"] = "relative energy per layer"
    if config.allocate == "sensitivity" and cands:
        try:
            plan.notes["allocation"] = svd_sense.measure(
                cands, model, ctx, config.probe_samples, config.seed + 1, total_macs, config.prior
            )
        except Exception as e:  # noqa: BLE001 - fall back to the data-free per-layer proxy
            svd_sense.relative_energy(cands)
            log.warning("svd: sensitivity probe failed (%s); relative energy used", e)
            plan.notes["allocation"] = f"relative energy per layer (probe failed: {str(e)[:120]})"
        if plan.notes["allocation"].startswith("relative energy"):  # the probe fell back
            plan.notes["probe_warning"] = (
                f"sensitivity probe fell back to {plan.notes['allocation']}: ranks follow "
                "each layer's own energy, not the model's measured loss"
            )
    fixed = {
        i: _per_layer(c, "energy", 1.0, config)
        for i, c in enumerate(cands)
        if matching_override(c.layer.node.name, config.overrides)
    }
    total = total_macs if kind == "macs" else analysis.count_params(model)
    free = [i for i in range(len(cands)) if i not in fixed]

    def cost(c: Choice) -> float:
        return c.macs if kind == "macs" else c.params

    outside = total - sum(cost(c.dense()) for c in cands) + sum(map(cost, fixed.values()))
    budget = value * total - outside
    menus = [options(cands[i], config.round_to, config.min_saving) for i in free]
    picked, met = allocate(menus, budget, cost)
    if met and sum(map(cost, picked)) < budget - CLOSE_ENOUGH * value * total:
        finer = [
            menu + between_grid(cands[i], c, config.round_to, config.min_saving)
            for i, menu, c in zip(free, menus, picked, strict=True)
        ]
        picked = fill(finer, picked, budget, cost)
    chosen = dict(fixed)
    chosen.update(zip(free, picked, strict=True))
    plan.choices = [chosen[i] for i in range(len(cands))]
    reached = outside + sum(cost(c) for c in picked)
    fraction = round(reached / total, 4) if total else 1.0  # nothing to count (all in If)
    plan.notes.update(budget_met=met, **{f"{kind}_after_fraction": fraction})
    if config.allocate == "sensitivity":
        predicted = sum(c.loss for c in picked)
        plan.notes["predicted_output_rel_mse"] = float(f"{predicted:.3g}")
        if predicted > LOUD_ERROR:
            plan.notes["fidelity_warning"] = (
                f"predicted relative squared output error {predicted:.2f}: expect a large "
                "accuracy drop; try a milder target or --calibration-data"
            )
    if met and reached < (1.0 - TOLERANCE) * value * total:
        plan.notes["warning"] = (
            f"{kind} lands at {reached / total:.3f} of the original, under "
            f"the {value} asked: ranks are multiples of round_to="
            f"{config.round_to}; a smaller round_to gets closer"
        )
    if not met:
        plan.notes["warning"] = (
            f"{kind}={value} is out of reach: the splittable layers can "
            f"bring the model only to {reached / total:.3f}"
        )
