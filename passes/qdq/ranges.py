"""Activation ranges for the qdq pass, each with the name of where it came from.

In order of preference, per tensor:
1. `ctx.ranges[name]` set by an earlier pass (dfq: from BatchNorm or propagated
   statistics); its own source string is kept;
2. the user's samples (`--calibration-data`, `ctx.calibration`) through the float
   model in onnxruntime: "calibration:<method>";
3. otherwise a data-free estimate: `samples` seeded N(0, 1) inputs through the float
   model, "synthetic:<method>" (the same measurement on made-up inputs; it knows the
   network's weights but not the real input distribution).
Methods: minmax, percentile (p and 100 - p) or mse (fake-quant-optimal clipping, see
graphcomp.core.quant). Values are subsampled to at most `MAX_VALUES` per tensor (min and max
are exact). Tensors the float model cannot produce are left without a range.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from graphcomp.core import graph_utils, quant
from graphcomp.core.pass_base import PassContext
from graphcomp.measure import observe
from graphcomp.passes.qdq.config import QdqConfig

log = logging.getLogger(__name__)

Range = tuple[float, float, str]
MAX_VALUES = 1 << 19  # kept per tensor for percentile / mse
PER_BATCH = 1 << 16  # drawn per tensor from each batch
HUGE = 1e20  # beyond this a range is a mask constant, not an activation
MAX_WALK = 64  # ops walked back from a tensor to find a range in ctx.ranges
KEEPS_RANGE = ("MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity")


class _Sampler:
    """Exact min/max plus a seeded subsample of the values seen."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.lo, self.hi, self.count = np.inf, -np.inf, 0
        self.kept: list[np.ndarray] = []
        self.channel_max: np.ndarray | None = None  # max |x| per index of the last axis

    def add(self, values: np.ndarray) -> None:
        values = np.asarray(values, dtype=np.float32)
        flat = values.ravel()
        if flat.size == 0:
            return
        self._track_channels(values)
        finite = flat[np.isfinite(flat)]
        if finite.size < flat.size:  # an infinite value: the range is unusable
            self.lo, self.hi = -np.inf, np.inf
        if finite.size:
            self.lo = min(self.lo, float(finite.min()))
            self.hi = max(self.hi, float(finite.max()))
        if self.count < MAX_VALUES and finite.size:
            take = (
                finite
                if finite.size <= PER_BATCH
                else self.rng.choice(finite, PER_BATCH, replace=False)
            )
            self.kept.append(take)
            self.count += take.size

    def _track_channels(self, values: np.ndarray) -> None:
        if values.ndim < 2 or not np.all(np.isfinite(values)):
            return
        peak = np.abs(values).reshape(-1, values.shape[-1]).max(axis=0)
        same = self.channel_max is not None and self.channel_max.shape == peak.shape
        self.channel_max = np.maximum(self.channel_max, peak) if same else peak

    def channel_spread(self) -> float:
        """Largest channel's max |x| over the median channel's (channels: last axis)."""
        if self.channel_max is None or self.channel_max.size < 2:
            return 1.0
        median = float(np.median(self.channel_max))
        return float(self.channel_max.max()) / median if median > 0 else np.inf

    def range(self, config: QdqConfig, spec: quant.QuantSpec) -> tuple[float, float]:
        if not (np.isfinite(self.lo) and np.isfinite(self.hi)) or not self.kept:
            return self.lo, self.hi
        values = np.concatenate(self.kept)
        if config.calibration == "minmax":
            return self.lo, self.hi
        if config.calibration == "percentile":
            lo, hi = quant.percentile(values, config.percentile)
        else:
            lo, hi = quant.mse(values, spec)
        return max(lo, self.lo), min(hi, self.hi)


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
) -> tuple[dict[str, Range], str | None]:
    """Ranges of the tensors in `specs` and an error message if measuring failed.

    With a `spreads` dict, each measured tensor's channel spread goes there (the
    largest channel's max |x| over the median channel's, channels on the last axis).
    """
    tensors = graph.tensors()
    ranges = {n: r for n in specs if (r := from_context(tensors.get(n), ctx)) is not None}
    todo = [n for n in specs if n not in ranges]
    if not todo:
        return ranges, None
    model = _export(graph)
    try:
        batches, source = observe.feeds_for(
            model,
            ctx.calibration,
            n=config.samples,
            seed=config.seed,
            input_shapes=ctx.input_shapes,
        )
        samplers = {n: _Sampler(np.random.default_rng(config.seed)) for n in todo}
        for values in observe.stream(model, todo, batches):
            for name, value in values.items():
                samplers[name].add(value)
    except Exception as e:  # noqa: BLE001 - any runtime failure leaves the tensors float
        log.debug("measuring activation ranges failed: %r", e)
        return ranges, f"the float model could not be run to measure ranges ({e})"
    for name, sampler in samplers.items():
        lo, hi = sampler.range(config, specs[name])
        ranges[name] = (float(lo), float(hi), f"{source}:{_method(config)}")
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


def _export(graph: gs.Graph) -> onnx.ModelProto:
    """The float graph as a runnable ModelProto (no edits to `graph`)."""
    model = gs.export_onnx(graph.copy().cleanup(), do_type_check=False)
    model.ir_version = onnx.helper.find_min_ir_version_for(list(model.opset_import), True)
    return model
