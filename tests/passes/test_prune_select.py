"""prune selection: the MAC schedule's price floor moves allocation, never the order."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_graphsurgeon as gs

from graphcomp.core.pass_base import PassContext
from graphcomp.passes.prune import prune as prune_pass
from graphcomp.passes.prune import select, walk
from tests import graphs

WIDE_RESIDUAL = graphs.PRUNE_RESIDUAL.replace("8", "32")


def _removed_per_group(floor: float) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    graph = gs.import_onnx(graphs.build(WIDE_RESIDUAL))
    for i, node in enumerate(graph.nodes):
        node.name = f"n{i}"  # the MAC model keys layers by name
    cg = walk.analyze(graph)
    groups = [g for g in cg.groups if g.prunable]
    scores = {}
    for k, g in enumerate(groups):
        score = np.linspace(1.0, 2.0, g.units.size)
        if k == 1:  # the inner conv: fewer MACs per unit than the residual trunk
            score[: g.units.size // 2] = 0.0  # half its units look dead on the probes
        scores[g.index] = score
    base, total = prune_pass._layer_macs(graph, PassContext())
    budget = dataclasses.replace(select.Budget(0.0, 0.6, 1, 1), floor=floor)
    removed = select.select_macs(cg, groups, scores, budget, select.MacModel(cg, base, total))
    per_group = {g.index: np.intersect1d(g.units, removed) for g in groups}
    return per_group, {g.index: g.units[np.argsort(scores[g.index], kind="stable")] for g in groups}


def test_floor_spreads_removal_away_from_units_that_look_dead():
    plain, _ = _removed_per_group(0.0)
    floored, order = _removed_per_group(100.0)  # all units priced alike: MACs decide
    inner = list(plain)[1]
    assert plain[inner].size > 0
    assert floored[inner].size < plain[inner].size


def test_floor_keeps_the_within_group_order():
    floored, order = _removed_per_group(100.0)  # all units priced alike: MACs decide
    for index, removed in floored.items():
        lowest = order[index][: removed.size]
        assert set(removed.tolist()) == set(lowest.tolist())
