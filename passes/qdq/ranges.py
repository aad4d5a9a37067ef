"""Activation ranges for the qdq pass, each with the name of where it came from.

In order of preference, per tensor:
1. `ctx.ranges[name]` set by an earlier pass (dfq: from BatchNorm or propagated
   statistics); its own source string is kept;
2. the user's samples (`--calibration-data`, `ctx.calibration`) through the float
   model in onnxruntime: "calibration:<method>";
3. otherwise a data-free estimate: `samples` seeded inputs of `prior` (N(0, 1) by
   default) through the float model, "synthetic:<method>" (the same measurement on
   made-up inputs; it knows the network's weights but not the real input distribution).
Methods: minmax, percentile (p and 100 - p) or mse (fake-quant-optimal clipping, see
graphcomp.core.quant). Values are subsampled to at most `observe.MAX_VALUES` per tensor,
uniformly over every batch (min and max are exact). Tensors the float model cannot
produce are left without a range.
"""

from __future__ import annotations

import logging
from collections.abc import Collection

import numpy as np
import onnx_graphsurgeon as gs

from graphcomp.core import graph_utils, model_io, quant
from graphcomp.core.pass_base import PassContext
from graphcomp.measure import inputs, observe
from graphcomp.passes.qdq.config import QdqConfig

log = logging.getLogger(__name__)

Range = tuple[float, float, str]
HUGE = 1e20  # beyond this a range is a mask constant, not an activation
MAX_WALK = 64  # ops walked back from a tensor to find a range in ctx.ranges
KEEPS_RANGE = ("MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity")


def _range(values: observe.Values, config: QdqConfig, spec: quant.QuantSpec) -> tuple[float, float]:
    """The configured range method on a tensor's observed values (min/max are exact)."""
    lo, hi = values.lo, values.hi
    if not (np.isfinite(lo) and np.isfinite(hi)) or not values.kept:
        return lo, hi
    if config.calibration == "minmax":
        return lo, hi
    if config.calibration == "percentile":
        p_lo, p_hi = quant.percentile(values.values(), config.percentile)
    else:
        p_lo, p_hi = quant.mse(values.values(), spec)
    return max(p_lo, lo), min(p_hi, hi)


def label(config: QdqConfig, ctx: PassContext, name: str) -> str:
    """Where the range of `name` will come from (for the config table)."""
    if name in ctx.ranges:
        return ctx.ranges[name][2]
    return f"{'calibration' if ctx.calibration is not None else 'synthetic'}:{_method(config)}"


def _method(config: QdqConfig) -> str:
    if config.calibration == "percentile":
        return f"percentile({config.percentile:g})"
    return config.calibration


def collect(
    graph: gs.Graph,
    specs: dict[str, quant.QuantSpec],
    ctx: PassContext,
    config: QdqConfig,
    spreads: dict[str, float] | None = None,
    spread_of: Collection[str] = (),
) -> tuple[dict[str, Range], str | None]:
    """Ranges of the tensors in `specs` and an error message if measuring failed.

    With a `spreads` dict, each measured tensor's channel spread goes there (the
    largest channel's max |x| over the median channel's, channels on the last axis).
    The tensors in `spread_of` are measured even when ctx.ranges has their range (an
    earlier pass's range still wins), so their spread is always known.
    """
    tensors = graph.tensors()
    ranges = {n: r for n in specs if (r := from_context(tensors.get(n), ctx)) is not None}
    todo = [n for n in specs if n not in ranges]
    if spreads is not None:
        todo += [n for n in specs if n in ranges and n in spread_of]
    if not todo:
        return ranges, None
    model = model_io.to_model(graph)
    src = inputs.Source(
        ctx.calibration, config.prior, config.samples, config.seed, ctx.input_shapes
    )
    samplers = {n: observe.Values(np.random.default_rng(config.seed)) for n in todo}
    try:
        observe.collect(model, samplers, src)
    except Exception as e:  # noqa: BLE001 - any runtime failure leaves the tensors float
        log.debug("measuring activation ranges failed: %r", e)
        return ranges, f"the float model could not be run to measure ranges ({e})"
    for name, sampler in samplers.items():
        if name not in ranges:
            lo, hi = _range(sampler, config, specs[name])
            ranges[name] = (float(lo), float(hi), f"{src.label}:{_method(config)}")
        if spreads is not None:
            spreads[name] = sampler.channel_spread()
    return ranges, None


def from_context(tensor: gs.Tensor | None, ctx: PassContext) -> Range | None:
    """The range of `tensor` in ctx.ranges, looking back through ops that keep or clip it.

    Through Relu/Clip the found range is clipped; through MaxPool/Reshape/... it is
    kept, so dfq may key its ranges by pre-activation tensors.
    """
    clips: list[tuple[float, float]] = []
    for _ in range(MAX_WALK):
        if tensor is None:
            return None
        if tensor.name in ctx.ranges:
            lo, hi, source = ctx.ranges[tensor.name]
            for c_lo, c_hi in clips:
                lo, hi = max(lo, c_lo), min(hi, c_hi)
            return lo, hi, source
        node = tensor.inputs[0] if tensor.inputs else None
        if node is None or node.op not in ("Relu", "Clip", *KEEPS_RANGE) or not node.inputs:
            return None
        if node.op in ("Relu", "Clip"):
            clips.append(_clip_bounds(node))
        tensor = node.inputs[0]
    return None


def _clip_bounds(node: gs.Node) -> tuple[float, float]:
    if node.op == "Relu":
        return 0.0, np.inf
    bounds = []
    for index, key, default in ((1, "min", -np.inf), (2, "max", np.inf)):
        value = graph_utils.const_input(node, index)
        value = node.attrs.get(key, default) if value is None else value
        bounds.append(float(value))
    return bounds[0], bounds[1]


def usable(rng: Range | None) -> str | None:
    """Why a range cannot be quantized (None when it can)."""
    if rng is None:
        return "no activation range"
    lo, hi, _ = rng
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return "activation range is not finite"
    if max(abs(lo), abs(hi)) > HUGE:
        return f"activation range [{lo:.3g}, {hi:.3g}] holds a mask-like constant"
    return None
