"""What the whole model loses when one layer is truncated: the svd pass's loss curves.

For each candidate layer the model runs (svd_probe.output_errors: weights as graph
inputs, one onnxruntime session) with only that layer replaced by its rank-r fit, at
the ranks where the split costs PROBE_SHARES of the layer's dense MACs. The relative
squared output error at those points, against the tail energy left out, is the layer's
loss curve (svd_rank.Candidate.loss). Probing at several depths catches layers whose
damage grows faster than their lost energy. Layers whose weight is not an initializer
get a relative-energy loss scaled by the median measured sensitivity.
"""
from __future__ import annotations

import math

import numpy as np
import onnx

from graphcomp.pass_base import PassContext
from passes import svd_probe
from passes.svd_layers import matrix_to_weight
from passes.svd_rank import Candidate

PROBE_SHARES = (0.5, 0.2)  # split MACs / dense MACs at the probe ranks
PROBE_MACS = 1e12  # total MACs the probe runs may spend; fewer samples when exceeded
MIN_PROBE_SAMPLES = 2


def weight_name(cand: Candidate) -> str:
    """Name of the tensor holding the layer's weight."""
    index = 0 if cand.layer.kind == "matmul_left" else 1
    return cand.layer.node.inputs[index].name


def relative_energy(cands: list[Candidate]) -> None:
    """Loss = tail / total per layer (the data-free per-layer proxy)."""
    for cand in cands:
        cand.scale = 1.0 / max(next(iter(cand.facts.values())).total, 1e-30)
        cand.curve = ()


def measure(cands: list[Candidate], model: onnx.ModelProto, ctx: PassContext, samples: int,
            seed: int, sample_macs: float) -> str:
    """Fill each candidate's loss curve from probe runs; returns a note on the source.

    Uses at most `samples` inputs, fewer (down to MIN_PROBE_SAMPLES) when the runs
    would cost more than PROBE_MACS for a model of `sample_macs` MACs per sample.
    """
    relative_energy(cands)
    names = [weight_name(c) for c in cands]
    weights = svd_probe.initializer_values(model, names)
    trials, points = [], []
    for i, cand in enumerate(cands):
        if names[i] not in weights:
            continue
        mode = _probe_mode(cand)
        for rank in _probe_ranks(cand, mode):
            p, q = cand.facts[mode].factors(rank)
            trials.append((names[i], matrix_to_weight(cand.layer, mode, p @ q)))
            points.append((i, cand.facts[mode].tail(rank)))
    if not trials:
        return "relative energy per layer (no weight could be probed)"
    affordable = int(PROBE_MACS / max(sample_macs * (len(trials) + 1), 1.0))
    samples = max(MIN_PROBE_SAMPLES, min(samples, affordable))
    feeds, source = svd_probe.probe_feeds(model, ctx, samples, seed, batch=samples)
    errors = svd_probe.output_errors(model, weights, trials, feeds)
    curves: dict[int, list[tuple[float, float]]] = {}
    for (i, tail), err in zip(points, errors, strict=True):
        curves.setdefault(i, []).append((tail, err))
    ratios = []
    for i, curve in curves.items():
        curve.sort()
        peak = np.maximum.accumulate([e for _, e in curve])  # loss never drops with tail
        cands[i].curve = tuple((t, float(e)) for (t, _), e in zip(curve, peak, strict=True))
        tail, err = cands[i].curve[0]
        cands[i].scale = err / tail if tail > 0 else 0.0
        ratios.append(cands[i].scale * next(iter(cands[i].facts.values())).total)
    typical = float(np.median(ratios))
    for i, cand in enumerate(cands):
        if i not in curves:
            cand.scale *= typical
    return f"measured sensitivity ({samples} {source} inputs, {len(curves)} layers x " \
           f"{len(PROBE_SHARES)} ranks)"


def _probe_mode(cand: Candidate) -> str:
    """The mode that keeps more energy at the first probe share."""
    def lost(mode: str) -> float:
        fact = cand.facts[mode]
        return fact.tail(_rank_at(cand, mode, PROBE_SHARES[0])) / max(fact.total, 1e-30)

    return min(cand.facts, key=lost)


def _probe_ranks(cand: Candidate, mode: str) -> list[int]:
    return sorted({_rank_at(cand, mode, share) for share in PROBE_SHARES})


def _rank_at(cand: Candidate, mode: str, share: float) -> int:
    form, fact = cand.layer.forms[mode], cand.facts[mode]
    rank = math.floor(share * form.dense_macs / max(form.macs_per_rank, 1e-30))
    return max(1, min(len(fact.s) - 1, rank))
