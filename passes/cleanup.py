"""Remove what computes nothing; lossless by construction.

Identity, inference-mode Dropout, dead nodes and unused initializers go.
Will not touch: an Identity/Dropout between a graph input and a graph output, or whose
output is a graph output while its input is read by other nodes (removing either would
rename a graph output), a Dropout whose mask output is read, or a Dropout in
training mode (`training_mode` input set to a true constant or computed).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphcomp.core import graph_utils
from graphcomp.core.pass_base import Pass, PassContext, PassResult


class CleanupPass(Pass):
    """Identity/Dropout removal plus dead-node and unused-initializer cleanup."""

    name = "cleanup"
    summary = "remove Identity, inference Dropout, dead nodes and unused initializers"
    matches = frozenset({"Identity", "Dropout"})
    creates = frozenset()
    lossless = True

    def apply(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        """Bypass no-op nodes, then drop everything that no output depends on."""
        result = PassResult(self.name)
        for node in graph_utils.nodes_of(graph, self.matches):
            if reason := self._skip_reason(graph, node):
                result.skip(node, reason)
                continue
            graph_utils.bypass(graph, node)
            result.change(node, "removed (no-op at inference)")
        before_nodes = len(graph.nodes)
        before_consts = _const_count(graph)
        graph.cleanup(remove_unused_graph_inputs=False)
        bypassed = len(result.changes)
        result.notes["dead_nodes_removed"] = before_nodes - len(graph.nodes) - bypassed
        result.notes["unused_initializers_removed"] = before_consts - _const_count(graph)
        return result

    @staticmethod
    def _skip_reason(graph: gs.Graph, node: gs.Node) -> str | None:
        src, dst = node.inputs[0], node.outputs[0]
        if graph_utils.is_graph_output(graph, dst) and graph_utils.producer(src) is None:
            return "connects a graph input or constant straight to a graph output"
        if graph_utils.is_graph_output(graph, dst) and graph_utils.is_graph_output(graph, src):
            return "both its input and output are graph outputs"
        if graph_utils.is_graph_output(graph, dst) and any(r is not node for r in src.outputs):
            return "its output is a graph output and its input is read elsewhere"
        if node.op == "Dropout":
            if len(node.outputs) > 1 and node.outputs[1].outputs:
                return "its mask output is read"
            training = graph_utils.const_input(node, 2)
            if (
                len(node.inputs) > 2
                and node.inputs[2].name
                and (training is None or bool(np.any(training)))
            ):
                return "training_mode is on or computed at run time"
        return None


def _const_count(graph: gs.Graph) -> int:
    return sum(isinstance(t, gs.Constant) for t in graph.tensors().values())
