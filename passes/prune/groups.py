"""Channel groups of an ONNX graph: which tensor channels must be removed together.

The ONNX counterpart of a dependency graph (DESIGN.md 3). Every channel-carrying
tensor axis is a *space*; every channel of a space is an element. One walk over the
graph in topological order applies a rule per op (passes/prune/rules.py) that joins
elements which must share a fate: identity for pass-through ops and Add/Mul coupling,
offsets for Concat/Split/Slice, blocks of H*W features for Flatten/Reshape into a
Gemm, input and output channels of a depthwise conv. Elements are joined in a
union-find; each connected set is a *unit* (one removable channel). Units that touch
exactly the same spaces form a *group*: a conv's output channels, a residual trunk, one
Concat segment. A unit that meets anything the rules do not understand (an unknown op,
a graph output, a run-time shape, a subgraph) is blocked, and so is its whole group,
with the reason.

Each rule also records *bindings*: the edits a removal needs (weight axes, per-channel
constants, Split sizes, Slice bounds, Reshape targets); passes/prune/apply.py makes them.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from graphcomp.core import graph_utils

log = logging.getLogger(__name__)

MAX_ELEMENTS = 1 << 22  # whole-graph cap on tracked channel elements (Flatten blocks are big)


@dataclass
class Space:
    """A tensor axis that carries channels: elements base .. base + size - 1."""

    tensor: gs.Tensor
    axis: int
    rank: int
    size: int
    base: int

    @property
    def name(self) -> str:
        """The tensor's name."""
        return self.tensor.name

    def ids(self, index: np.ndarray | None = None) -> np.ndarray:
        """Element ids of channel `index` (all channels when None)."""
        idx = np.arange(self.size) if index is None else np.asarray(index)
        return self.base + idx


@dataclass
class Binding:
    """One edit that removing channels requires: `kind` tells prune_apply what to do.

    `inp`/`out` name the spaces read and written (None when untracked); `extra` holds
    kind-specific facts (input index and axis of a constant, Split outputs, ...).
    """

    kind: str
    node: gs.Node
    inp: str | None = None
    out: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Group:
    """Units that touch the same spaces; pruned with one ratio."""

    index: int
    units: np.ndarray  # union-find roots, sorted
    spaces: list[str]
    producers: list[str]  # node names whose output channels are these units
    reason: str | None = None  # why the group cannot be pruned

    @property
    def prunable(self) -> bool:
        """True when nothing blocks the group."""
        return self.reason is None


