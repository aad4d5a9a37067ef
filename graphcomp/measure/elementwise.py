"""Tensors that are an elementwise function of one other tensor, with their moments.

A small DAG of elementwise ops whose only non-constant input is one tensor x computes
y = f(x) channel by channel: SiLU as x * Sigmoid(x), HardSwish written out as
x * Clip(x + 3, 0, 6) / 6, a learnable affine a x + b after it, GELU with Erf.
`function_of` finds x and f from y's producer (constants must be scalars or one value
per channel); `Function.moments` gives y's per-channel mean and variance for
x ~ N(m, v) by Gauss-Hermite quadrature; `Function.interval` maps a per-channel
interval of x to the range of f on it (f on a dense grid, so a SiLU's minimum inside
the interval counts). The statistics flow (graphcomp.measure.analytic, the ranges of
passes/dfq/ranges.py) carries moments and intervals through such functions instead
of stopping at them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np
import onnx_graphsurgeon as gs

from graphcomp.core import graph_utils
from graphcomp.measure import normal

MAX_NODES = 12  # elementwise nodes followed back from a tensor
GH_POINTS = 32  # Gauss-Hermite points of the moments
GRID = 257  # points per channel of the interval map


def _hard_sigmoid(node: gs.Node, x: np.ndarray) -> np.ndarray:
    alpha = graph_utils.attr_float(node, "alpha", 0.2)
    beta = graph_utils.attr_float(node, "beta", 0.5)
    return np.clip(alpha * x + beta, 0.0, 1.0)


def _clip(node: gs.Node, x: np.ndarray) -> np.ndarray | None:
    limits = normal.activation_bounds(node)
    return None if limits is None else np.clip(x, *limits)


UNARY: dict[str, Callable[[gs.Node, np.ndarray], np.ndarray | None]] = {
    "Identity": lambda n, x: x,
    "Neg": lambda n, x: -x,
    "Abs": lambda n, x: np.abs(x),
    "Relu": lambda n, x: np.maximum(x, 0.0),
    "Clip": _clip,
    "LeakyRelu": lambda n, x: np.where(x < 0, graph_utils.attr_float(n, "alpha", 0.01) * x, x),
    "Sigmoid": lambda n, x: 0.5 * (1.0 + np.tanh(0.5 * x)),
    "HardSigmoid": _hard_sigmoid,
    "HardSwish": lambda n, x: x * np.clip(x / 6.0 + 0.5, 0.0, 1.0),
    "Tanh": lambda n, x: np.tanh(x),
    "Erf": lambda n, x: 2.0 * normal.normal_cdf(x * math.sqrt(2.0)) - 1.0,
    "Softplus": lambda n, x: np.logaddexp(x, 0.0),
}
BINARY: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "Add": np.add,
    "Sub": np.subtract,
    "Mul": np.multiply,
    "Div": np.divide,
    "Max": np.maximum,
    "Min": np.minimum,
}
OPS = frozenset(UNARY) | frozenset(BINARY)


@dataclasses.dataclass(frozen=True)
class Function:
    """y = f(x) per channel: `output` computed from `root` by elementwise `nodes`."""

    root: str
    output: str
    channels: int
    rank: int | None  # the root's rank (per-channel constants need it)
    nodes: dict[str, gs.Node]  # tensor name -> its producer, every tensor between

    def __call__(self, x: np.ndarray) -> np.ndarray | None:
        """The function on points `x` [channels, P]; None where an op cannot be evaluated."""
        values: dict[str, np.ndarray] = {self.root: x}
        return self._eval(self.output, values)

    def _eval(self, name: str, values: dict[str, np.ndarray]) -> np.ndarray | None:
        if name in values:
            return values[name]
        node = self.nodes[name]
        args = []
        for t in node.inputs[: 2 if node.op in BINARY else 1]:
            c = _channel_const(t, self.channels, self.rank)
            arg = c if c is not None else self._eval(t.name, values)
            if arg is None:
                return None
            args.append(arg)
        with np.errstate(all="ignore"):
            out = BINARY[node.op](*args) if node.op in BINARY else UNARY[node.op](node, args[0])
        if out is None or not np.all(np.isfinite(out)):
            return None
        values[name] = np.broadcast_to(out, values[self.root].shape)
        return values[name]

    def moments(self, mean: np.ndarray, var: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """Per-channel (mean, variance) of f(x) for x ~ N(mean, var)."""
        t, w = np.polynomial.hermite.hermgauss(GH_POINTS)
        w = w / math.sqrt(math.pi)
        std = np.sqrt(np.maximum(np.asarray(var, np.float64), 0.0))
        points = np.asarray(mean, np.float64)[:, None] + math.sqrt(2.0) * std[:, None] * t
        y = self(points)
        if y is None:
            return None
        m1 = y @ w
        return m1, np.maximum((y * y) @ w - m1 * m1, 0.0)

    def interval(self, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """Per-channel [min, max] of f over [lo, hi]."""
        lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
        if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
            return None
        steps = np.linspace(0.0, 1.0, GRID)
        y = self(lo[:, None] + (hi - lo)[:, None] * steps)
        return None if y is None else (y.min(axis=1), y.max(axis=1))


def function_of(
    node: gs.Node, is_root: Callable[[str], bool], channels: Callable[[str], int | None]
) -> Function | None:
    """The output of `node` as an elementwise function of one `is_root` tensor, or None.

    Candidate roots are the variable tensors met walking back through elementwise
    producers (at most MAX_NODES), nearest first; the first one from which every path
    leads back to it alone is the root. `channels(name)` is the root's channel count.
    """
    if node.op not in OPS or not node.outputs:
        return None
    seen: dict[str, gs.Tensor] = {}
    producers: dict[str, gs.Node] = {node.outputs[0].name: node}
    frontier = [node]
    while frontier and len(producers) <= MAX_NODES:
        nxt = []
        for n in frontier:
            for t in n.inputs[: 2 if n.op in BINARY else 1]:
                if graph_utils.const_value(t) is not None or t.name in seen:
                    continue
                seen[t.name] = t
                prev = graph_utils.producer(t)
                if prev is not None and prev.op in OPS and prev.outputs[0].name not in producers:
                    producers[t.name] = prev
                    nxt.append(prev)
        frontier = nxt
    for root in (name for name in seen if is_root(name)):
        count = channels(root)
        if count is None:
            continue
        shape = seen[root].shape
        rank = len(shape) if shape is not None else None
        inner = {k: v for k, v in producers.items() if k != root}
        if _leaves(node.outputs[0].name, inner, count, rank) == {root}:
            return Function(root, node.outputs[0].name, count, rank, inner)
    return None


def _leaves(
    name: str, nodes: dict[str, gs.Node], channels: int, rank: int | None
) -> set[str] | None:
    """Variable tensors `name` depends on through `nodes`; None past a bad constant."""
    node = nodes.get(name)
    if node is None:
        return {name}
    out: set[str] = set()
    for t in node.inputs[: 2 if node.op in BINARY else 1]:
        if graph_utils.const_value(t) is not None:
            if _channel_const(t, channels, rank) is None:
                return None
            continue
        sub = _leaves(t.name, nodes, channels, rank)
        if sub is None:
            return None
        out |= sub
    return out


def _channel_const(tensor: gs.Tensor, channels: int, rank: int | None) -> np.ndarray | None:
    """A scalar or per-channel constant as [channels, 1], else None.

    Per channel means axis 1 of a rank-`rank` tensor: [C, 1, 1] or [1, C, 1, 1] for
    NCHW, [C] or [1, C] for [N, C].
    """
    value = graph_utils.const_value(tensor)
    if value is None or not np.issubdtype(value.dtype, np.number):
        return None
    flat = value.astype(np.float64).reshape(-1)
    if flat.size == 1:
        return np.full((channels, 1), flat[0])
    if rank is None or rank < 2 or flat.size != channels or value.ndim > rank:
        return None
    axis = value.ndim - (rank - 1)  # axis 1 of the tensor, right-aligned
    if axis < 0 or value.shape[axis] != channels:
        return None
    return flat.reshape(channels, 1)
