"""Scales and zero points of the qdq pass, from the plan and the measured ranges.

Activations: one (scale, zero_point) per scale group (graphcomp.quant, range widened
to contain 0), from the union of the members' ranges; `fixed` rules give the scale
(or 2^-frac_bits) and zero point directly. A Concat group whose members' range widths
differ by more than `concat_ratio` is split back into its must-share parts (a box
coordinate and a class probability must not share one int8 grid).
Weights: min/max per output channel (or per tensor). Bias: int32 codes with scale
s_input * s_weight; when a code would overflow int32 (a near-zero weight channel with
a large bias) that channel's weight scale is raised until the bias fits.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict

import numpy as np

from graphcomp.core import quant
from graphcomp.passes.qdq.config import TensorRule
from graphcomp.passes.qdq.place import Act, Plan
from graphcomp.passes.qdq.ranges import Range, usable

BIAS_HEADROOM = 0.5  # use at most half of the int32 range for bias codes


@dataclasses.dataclass(frozen=True)
class Params:
    """A tensor's quantizer: spec, scale, zero point, where the scale came from."""

    spec: quant.QuantSpec
    scale: np.ndarray
    zero_point: np.ndarray
    source: str


def fixed_params(rule: TensorRule, spec: quant.QuantSpec) -> tuple[np.ndarray, np.ndarray]:
    """(scale, zero_point) of a `fixed` rule; zero point defaults to the symmetric middle."""
    scale = (
        rule.scale
        if rule.scale is not None
        else quant.scale_from_fraction_bits(int(rule.frac_bits or 0))
    )
    if rule.zero_point is not None:
        zp = rule.zero_point
    else:
        zp = 0 if spec.signed or not spec.symmetric else 2 ** (spec.bits - 1)
    return np.asarray(scale, dtype=np.float32), np.asarray(zp, dtype=np.int64)


def fixed_source(rule: TensorRule) -> str:
    """Text for the table: 'fixed 2^-5' or 'fixed 0.01'."""
    return f"fixed 2^-{rule.frac_bits}" if rule.frac_bits is not None else f"fixed {rule.scale:g}"


def activation_params(
    plan: Plan, ranges: dict[str, Range], concat_ratio: float
) -> tuple[dict[str, Params], dict[str, str], list[str]]:
    """Params per static activation, reasons for the ones left float, and notes."""
    static = {n: a for n, a in plan.acts.items() if not a.dynamic}
    dropped = {
        n: r for n, a in static.items() if a.rule.method == "auto" and (r := usable(ranges.get(n)))
    }
    live = {n: a for n, a in static.items() if n not in dropped}
    notes = _split_concat_groups(live, ranges, concat_ratio)
    groups: dict[str, list[Act]] = defaultdict(list)
    for act in live.values():
        groups[act.group].append(act)
    params = {}
    for members in groups.values():
        shared = _group_params(members, ranges)
        for act in members:
            params[act.tensor.name] = shared
    return params, dropped, notes


def _group_params(members: list[Act], ranges: dict[str, Range]) -> Params:
    lead = next((a for a in members if a.rule.method == "fixed"), members[0])
    spec = lead.rule.spec(per_channel=False)
    names = ", ".join(a.tensor.name for a in members if a is not lead)
    shared = f" (shared with {names})" if names else ""
    if lead.rule.method == "fixed":
        scale, zp = fixed_params(lead.rule, spec)
        return Params(spec, scale, zp, fixed_source(lead.rule) + shared)
    known = [ranges[a.tensor.name] for a in members if a.tensor.name in ranges]
    lo, hi = min(r[0] for r in known), max(r[1] for r in known)
    scale, zp = quant.compute_scale_zero_point(lo, hi, spec)
    return Params(spec, scale, zp, ranges[lead.tensor.name][2] + shared)


def _split_concat_groups(live: dict[str, Act], ranges: dict[str, Range], ratio: float) -> list[str]:
    """Split soft groups whose parts have very different ranges or rules."""
    notes = []
    groups: dict[str, list[Act]] = defaultdict(list)
    for act in live.values():
        groups[act.group].append(act)
    for gid, members in groups.items():
        hard = {a.hard_group for a in members}
        if len(hard) < 2:
            continue
        widths = [_width(ranges.get(a.tensor.name)) for a in members]
        finite = [w for w in widths if w > 0]
        specs = {a.rule.spec() for a in members}
        spread = max(finite) / min(finite) if finite else 1.0
        if spread > ratio or len(specs) > 1:
            for act in members:
                act.group = act.hard_group
            why = f"ranges differ {spread:.0f}x" if spread > ratio else "rules differ"
            notes.append(f"Concat group {gid}: inputs keep their own scales ({why})")
    return notes


def _width(rng: Range | None) -> float:
    if rng is None:
        return 0.0
    return float(max(rng[1], 0.0) - min(rng[0], 0.0))


def weight_params(
    rule: TensorRule,
    weight: np.ndarray,
    axis: int,
    per_channel: bool,
    bias: np.ndarray | None = None,
    input_scale: np.ndarray | None = None,
) -> tuple[Params, np.ndarray]:
    """(params, codes) of a weight; scales raised where the bias would overflow int32."""
    spec = rule.spec(axis=axis, per_channel=per_channel)
    if rule.method == "fixed":
        scale, zp = fixed_params(rule, spec)
        if per_channel:
            n = weight.shape[axis % weight.ndim]
            scale, zp = np.full(n, scale, np.float32), np.full(n, zp, np.int64)
        source = fixed_source(rule)
    else:
        scale, zp = quant.compute_scale_zero_point(*quant.weight_range(weight, spec), spec)
        source = "min/max per channel" if per_channel else "min/max"
    if bias is not None and input_scale is not None:
        scale = _fit_bias(scale, bias, float(input_scale), spec)
    codes = quant.quantize(weight, scale, zp, spec)
    return Params(spec, scale, zp, source), codes


def _fit_bias(
    scale: np.ndarray, bias: np.ndarray, input_scale: float, spec: quant.QuantSpec
) -> np.ndarray:
    limit = quant.INT32_LIMIT * BIAS_HEADROOM
    needed = np.abs(bias.astype(np.float64)) / (input_scale * limit)
    if np.ndim(scale) == 0:
        needed = np.asarray(np.max(needed))
    raised = np.maximum(scale.astype(np.float64), needed)
    if spec.pow2:
        raised = np.where(raised > scale, quant.pow2_ceil(raised), scale)
    return raised.astype(np.float32)


def bias_codes(
    bias: np.ndarray, input_scale: np.ndarray, weight_scale: np.ndarray
) -> tuple[np.ndarray, np.ndarray] | None:
    """int32 codes and scale of a bias (None on overflow)."""
    return quant.quantize_bias(bias.reshape(-1), float(input_scale), weight_scale)
