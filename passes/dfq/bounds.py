"""Graph edits and interval bounds for equalize's clipping activations.

`write_bounds`: after channel i of a layer's output was divided by s_i (equalize) or
shifted down by c_i (absorb-bias), a clip at `hi` must become a clip at hi / s_i - c_i
for that channel. Clip only takes scalar bounds,
so Clip(x, 0, hi) becomes Min(Relu(x), hi / s) with a per-channel constant (shape
C x 1 x 1 for N x C x H x W); an existing Relu -> Min gets its constant replaced.
The output tensor keeps its name. `input_bound`: the largest value a layer's input
can take when it comes from a clip (through pooling / zero padding), else None.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphcomp.core import graph_utils
from graphcomp.passes.dfq.chains import HOMOGENEOUS, Link, bound_of

UNIT_TOL = 1e-7  # a cumulative scale this close to 1 leaves the bound alone
MAX_WALK = 16


def write_bounds(
    graph: gs.Graph, link: Link, total: np.ndarray, shift: np.ndarray | None = None
) -> None:
    """Set every clipping bound hi on `link`'s path to hi / total - shift, per channel."""
    shift = np.zeros(link.channels) if shift is None else shift
    if np.all(np.abs(total - 1.0) < UNIT_TOL) and not np.any(shift):
        return
    rank = graph_utils.checked_const_input(link.first, 1).ndim if link.first.op == "Conv" else 2
    shape = (link.channels,) + (1,) * (rank - 2)
    for node in link.bounds:
        lo_hi = bound_of(node)
        if lo_hi is None:
            continue
        hi = np.broadcast_to(lo_hi[1].reshape(-1), (link.channels,))
        if not np.all(np.isfinite(hi)):
            continue
        dtype = node.inputs[0].dtype or np.float32
        values = (hi / total - shift).reshape(shape).astype(dtype)
        if node.op == "Min":
            graph_utils.set_const_input(graph, node, 1, values)
        else:
            _clip_to_relu_min(graph, node, values)


def _clip_to_relu_min(graph: gs.Graph, clip: gs.Node, bound: np.ndarray) -> None:
    """Replace Clip(x, 0, hi) by Min(Relu(x), bound) writing the same output tensor."""
    source, target = clip.inputs[0], clip.outputs[0]
    mid = gs.Variable(
        graph_utils.fresh_name(graph, f"{target.name}_relu"), dtype=target.dtype, shape=target.shape
    )
    relu = gs.Node(
        "Relu",
        name=graph_utils.fresh_name(graph, f"{clip.name}_relu"),
        inputs=[source],
        outputs=[mid],
    )
    const = graph_utils.new_const(graph, f"{clip.name}_bound", bound)
    minimum = gs.Node(
        "Min",
        name=graph_utils.fresh_name(graph, f"{clip.name}_min"),
        inputs=[mid, const],
        outputs=[target],
    )
    clip.inputs.clear()
    clip.outputs.clear()
    graph.nodes.extend([relu, minimum])


def input_bound(layer: gs.Node) -> float | None:
    """Upper bound of every value `layer` reads, if its input is clipped to [0, hi]."""
    tensor = layer.inputs[0]
    for _ in range(MAX_WALK):
        node = graph_utils.producer(tensor)
        if node is None:
            return None
        if node.op in ("Clip", "Min"):
            lo_hi = bound_of(node)
            if lo_hi is None or lo_hi[0] != 0.0:
                return None
            hi = float(np.max(lo_hi[1]))
            return hi if np.isfinite(hi) else None
        if node.op == "Pad":
            value = graph_utils.const_input(node, 2)
            if value is not None and float(np.max(np.abs(value))) != 0.0:
                return None
        elif node.op not in HOMOGENEOUS or node.op in ("Relu", "LeakyRelu", "PRelu"):
            return None
        tensor = node.inputs[0]
    return None
