"""Which channels go: importance per unit, a uniform ratio or a MAC budget, rounding.

Importance of unit u (data-free):
- "l1" / "l2": sum over the group's producers of the norm of u's output filter;
- "bn": |gamma| of the BatchNormalization after the producer (Network Slimming,
  Liu et al. 2017), from the graph or from fold-bn's statistics; l2 where absent;
- "energy" (default): the output energy the unit feeds the next layers,
  sum over consumers of ||W2[:, u]||^2 * E[x_u^2] (Var[x_u] when its mean is
  compensated), with x_u the consumer's input channel (moments from passes/prune/compensate.py).
A uniform `ratio` removes the lowest-scoring units of every group. A `macs` budget
runs a greedy schedule: repeatedly remove the chunk (round_to units) whose relative
loss (its share of the group's score) per MAC saved is smallest, with MACs recomputed
exactly from the kept channel counts, until the model's MACs reach the target.
Counts kept are multiples of `round_to` (or the whole group), never below
`min_channels`, never zero.
"""

from __future__ import annotations

import fnmatch
import heapq
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from graphcomp.passes.prune.groups import ChannelGraph, Group

MAX_STEPS = 1_000_000  # cap of the greedy loop
TINY = 1e-12
SLACK = 0.045  # the budget may be undershot by this share (coarse steps; glyph VGG at
# 0.5x MACs: 0.08 accuracy with 0.02, 0.90 with 0.045)


@dataclass(frozen=True)
class Budget:
    """How much to remove: uniform `ratio`, or a MAC `target` (fraction kept) when set."""

    ratio: float
    target: float | None
    min_channels: int
    round_to: int
    overrides: tuple[tuple[str, float], ...] = ()


def parse_overrides(text: str) -> tuple[tuple[str, float], ...]:
    """'conv1*:0.5;fc:0' -> (('conv1*', 0.5), ('fc', 0.0)); ValueError on bad items."""
    items = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        glob, _, value = part.rpartition(":")
        ratio = float(value)
        if not glob or not 0.0 <= ratio < 1.0:
            raise ValueError(f"bad layer override '{part}': expected glob:ratio, ratio in [0, 1)")
        items.append((glob, ratio))
    return tuple(items)


def override_for(group: Group, budget: Budget) -> float | None:
    """The ratio a per-layer override sets for `group` (first matching glob), else None."""
    for glob, ratio in budget.overrides:
        if any(fnmatch.fnmatchcase(p, glob) for p in group.producers):
            return ratio
    return None


