"""Rank choice for the svd pass: per layer, or for the whole model under a budget.

Per layer: energy, rank ratio or fixed rank; whole model: a MAC or parameter budget.

A split of layer l at rank r in mode m costs r * macs_per_rank MACs and loses
loss_l(tail_l,m(r)), where tail is the (whitened) energy past rank r and loss_l turns
it into what the model loses: tail / total_l (relative energy), or the model-output
error measured at a few probe ranks (svd_sense), interpolated piecewise-linearly in
the tail and extrapolated with the last measured slope.
Budget mode minimizes sum_l loss_l subject to sum_l cost_l <= budget by a Lagrangian
sweep (each layer takes argmin loss + lambda * cost over its options, lambda bisected
to the smallest value that meets the budget: rank goes where the loss per MAC saved is
smallest), then greedily spends the slack left by the discrete choices.
Only splits that save at least `min_saving` of the layer's MACs are options.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from graphcomp.passes.svd.factor import Factorization
from graphcomp.passes.svd.layers import Layer

BISECT_STEPS = 80
GREEDY_CAP = 100_000
LAMBDA_RANGE = (1e-40, 1e40)


@dataclass(frozen=True)
class Choice:
    """What happens to one layer: dense (mode None) or a split at `rank` in `mode`."""

    mode: str | None
    rank: int
    macs: float
    params: int
    loss: float


@dataclass
class Candidate:
    """A layer, its factorization per mode, and the loss per unit of tail energy."""

    layer: Layer
    facts: dict[str, Factorization]
    scale: float = 0.0  # loss per unit tail where nothing was measured
    curve: tuple[tuple[float, float], ...] = ()  # measured (tail, loss), ascending tail
    notes: list[str] = field(default_factory=list)
    mean: np.ndarray | None = None  # input channel means: the split's mean shift goes to the bias
    spectra: dict[str, Factorization] = field(default_factory=dict)  # for energy, if not facts

    def loss(self, tail: float) -> float:
        """What the model loses for a truncation leaving `tail` energy out."""
        if not self.curve:
            return self.scale * tail
        ts = [0.0, *(t for t, _ in self.curve)]
        ls = [0.0, *(v for _, v in self.curve)]
        if tail <= ts[-1]:
            return float(np.interp(tail, ts, ls))
        slope = (ls[-1] - ls[-2]) / max(ts[-1] - ts[-2], 1e-30)
        return ls[-1] + max(slope, self.scale) * (tail - ts[-1])

    def dense(self) -> Choice:
        """Keep the layer as it is."""
        return Choice(None, 0, self.layer.dense_macs, self.layer.params, 0.0)

    def at(self, mode: str, rank: int) -> Choice:
        """The split in `mode` at `rank`."""
        form, fact = self.layer.forms[mode], self.facts[mode]
        rows, cols = form.matrix.shape
        return Choice(
            mode, rank, rank * form.macs_per_rank, rank * (rows + cols), self.loss(fact.tail(rank))
        )

    def saves(self, choice: Choice, min_saving: float) -> bool:
        """True when the split costs at most (1 - min_saving) of the dense MACs and params."""
        dense = self.dense()
        if choice.macs > (1.0 - min_saving) * dense.macs:
            return False
        return choice.params < dense.params


def round_rank(rank: int, round_to: int, max_rank: int) -> int:
    """`rank` rounded up to a multiple of `round_to`, within [1, max_rank]."""
    step = max(int(round_to), 1)
    return max(1, min(int(math.ceil(rank / step) * step), max_rank))


def best_of(cand: Candidate, ranks: dict[str, int], min_saving: float) -> Choice:
    """Cheapest worthwhile split among modes (mode -> rank), else dense."""
    splits = [cand.at(mode, r) for mode, r in ranks.items()]
    good = [c for c in splits if cand.saves(c, min_saving)]
    return min(good, key=lambda c: c.macs) if good else cand.dense()


def by_energy(cand: Candidate, energy: float, round_to: int, min_saving: float) -> Choice:
    """Per layer: the smallest rank keeping `energy`, in the cheapest mode."""
    spectra = cand.spectra or cand.facts
    ranks = {
        m: round_rank(f.rank_for_energy(energy), round_to, len(cand.facts[m].s))
        for m, f in spectra.items()
        if f.rank_for_energy(energy) <= len(f.s)
    }
    return best_of(cand, ranks, min_saving)


def by_ratio(cand: Candidate, ratio: float, round_to: int, min_saving: float) -> Choice:
    """Per layer: rank = ratio x full rank, in the cheapest mode."""
    ranks = {
        m: round_rank(math.ceil(ratio * cand.layer.forms[m].max_rank), round_to, len(f.s))
        for m, f in cand.facts.items()
    }
    return best_of(cand, ranks, min_saving)


def options(cand: Candidate, round_to: int, min_saving: float) -> list[Choice]:
    """Dense plus every worthwhile split (ranks on the `round_to` grid), all modes."""
    out = [cand.dense()]
    step = max(int(round_to), 1)
    for mode, fact in cand.facts.items():
        for rank in range(step, len(fact.s) + 1, step):
            choice = cand.at(mode, rank)
            if not cand.saves(choice, min_saving):
                break
            out.append(choice)
    return out


Cost = Callable[[Choice], float]


def allocate(menus: list[list[Choice]], budget: float, cost: Cost) -> tuple[list[Choice], bool]:
    """One choice per menu minimizing total loss with total cost <= budget.

    Returns the choices and whether the budget was met (else the cheapest ones).
    """
    cheapest = [min(menu, key=cost) for menu in menus]
    if sum(cost(c) for c in cheapest) > budget:
        return cheapest, False
    lo, hi = (math.log(v) for v in LAMBDA_RANGE)
    for _ in range(BISECT_STEPS):
        mid = (lo + hi) / 2
        if sum(cost(c) for c in _pick(menus, math.exp(mid), cost)) <= budget:
            hi = mid
        else:
            lo = mid
    chosen = _pick(menus, math.exp(hi), cost)
    return fill(menus, chosen, budget, cost), True


def _pick(menus: list[list[Choice]], lam: float, cost: Cost) -> list[Choice]:
    return [min(menu, key=lambda c: (c.loss + lam * cost(c), cost(c))) for menu in menus]


def fill(
    menus: list[list[Choice]], chosen: list[Choice], budget: float, cost: Cost
) -> list[Choice]:
    """Spend leftover budget on the upgrades with the best loss drop per unit cost."""
    chosen = list(chosen)
    spent = sum(cost(c) for c in chosen)
    for _ in range(GREEDY_CAP):
        best, best_rate = None, 0.0
        for i, menu in enumerate(menus):
            for option in menu:
                extra = cost(option) - cost(chosen[i])
                drop = chosen[i].loss - option.loss
                if drop <= 0 or spent + extra > budget:
                    continue
                rate = drop / max(extra, 1e-30)
                if rate > best_rate:
                    best, best_rate = (i, option), rate
        if best is None:
            break
        spent += cost(best[1]) - cost(chosen[best[0]])
        chosen[best[0]] = best[1]
    return chosen


def between_grid(cand: Candidate, choice: Choice, round_to: int, min_saving: float) -> list[Choice]:
    """Splits at the off-grid ranks just above `choice` (same mode), MatMul/Gemm only.

    For a final fill when the `round_to` grid is too coarse to come near the budget.
    Convs stay on the grid: onnxruntime's blocked (NCHWc) conv kernels need channel
    counts in multiples of 8 or 16, and an off-grid rank falls back to a slower path.
    """
    if choice.mode is None or cand.layer.kind == "conv":
        return []
    top = min(choice.rank + max(int(round_to), 1), len(cand.facts[choice.mode].s) + 1)
    extra = [cand.at(choice.mode, r) for r in range(choice.rank + 1, top)]
    return [c for c in extra if cand.saves(c, min_saving)]
