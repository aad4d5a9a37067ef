"""The channel-group walk: prepare the graph, apply each op's rule, close the groups.

One pass over the graph in topological order (passes/prune/rules.py has the per-op
rules, passes/prune/groups.py the spaces, units and groups they build). Tensors that
are graph outputs or read inside a subgraph block their groups.
"""

from __future__ import annotations

from typing import Any

import onnx
import onnx_graphsurgeon as gs

from graphcomp.core import graph_utils, model_io, simplify
from graphcomp.passes.prune import prep as prune_prep
from graphcomp.passes.prune import rules as prune_rules
from graphcomp.passes.prune.groups import ChannelGraph


def analyze(graph: gs.Graph) -> ChannelGraph:
    """Walk `graph` once (topological order) and return its channel groups."""
    folded = prune_prep.fold_constants(graph)
    graph.toposort()
    simplify.fill_shapes(graph)
    cg = ChannelGraph(graph)
    cg.folded = folded
    nested = prune_prep.subgraph_reads(graph)
    for node in graph.nodes:
        prune_rules.apply_rule(cg, node)
    for name, sp in cg.spaces.items():
        if any(out is sp.tensor for out in graph.outputs):
            cg.block(sp, f"{name} is a graph output")
        elif name in nested:
            cg.block(sp, f"{name} is read inside a subgraph")
    cg.finish()
    return cg


def describe(model: onnx.ModelProto) -> list[dict[str, Any]]:
    """The channel groups of `model` (not modified) as rows; nodes named as the pipeline does."""
    graph = model_io.import_graph(model)
    graph_utils.name_nodes(graph)
    return summary(analyze(graph))


def summary(cg: ChannelGraph) -> list[dict[str, Any]]:
    """Plain rows for `graphcomp inspect --groups`: members, channels, prunable or why not."""
    return [
        {
            "group": g.index,
            "channels": int(g.units.size),
            "producers": g.producers,
            "members": g.spaces,
            "prunable": g.prunable,
            "reason": g.reason or "",
        }
        for g in cg.groups
    ]