def keep_options(n: int, budget: Budget) -> list[int]:
    """Allowed kept counts for a group of `n` units, largest first."""
    floor = max(budget.min_channels, 1)
    step = max(budget.round_to, 1)
    counts = [k for k in range(step * (n // step), 0, -step) if k >= floor and k < n]
    return [n, *counts]


def nearest_keep(n: int, want: float, budget: Budget) -> int:
    """The allowed kept count closest to `want`."""
    return min(keep_options(n, budget), key=lambda k: (abs(k - want), -k))


def select_ratio(groups: list[Group], scores: dict[int, np.ndarray], budget: Budget) -> np.ndarray:
    """Units removed by a uniform ratio; rounding error carried from group to group."""
    removed, carry = [], 0.0
    for g in groups:
        ratio = override_for(g, budget)
        n = g.units.size
        want = n * (1.0 - (budget.ratio if ratio is None else ratio)) - carry
        kept = nearest_keep(n, want, budget)
        carry = kept - want if ratio is None else carry
        order = np.argsort(scores[g.index], kind="stable")
        removed.append(g.units[order[: n - kept]])
    return np.concatenate(removed) if removed else np.zeros(0, dtype=np.int64)


class MacModel:
    """Exact MACs of the weighted layers as a function of the kept count of each space.

    With `elementwise`, every other node whose output is a channel space costs its base
    times the kept fraction of that space (a latency model: a Relu on half the channels
    takes half the time); without, those nodes are part of the fixed cost.
    """

    def __init__(
        self,
        cg: ChannelGraph,
        base: Mapping[str, float],
        total: float,
        elementwise: bool = False,
    ) -> None:
        layers = {
            b.node.name: (base.get(b.node.name, 0), b.inp, b.out, bool(b.extra.get("depthwise")))
            for b in cg.bindings
            if b.kind in ("conv", "convT", "gemm", "matmul")
        }
        if elementwise:
            for node in cg.graph.nodes:
                out = node.outputs[0].name if node.outputs else None
                if node.name not in layers and out in cg.spaces and base.get(node.name):
                    layers[node.name] = (base[node.name], None, out, True)
        self.layers = list(layers.values())
        self.fixed = total - sum(m for m, *_ in self.layers)
        self.size = {name: sp.size for name, sp in cg.spaces.items()}
        self.gone: dict[str, dict[int, int]] = {name: {} for name in self.size}

    def frac(self, name: str | None) -> float:
        """Fraction of space `name` kept (1 for untracked)."""
        if name is None:
            return 1.0
        return 1.0 - sum(self.gone[name].values()) / self.size[name]

    def total(self) -> float:
        """Current MACs of the model."""
        return self.fixed + sum(
            m * (1.0 if dw else self.frac(i)) * self.frac(o) for m, i, o, dw in self.layers
        )


def select_macs(
    cg: ChannelGraph,
    groups: list[Group],
    scores: dict[int, np.ndarray],
    budget: Budget,
    macs: MacModel,
) -> np.ndarray:
    """Greedy removal until the model's MACs reach `budget.target` of the start.

    Raises:
        ValueError: `budget` has no MAC target (the caller picks select_ratio then).

    """
    if budget.target is None:
        raise ValueError("select_macs needs a budget with a MAC target")
    goal = budget.target * macs.total()
    state = {g.index: _GroupState(cg, g, scores[g.index], budget) for g in groups}
    for g in groups:
        ratio = override_for(g, budget)
        if ratio is not None:
            state[g.index].fix(macs, nearest_keep(g.units.size, g.units.size * (1 - ratio), budget))
    heap = [(s.price(macs), i, 0) for i, s in state.items() if not s.fixed and s.can_step()]
    heapq.heapify(heap)
    slack = SLACK * goal
    for _ in range(MAX_STEPS):
        total = macs.total()
        if not heap or total <= goal:
            break
        price, i, version = heapq.heappop(heap)
        s = state[i]
        if version != s.at:
            continue  # the group moved since this entry was queued
        now = s.price(macs)
        if now > price * (1 + 1e-9) + TINY and heap and now > heap[0][0]:
            heapq.heappush(heap, (now, i, s.at))  # stale: saving changed since queued
            continue
        if total - s.saving(macs) < goal - slack:  # would overshoot: take the best fit
            heapq.heappush(heap, (now, i, s.at))
            s = state[_best_fit(state, macs, total, goal - slack)]
        s.step(macs)
        if s.can_step():
            heapq.heappush(heap, (s.price(macs), s.group.index, s.at))
    removed = [s.removed() for s in state.values()]
    return np.concatenate(removed) if removed else np.zeros(0, dtype=np.int64)


def _best_fit(state: dict[int, _GroupState], macs: MacModel, total: float, floor: float) -> int:
    """The cheapest step that stays above `floor` MACs, else the one overshooting least."""
    movable = [
        (s.saving(macs), s.price(macs), i) for i, s in state.items() if not s.fixed and s.can_step()
    ]
    fitting = [(price, i) for saved, price, i in movable if total - saved >= floor]
    if fitting:
        return min(fitting)[1]
    return min(movable)[2]


class _GroupState:
    """A group's position in the greedy schedule."""

    def __init__(self, cg: ChannelGraph, group: Group, score: np.ndarray, budget: Budget) -> None:
        self.group, self.order = group, np.argsort(score, kind="stable")
        total = float(score.sum())
        self.cost = np.cumsum(score[self.order]) / max(total, TINY)
        self.options = keep_options(group.units.size, budget)
        self.at, self.fixed = 0, False
        n = group.units.size
        self.share = {
            s: np.bincount(
                np.searchsorted(group.units, cg.roots[s][np.isin(cg.roots[s], group.units)]),
                minlength=n,
            )
            for s in group.spaces
        }

    def can_step(self) -> bool:
        return self.at + 1 < len(self.options)

    def _loss(self, kept: int) -> float:
        n = self.group.units.size
        return 0.0 if kept >= n else float(self.cost[n - kept - 1])

    def _set(self, macs: MacModel, kept: int) -> None:
        gone = self.order[: self.group.units.size - kept]
        for name, share in self.share.items():
            macs.gone[name][self.group.index] = int(share[gone].sum())

    def saving(self, macs: MacModel) -> float:
        """MACs the next step saves."""
        before = macs.total()
        self._set(macs, self.options[self.at + 1])
        saved = before - macs.total()
        self._set(macs, self.options[self.at])
        return saved

    def price(self, macs: MacModel) -> float:
        """Loss added per MAC saved by the next step."""
        saved = self.saving(macs)
        extra = self._loss(self.options[self.at + 1]) - self._loss(self.options[self.at])
        return extra / saved if saved > 0 else np.inf

    def step(self, macs: MacModel) -> None:
        self.at += 1
        self._set(macs, self.options[self.at])

    def fix(self, macs: MacModel, kept: int) -> None:
        self.at, self.fixed = self.options.index(kept), True
        self._set(macs, kept)

    def removed(self) -> np.ndarray:
        return self.group.units[self.order[: self.group.units.size - self.options[self.at]]]
