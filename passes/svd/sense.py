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

from graphcomp.core import graph_utils
from graphcomp.core.pass_base import PassContext
from graphcomp.measure import inputs
from graphcomp.passes.svd import probe as svd_probe
from graphcomp.passes.svd.layers import matrix_to_weight
from graphcomp.passes.svd.rank import Candidate

# split MACs / dense MACs at the probe ranks; 0.75 measures the mild truncations that a
# 0.8x budget picks (MiniLM tuning split, data-free 0.923 -> 0.930; docs/svd.md)
PROBE_SHARES = (0.75, 0.5, 0.2)
MODE_SHARE = 0.5  # convs are probed in the mode that keeps more energy at this share
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


def measure(
    cands: list[Candidate],
    model: onnx.ModelProto,
    ctx: PassContext,
    samples: int,
    seed: int,
    sample_macs: float,
    prior: str = inputs.DEFAULT_PRIOR,
) -> str:
    """Fill each candidate's loss curve from probe runs; returns a note on the source.

    Uses at most `samples` inputs, fewer (down to MIN_PROBE_SAMPLES) when the runs
    would cost more than PROBE_MACS for a model of `sample_macs` MACs per sample.
    """
    relative_energy(cands)
    base = svd_probe.initializer_values(model, [weight_name(c) for c in cands])
    shifts: dict[str, str] = {}
    trials, points = [], []
    for i, cand in enumerate(cands):
        if weight_name(cand) in base:
            for trial, tail in _trials(cand, base, shifts):
                trials.append(trial)
                points.append((i, tail))
    if not trials:
        return "relative energy per layer (no weight could be probed)"
    affordable = int(PROBE_MACS / max(sample_macs * (len(trials) + 1), 1.0))
    samples = max(MIN_PROBE_SAMPLES, min(samples, affordable))
    src = svd_probe.source(ctx, samples, seed, prior)
    source = src.label

    def run(feed: inputs.Source) -> list[float]:
        feeds = list(feed.batches(model, samples))  # kept: every trial reuses them
        return svd_probe.output_errors(model, base, shifts, trials, feeds)

    errors = svd_probe.joined_or_not(run, src)
    curves: dict[int, list[tuple[float, float]]] = {}
    for (i, tail), err in zip(points, errors, strict=True):
        curves.setdefault(i, []).append((tail, err))
    _set_curves(cands, curves)
    return (
        f"measured sensitivity ({samples} {source} inputs, {len(curves)} layers x "
        f"{len(PROBE_SHARES)} ranks)"
    )


def _trials(
    cand: Candidate, base: dict[str, np.ndarray], shifts: dict[str, str]
) -> list[tuple[dict[str, np.ndarray], float]]:
    """(inputs to feed, tail) per probe rank; registers the layer's shift input."""
    mode = _probe_mode(cand)
    out = []
    shift_name = ""
    if cand.mean is not None:
        output = cand.layer.node.outputs[0].name
        shift_name = shifts.setdefault(output, f"{output}__svd_shift_in")
        base[shift_name] = np.zeros(shift_shape(cand), cand.layer.weight.dtype)
    for rank in _probe_ranks(cand, mode):
        p, q = cand.facts[mode].factors(rank)
        trial = {weight_name(cand): matrix_to_weight(cand.layer, mode, p @ q)}
        shift = mean_shift(cand, mode, p, q) if shift_name else None
        if shift is not None:
            trial[shift_name] = shift.reshape(shift_shape(cand)).astype(cand.layer.weight.dtype)
        out.append((trial, cand.facts[mode].tail(rank)))
    return out


def _set_curves(cands: list[Candidate], curves: dict[int, list[tuple[float, float]]]) -> None:
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


def mean_shift(cand: Candidate, mode: str, p: np.ndarray, q: np.ndarray) -> np.ndarray | None:
    """(M - P Q)^T E[x] per output channel: the mean output change of the split."""
    if cand.mean is None:
        return None
    delta = cand.layer.forms[mode].matrix - p @ q
    shift = np.repeat(cand.mean, delta.shape[0] // cand.mean.size) @ delta
    if mode == "spatial":
        shift = shift.reshape(cand.layer.weight.shape[0], -1).sum(axis=1)
    if cand.layer.kind == "gemm":
        shift = shift * float(np.asarray(graph_utils.attr(cand.layer.node, "alpha", 1.0)))
    return shift


def shift_shape(cand: Candidate) -> tuple[int, ...]:
    """Shape that broadcasts a per-output-channel vector over the layer's output."""
    layer = cand.layer
    if layer.kind == "conv":
        return (layer.weight.shape[0], *([1] * (layer.weight.ndim - 2)))
    if layer.kind == "matmul_left":
        return (layer.weight.shape[0], 1)
    return (layer.forms["linear"].matrix.shape[1],)


def _probe_mode(cand: Candidate) -> str:
    """The mode that keeps more energy at MODE_SHARE."""

    def lost(mode: str) -> float:
        fact = cand.facts[mode]
        return fact.tail(_rank_at(cand, mode, MODE_SHARE)) / max(fact.total, 1e-30)

    return min(cand.facts, key=lost)


def _probe_ranks(cand: Candidate, mode: str) -> list[int]:
    return sorted({_rank_at(cand, mode, share) for share in PROBE_SHARES})


def _rank_at(cand: Candidate, mode: str, share: float) -> int:
    form, fact = cand.layer.forms[mode], cand.facts[mode]
    rank = math.floor(share * form.dense_macs / max(form.macs_per_rank, 1e-30))
    return max(1, min(len(fact.s) - 1, rank))
