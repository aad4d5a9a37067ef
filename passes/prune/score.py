"""Importance of each unit of a channel group (see passes/prune/select.py for the formulas).

Scores are summed per unit over the unit's elements: a unit of a residual trunk
gets the filters of every producer and the input columns of every consumer it
touches; a Flatten unit gets its H*W features.
"""

from __future__ import annotations

import numpy as np

from graphcomp.core import graph_utils
from graphcomp.core.pass_base import ChannelStats
from graphcomp.passes.prune.groups import Binding, ChannelGraph, Group

IMPORTANCE = ("energy", "l1", "l2", "bn")
Moments = dict[str, tuple[np.ndarray, np.ndarray]]  # space -> (mean, second moment)


def scores(
    cg: ChannelGraph,
    groups: list[Group],
    kind: str,
    moments: Moments | None,
    bn_std: dict[str, np.ndarray],
    centered: bool,
) -> dict[int, np.ndarray]:
    """Importance per unit of every group in `groups` (index -> array over group.units)."""
    per_space: dict[str, np.ndarray] = {}
    for b in cg.bindings:
        for name, values in _element_scores(b, kind, moments, bn_std, centered):
            per_space[name] = per_space.get(name, 0.0) + values
    if kind == "bn" and not bn_std:
        return scores(cg, groups, "l2", moments, bn_std, centered)
    return {g.index: _gather(cg, g, per_space) for g in groups}


def _gather(cg: ChannelGraph, group: Group, per_space: dict[str, np.ndarray]) -> np.ndarray:
    total = np.zeros(group.units.size)
    for name in group.spaces:
        if name not in per_space:
            continue
        roots = cg.roots[name]
        inside = np.isin(roots, group.units)
        np.add.at(total, np.searchsorted(group.units, roots[inside]), per_space[name][inside])
    return total


def _element_scores(
    b: Binding, kind: str, moments: Moments | None, bn_std: dict[str, np.ndarray], centered: bool
) -> list[tuple[str, np.ndarray]]:
    if kind == "bn":
        return [(b.out, bn_std[b.out])] if b.out in bn_std and b.kind in _LAYER else []
    if kind in ("l1", "l2"):
        if b.out is None or b.kind not in _LAYER:
            return []
        rows = output_rows(b)
        norm = np.abs(rows).sum(axis=1) if kind == "l1" else np.sqrt((rows**2).sum(axis=1))
        return [(b.out, norm)]
    if b.inp is None or b.kind not in _LAYER or b.extra.get("depthwise"):
        return []
    cols = input_rows(b)
    if cols is None:
        return []
    energy = (cols**2).sum(axis=1)
    if moments is not None and b.inp in moments:
        mean, second = moments[b.inp]
        energy = energy * np.maximum(second - mean**2 if centered else second, 0.0)
    return [(b.inp, energy)]


_LAYER = ("conv", "convT", "gemm", "matmul")


def output_rows(b: Binding) -> np.ndarray:
    """Weights of each output channel of layer `b`, one row per channel (float64)."""
    w = graph_utils.checked_const_input(b.node, 1).astype(np.float64)
    if b.kind == "conv":
        return w.reshape(w.shape[0], -1)
    if b.kind == "convT":
        return np.moveaxis(w, 1, 0).reshape(w.shape[1], -1)
    if b.kind == "gemm" and graph_utils.attr_int(b.node, "transB", 0):
        return w
    return w.T


def input_rows(b: Binding) -> np.ndarray | None:
    """Weights reading each input channel of layer `b`, one row per channel (float64)."""
    w = graph_utils.checked_const_input(b.node, 1).astype(np.float64)
    if b.kind == "conv":
        return np.moveaxis(w, 1, 0).reshape(w.shape[1], -1)
    if b.kind == "convT":
        return w.reshape(w.shape[0], -1)
    alpha = graph_utils.attr_float(b.node, "alpha", 1.0) if b.kind == "gemm" else 1.0
    if b.kind == "gemm" and graph_utils.attr_int(b.node, "transB", 0):
        return alpha * w.T
    return alpha * w


def bn_scales(cg: ChannelGraph, stats: dict[str, ChannelStats]) -> dict[str, np.ndarray]:
    """|gamma| per layer output space.

    From a BatchNormalization right after the layer, else from fold-bn's statistics
    (source "bn") in the run's context.
    """
    out: dict[str, np.ndarray] = {}
    for b in cg.bindings:
        if b.out is None or b.kind not in _LAYER:
            continue
        readers = cg.spaces[b.out].tensor.outputs
        bn = next((r for r in readers if r.op == "BatchNormalization"), None)
        gamma = graph_utils.const_input(bn, 1) if bn is not None else None
        found = stats.get(b.out)
        if gamma is not None and gamma.size == cg.spaces[b.out].size:
            out[b.out] = np.abs(gamma.astype(np.float64))
        elif found is not None and found.source == "bn":
            out[b.out] = np.abs(np.asarray(found.std, dtype=np.float64))
    return out
