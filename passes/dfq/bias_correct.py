"""Analytic bias correction for the weight quantization that follows.

Quantizing W adds eps = Q(W) - W, which shifts a layer's expected output by
eps E[x] (per output: eps summed over each input channel's kernel, times that
channel's mean). Subtracting it from the bias makes the quantized layer unbiased:
b' = b - eps E[x]. Q is exactly the weight quantizer the qdq pass will use
(graphcomp.core.quant.fake_quant with the same QuantSpec: symmetric signed narrow-range,
per output channel by default, as qdq), so this pass must see the same weights qdq
will; run it right before qdq. E[x] comes from graphcomp.passes.dfq.input_means:
BatchNorm statistics pushed through the previous activation where the model had BN,
else the float model's measured input mean (synthetic inputs, or the user's samples).

Will not touch: MatMul (no bias input), layers with non-constant or shared weights,
layers whose input mean no source can give. Ref: Nagel et al., ICCV 2019, 4.2.1.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_graphsurgeon as gs

from graphcomp.core import graph_utils, quant
from graphcomp.core.errors import ConfigError
from graphcomp.core.pass_base import Pass, PassContext, PassResult
from graphcomp.measure import fields
from graphcomp.measure import stats as channel_stats
from graphcomp.passes.dfq import input_means as stats_inputs
from graphcomp.passes.dfq import layers as layers
from graphcomp.passes.qdq.config import REDUCE_RANGE, ROUNDING
from graphcomp.passes.qdq.place import kernel_order

LAYERS = ("Conv", "Gemm")
WEIGHT_RANGES = ("minmax", "mse")
CLIP_GRID = 50  # clipping ratios tried by weight_range="mse"
MIN_CLIP = 0.3  # smallest ratio of max |w| tried


@dataclasses.dataclass(frozen=True)
class BiasCorrectConfig:
    """The weight quantizer to correct for, and where E[x] comes from."""

    bits: int = 8
    per_channel: bool = True  # as qdq's default weight quantizer
    pow2: bool = False
    stats: str = "auto"  # auto, data-free, bn, analytic, synthetic, calibration
    weight_range: str = "minmax"  # mse: clip weights to the quantization-MSE-optimal range
    reduce_range: str = "auto"  # as qdq: no code pair over 128 where u8s8 kernels saturate
    rounding: str = "balanced"  # as qdq's weights: balanced or nearest
    samples: int = channel_stats.SYNTHETIC_SAMPLES
    prior: str = channel_stats.DEFAULT_PRIOR  # synthetic inputs: smooth (1/f) or normal
    seed: int = 0

    def __post_init__(self) -> None:
        if self.bits not in quant.BITS:
            raise ConfigError(f"bits must be one of {quant.BITS}, got {self.bits}")
        fields.check(self)
        if self.weight_range not in WEIGHT_RANGES:
            raise ConfigError(f"weight_range must be one of {WEIGHT_RANGES}")
        if self.reduce_range not in REDUCE_RANGE:
            raise ConfigError(f"reduce_range must be one of {REDUCE_RANGE}")
        if self.rounding not in ROUNDING:
            raise ConfigError(f"rounding must be one of {ROUNDING}")

    def spec(self, node: gs.Node) -> quant.QuantSpec:
        """The qdq weight quantizer of `node` (output-channel axis when per-channel)."""
        axis = 0 if node.op == "Conv" or graph_utils.attr_int(node, "transB", 0) else 1
        weight = graph_utils.const_value(node.inputs[1])
        reduced = self.bits == 8 and self.reduce_range == "on"
        auto = self.bits == 8 and self.reduce_range == "auto" and weight is not None
        pairs = kernel_order(node, weight) if auto and weight is not None else ()
        balanced = self.rounding == "balanced"
        return quant.QuantSpec(
            self.bits, True, True, self.per_channel, axis, self.pow2, reduced, pairs, balanced
        )


class BiasCorrectPass(Pass):
    """Subtract the expected output shift of weight quantization from each bias."""

    name = "bias-correct"
    summary = "subtract eps E[x] (weight quantization error times input mean) from biases"
    matches = frozenset({"Conv", "Gemm"})
    creates = frozenset()
    lossless = False
    config_class = BiasCorrectConfig
    reads = frozenset({"stats"})  # input means from BN statistics

    def apply(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        """Correct every Conv/Gemm whose input mean is known."""
        result = PassResult(self.name)
        todo = []
        for node in graph_utils.nodes_of(graph, LAYERS):
            if reason := skip_reason(node):
                result.skip(node, reason)
            else:
                todo.append(node)
        cfg = self.config
        means = stats_inputs.input_means(
            graph, ctx, todo, cfg.stats, cfg.samples, cfg.seed, cfg.prior
        )
        sources: dict[str, int] = {}
        for node in todo:
            if node.name not in means:
                result.skip(node, "no estimate of its input mean")
                continue
            mean, source = means[node.name]
            shift = correct(graph, node, mean, cfg.spec(node), cfg.weight_range)
            if shift is None:
                result.skip(node, f"input mean has {mean.size} entries, layer reads another count")
                continue
            sources[source] = sources.get(source, 0) + 1
            result.change(node, f"bias shifted by {_summary(shift)} (E[x] from {source})")
        result.notes["input_mean_sources"] = sources
        return result


def skip_reason(node: gs.Node) -> str | None:
    """Why bias correction leaves `node` alone, or None."""
    w = graph_utils.const_input(node, 1)
    if w is None:
        return "weight is not a constant"
    if graph_utils.is_shared(node.inputs[1]):
        return "weight is shared with other nodes"
    if (
        len(node.inputs) > 2
        and node.inputs[2].name
        and (graph_utils.const_input(node, 2) is None or graph_utils.is_shared(node.inputs[2]))
    ):
        return "bias is not a constant used by this node alone"
    if node.op == "Gemm" and graph_utils.attr_int(node, "transA", 0):
        return "Gemm with transA"
    bias = graph_utils.const_input(node, 2) if node.op == "Gemm" else None
    if bias is not None and bias.ndim == 2 and bias.shape[0] != 1:
        return "Gemm bias varies over rows"
    return None


def correct(
    graph: gs.Graph,
    node: gs.Node,
    mean: np.ndarray,
    spec: quant.QuantSpec,
    weight_range: str = "minmax",
) -> np.ndarray | None:
    """Apply b' = b - eps E[x] to `node`; returns the shift, None on a size mismatch.

    With weight_range="mse" the weight is first clipped to the range that minimises
    its quantization MSE (so qdq's min/max lands there) and eps includes the clipping.
    """
    weight = graph_utils.checked_const_input(node, 1)  # _reason skipped the others
    features = layers.in_features_of(node, weight)
    mean = np.asarray(mean, np.float64).reshape(-1)
    if mean.size != features:
        return None
    kept = weight
    if weight_range == "mse":
        kept = mse_clipped(weight, spec)
        graph_utils.set_const_input(graph, node, 1, kept)
    eps = quant.fake_quant(kept, spec).astype(np.float64) - weight.astype(np.float64)
    eps = eps * layers.alpha(node)
    shift = layers.input_sums(node, eps, features, 1) @ mean
    outs = layers.out_channels_of(node)
    layers.set_bias(graph, node, layers.bias_of(node, outs) - shift, weight.dtype)
    return shift


def mse_clipped(weight: np.ndarray, spec: quant.QuantSpec) -> np.ndarray:
    """`weight` clipped to the symmetric range whose fake-quant MSE is smallest.

    The range is a * max|w| per tensor (or per channel), a in [MIN_CLIP, 1]; the MSE
    includes the clipping error.
    """
    w = weight.astype(np.float64)
    axis = spec.axis % w.ndim if spec.per_channel else None
    rows = (
        np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1) if axis is not None else w.reshape(1, -1)
    )
    top = np.maximum(np.abs(rows).max(axis=1, keepdims=True), quant.MIN_SCALE)
    half = (spec.qmax - spec.qmin) / 2.0
    best, best_err = top, np.full(top.shape, np.inf)
    for ratio in np.linspace(1.0, MIN_CLIP, CLIP_GRID):
        alpha = top * ratio
        scale = alpha / half
        q = np.clip(np.rint(rows / scale), -half, half) * scale
        err = ((q - rows) ** 2).sum(axis=1, keepdims=True)
        better = err < best_err
        best, best_err = np.where(better, alpha, best), np.where(better, err, best_err)
    clipped = np.clip(rows, -best, best)
    if axis is not None:
        moved = np.moveaxis(w, axis, 0)
        return np.moveaxis(clipped.reshape(moved.shape), 0, axis).astype(weight.dtype)
    return clipped.reshape(w.shape).astype(weight.dtype)


def _summary(shift: np.ndarray) -> str:
    return f"mean |d| {np.mean(np.abs(shift)):.3g}, max |d| {np.max(np.abs(shift)):.3g}"
