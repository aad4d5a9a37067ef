"""Graph preparation for the channel-group walk (passes/prune/groups.py).

Parameters computed from constants are folded into constants (lossless), missing
intermediate shapes are filled in from onnx shape inference, and tensors read inside
subgraphs are listed (their groups are blocked).
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_graphsurgeon as gs

log = logging.getLogger(__name__)

FOLD_LIMIT = 1 << 26  # bytes: larger folded constants stay computed
PARAM_SLOTS = {
    "Conv": (1, 2),
    "ConvTranspose": (1, 2),
    "Gemm": (1, 2),
    "MatMul": (0, 1),
    "BatchNormalization": (1, 2, 3, 4),
    "InstanceNormalization": (1, 2),
    "PRelu": (1,),
    "Clip": (1, 2),
}
OPERAND_OPS = ("Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean", "Pow", "Where", "Concat")


def fold_constants(graph: gs.Graph) -> dict[str, np.ndarray]:
    """Turn parameters computed from constants into constants.

    Some exporters write a bias as Reshape(constant); folded, its layer and per-channel
    constants are seen. Only parameter inputs are replaced (weights, biases, BN
    parameters, elementwise and Concat operands); shape inputs keep their subgraphs.
    Lossless, best effort.
    """
    copy = graph.copy()
    try:
        copy.fold_constants(
            fold_shapes=False,
            recurse_subgraphs=False,
            flatten_subgraphs=False,
            size_threshold=FOLD_LIMIT,
        )
    except Exception as e:  # noqa: BLE001 - folding is an aid, never required
        log.debug("constant folding failed: %s", e)
        return {}
    folded = {name: t for name, t in copy.tensors().items() if isinstance(t, gs.Constant)}
    for node in graph.nodes:
        slots = PARAM_SLOTS.get(node.op, range(len(node.inputs)) if node.op in OPERAND_OPS else ())
        for i in slots:
            t = node.inputs[i] if i < len(node.inputs) else None
            if (
                isinstance(t, gs.Variable)
                and t.inputs
                and t.name in folded
                and t.inputs[0].op != "Constant"
            ):
                node.inputs[i] = gs.Constant(t.name + "_folded", np.asarray(folded[t.name].values))
    return {name: np.asarray(t.values) for name, t in folded.items()}


def subgraph_reads(graph: gs.Graph) -> set[str]:
    """Names of tensors read by nodes of nested graphs (If/Loop/Scan bodies)."""
    names: set[str] = set()
    for node in graph.nodes:
        for value in node.attrs.values():
            subs = value if isinstance(value, list) else [value]
            for sub in subs:
                if isinstance(sub, gs.Graph):
                    names |= {t.name for n in sub.nodes for t in n.inputs}
                    names |= subgraph_reads(sub)
    return names


def forget_shapes(graph: gs.Graph) -> None:
    """Drop the shapes of intermediate tensors (after an edit), to be inferred again."""
    outer = {t.name for t in [*graph.inputs, *graph.outputs]}
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Variable) and tensor.name not in outer:
            tensor.shape = None