class ChannelGraph:
    """Spaces, union-find over their elements, bindings and blocks of one graph."""

    def __init__(self, graph: gs.Graph) -> None:
        self.graph = graph
        self.spaces: dict[str, Space] = {}
        self.parent: list[int] = []
        self.bindings: list[Binding] = []
        self.blocks: list[tuple[np.ndarray, str]] = []
        self.groups: list[Group] = []
        self.roots: dict[str, np.ndarray] = {}
        self.folded: dict[str, np.ndarray] = {}

    def value(self, tensor: gs.Tensor | None) -> np.ndarray | None:
        """The constant value of `tensor`, also when computed from constants only."""
        found = graph_utils.const_value(tensor)
        if found is None and tensor is not None:
            found = self.folded.get(tensor.name)
        return found

    def input_value(self, node: gs.Node, index: int) -> np.ndarray | None:
        """The constant value of input `index` of `node` (see `value`), None if absent."""
        if index >= len(node.inputs) or not node.inputs[index].name:
            return None
        return self.value(node.inputs[index])

    def checked_input_value(self, node: gs.Node, index: int) -> np.ndarray:
        """input_value for an input the rule that bound `node` found constant.

        Raises:
            LookupError: it is not constant after all (a bug in a rule, not a user error).

        """
        value = self.input_value(node, index)
        if value is None:
            raise LookupError(f"input {index} of {node.name} ({node.op}) is not a constant")
        return value

    # -- building -------------------------------------------------------------
    def space(self, tensor: gs.Tensor | None) -> Space | None:
        """The space of `tensor`, or None when it carries no tracked channels."""
        if tensor is None or not tensor.name:
            return None
        return self.spaces.get(tensor.name)

    def add_space(self, tensor: gs.Tensor, axis: int, size: int | None) -> Space | None:
        """Register `tensor` axis `axis` as a space of `size` channels (None if unknown)."""
        rank = len(tensor.shape) if tensor.shape is not None else None
        if size is None or size <= 0 or rank is None or tensor.name in self.spaces:
            return self.spaces.get(tensor.name)
        if len(self.parent) + size > MAX_ELEMENTS:
            log.debug("element cap reached at %s", tensor.name)
            return None
        found = Space(tensor, axis, rank, int(size), len(self.parent))
        self.parent.extend(range(found.base, found.base + found.size))
        self.spaces[tensor.name] = found
        return found

    def find(self, i: int) -> int:
        """Root of element `i` (path halving)."""
        parent = self.parent
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        """Join element ids `a[k]` with `b[k]` for every k."""
        for x, y in zip(
            np.asarray(a).ravel().tolist(), np.asarray(b).ravel().tolist(), strict=True
        ):
            rx, ry = self.find(x), self.find(y)
            if rx != ry:
                self.parent[max(rx, ry)] = min(rx, ry)

    def same(self, a: Space, b: Space) -> None:
        """Join two spaces channel by channel (same indices)."""
        self.union(a.ids(), b.ids())

    def block(self, sp: Space | None, reason: str, index: np.ndarray | None = None) -> None:
        """Mark channels `index` of `sp` (all when None) as not removable, for `reason`."""
        if sp is not None:
            self.blocks.append((sp.ids(index), reason))

    def bind(
        self,
        kind: str,
        node: gs.Node,
        inp: Space | None = None,
        out: Space | None = None,
        **extra: Any,
    ) -> None:
        """Record an edit needed when channels of `inp`/`out` go."""
        self.bindings.append(
            Binding(kind, node, inp.name if inp else None, out.name if out else None, dict(extra))
        )

    # -- results --------------------------------------------------------------
    def finish(self) -> None:
        """Compute roots per space and the groups with their block reasons."""
        self.roots = {
            name: np.array(
                [self.find(i) for i in range(sp.base, sp.base + sp.size)], dtype=np.int64
            )
            for name, sp in self.spaces.items()
        }
        reasons: dict[int, str] = {}
        for ids, reason in self.blocks:
            for i in ids.tolist():
                reasons.setdefault(self.find(i), reason)
        self.groups = _make_groups(self, reasons)

    def keep_masks(self, removed: np.ndarray) -> dict[str, np.ndarray]:
        """Per space, True for the channels whose unit is not in `removed`."""
        return {name: ~np.isin(roots, removed) for name, roots in self.roots.items()}


def _make_groups(cg: ChannelGraph, reasons: dict[int, str]) -> list[Group]:
    touched: dict[int, list[str]] = {}
    for name, roots in cg.roots.items():
        for root in np.unique(roots).tolist():
            touched.setdefault(root, []).append(name)
    by_signature: dict[tuple[str, ...], list[int]] = {}
    for root, names in touched.items():
        by_signature.setdefault(tuple(sorted(names)), []).append(root)
    makers = _producer_spaces(cg)
    groups = []
    for signature, members in by_signature.items():
        units = np.array(sorted(members), dtype=np.int64)
        producers = sorted(makers[s] for s in signature if s in makers)
        reason = next((reasons[r] for r in units.tolist() if r in reasons), None)
        if reason is None and not producers:
            reason = "no Conv/Gemm/MatMul produces these channels"
        groups.append(Group(0, units, _order_spaces(cg, signature), producers, reason))
    groups.sort(key=lambda g: min(cg.spaces[s].base for s in g.spaces))
    return [dataclasses.replace(g, index=i) for i, g in enumerate(groups)]


def _order_spaces(cg: ChannelGraph, names: tuple[str, ...]) -> list[str]:
    return sorted(names, key=lambda s: cg.spaces[s].base)


def _producer_spaces(cg: ChannelGraph) -> dict[str, str]:
    """Output space name -> producing node name, for weight-carrying producers."""
    return {
        b.out: b.node.name
        for b in cg.bindings
        if b.out is not None and b.kind in ("conv", "convT", "gemm", "matmul")
    }
