"""Data-free quantization: int8 without a single sample (Nagel et al., ICCV 2019).

Steps, each a pass the pipeline runs, checks and records as `dfq/<step>`: simplify
-> fold-bn (BatchNorm statistics kept) -> `stats`: per-channel statistics of
every layer output (graphcomp.measure.stats: "bn" where BN was folded, else the data-free
default, or the user's samples) -> equalize (CLE, exact; ReLU6 kept) -> absorb-bias
-> bias-correct for the weight quantizer qdq will use -> activation ranges from the
statistics (`ranges`: mean +- range_k std per channel through each activation,
dfq_ranges) -> `measure-ranges` for the other quantized tensors -> qdq-core (qdq
without its own simplify/fold-bn; per-channel int8 weights by default, opset raised to
13 when lower; `per_channel=False` is the per-tensor-hardware / hard-benchmark profile,
with equalization and bias correction on, as `equalize=None` and `correct=None`
resolve; transformer graphs get qdq's dynamic MatMul inputs and float islands). The
statistics are measured once and rescaled/shifted in ctx.stats as equalize and
absorb-bias edit the layers; `summarize`
adds the run-level notes (equalize coverage, weight SQNR before/after, ReLU6 bounds,
charts) to the steps.
Each step can be switched off (the ablation rows of the README). Defaults measured on
an ImageNet EfficientNet-Lite0 (ReLU6, depthwise; top-1 agreement with float on 512
photo crops, per-tensor int8, no data): equalize at strength 0.75 (s^0.75 of the
converged scales: 0.89 vs 0.80 at full strength, which widens the activations too
much); bias correction on (0.76 -> 0.89); absorb-bias off (with BN statistics 0.89 ->
0.84, with synthetic statistics it collapses to 0.3: c = mean - 3 std is only as good
as the statistics' tails).

Will not touch what each step skips (residual junctions, Concat, shared weights,
non-homogeneous activations: all reported with the reason); a model with nothing to
equalize is still quantized and the report says so.
"""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np
import onnx_graphsurgeon as gs

from graphcomp.core import graph_utils, model_io, quant
from graphcomp.core.errors import ConfigError
from graphcomp.core.pass_base import Pass, PassContext, PassResult
from graphcomp.measure import fields, observe
from graphcomp.measure import stats as channel_stats
from graphcomp.passes.dfq import input_means
from graphcomp.passes.dfq.absorb_bias import AbsorbBiasConfig, AbsorbBiasPass
from graphcomp.passes.dfq.bias_correct import BiasCorrectConfig, BiasCorrectPass, skip_reason
from graphcomp.passes.dfq.equalize import CLIP_MODES, EqualizeConfig, EqualizePass
from graphcomp.passes.dfq.layers import out_rows
from graphcomp.passes.dfq.ranges import FROM_BN, activation_ranges, measured_ranges
from graphcomp.passes.fold_bn import FoldBnPass
from graphcomp.passes.qdq.config import check_fidelity
from graphcomp.passes.qdq.place import build_plan
from graphcomp.passes.qdq.qdq import QdqConfig, QdqCorePass, QdqPass, SimplifyStep

RANGE_MODES = ("stats", "measure")
# dB: a safety net for a broken output (noise near the signal); 30 dB and 40 dB floated
# tensors that cost accuracy on the realbench tuning split (docs/dfq.md, sensitivity)
DEFAULT_FIDELITY = 5.0
TINY_POWER = 1e-30  # floor of a channel's weight / error power (all-zero channels)
MEASURED = ("synthetic", "calibration")  # statistics sources that run the model
INPUT_RANGE_SAMPLES = 8  # synthetic samples for the ranges of graph inputs alone, at least


@dataclasses.dataclass(frozen=True)
class DfqConfig:
    """Which dfq steps run, with what quantizer and which statistics."""

    bits: int = 8
    per_channel: bool = True  # weights per output channel; False: per-tensor hardware profile
    equalize: bool | None = None  # None: on for per-tensor weights, off for per-channel
    absorb: bool = False  # measured to hurt on a real ImageNet CNN (see module docstring)
    correct: bool | None = None  # None: on for per-tensor weights, off for per-channel
    clip: str = "per-channel"  # ReLU6 under equalization: see passes/equalize.py
    stats: str = "auto"  # auto, data-free, bn, analytic, synthetic, calibration
    ranges: str = "stats"  # stats: mean +- range_k std; measure: percentile on the prior
    # 8-bit; 5 chosen on scripts/realbench.py's tuning split over nine families (6, the
    # earlier default, was chosen on the zoo eval set); see docs/realbench.md
    range_k: float = 5.0
    percentile: float = 99.99  # measured ranges (tensors the statistics do not reach)
    absorb_k: float = 3.0
    weight_range: str = "minmax"  # mse: clip weights to the MSE-optimal range first
    reduce_range: str = "auto"  # no saturating int8 code pairs in u8s8 kernels (see qdq)
    rounding: str = "balanced"  # weights: balanced (SQuant's CASE, see qdq) or nearest
    clip_k: float = 4.0  # act_aware / absorb: a channel reaches mean + clip_k std
    act_aware: bool = False  # equalize never widens an activation tensor's range
    strength: float = 0.75  # equalize applies s^strength of the converged scales
    samples: int = channel_stats.SYNTHETIC_SAMPLES
    prior: str = channel_stats.DEFAULT_PRIOR  # synthetic inputs: smooth (1/f) or normal
    quantize: bool = True  # False: stop before qdq (float model with dfq weights)
    plot: str | None = None  # directory for the weight-range and error charts
    fidelity: float | None = DEFAULT_FIDELITY  # output SNR (dB) below which the worst
    # tensors stay float (passes/qdq/sense.py); none: no probe, no sensitivity table
    probe_samples: int = 4  # inputs of the sensitivity probe (the prior, or your samples)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.bits not in quant.BITS:
            raise ConfigError(f"bits must be one of {quant.BITS}, got {self.bits}")
        if self.clip not in CLIP_MODES:
            raise ConfigError(f"clip must be one of {CLIP_MODES}, got '{self.clip}'")
        if self.ranges not in RANGE_MODES:
            raise ConfigError(f"ranges must be one of {RANGE_MODES}, got '{self.ranges}'")
        if not (self.range_k > 0 and self.absorb_k >= 0):
            raise ConfigError("range_k must be > 0 and absorb_k >= 0")
        if not 50.0 < self.percentile <= 100.0:
            raise ConfigError(f"percentile must be in (50, 100], got {self.percentile}")
        check_fidelity(self)
        fields.check(self)

    @property
    def corrects(self) -> bool:
        """Whether bias-correct runs: `correct`, else only for per-tensor weights.

        Per-channel weights leave a small eps; its correction from synthetic E[x] cost
        accuracy on all three realbench CNNs' tuning split (docs/dfq.md).
        """
        return self.correct if self.correct is not None else not self.per_channel

    @property
    def equalizes(self) -> bool:
        """Whether equalize runs: `equalize`, else only for per-tensor weights.

        Per-channel weights already have a scale per channel; equalizing them only moves
        range into the per-tensor activations. Off, the realbench OCR CNNs' tuning split
        was equal or better over three seeds and every zoo model stayed within 3 images
        of float (on, densecat_s_bn lost 7); see docs/dfq.md.
        """
        return self.equalize if self.equalize is not None else not self.per_channel


class DfqPass(Pass):
    """fold-bn, equalize, absorb-bias, bias-correct, ranges from statistics, qdq.

    Composite: the pipeline runs and records each step (`dfq/simplify`, `dfq/fold-bn`,
    `dfq/stats`, `dfq/equalize`, ...); `summarize` adds the run-level notes.
    """

    name = "dfq"
    summary = "data-free int8: fold-bn, equalize, absorb-bias, bias-correct, stat ranges, qdq"
    matches = frozenset(
        {"BatchNormalization", "Conv", "Gemm", "MatMul", "Clip", "Min"} | QdqPass.matches
    )  # QdqPass.matches has simplify's ops
    creates = frozenset({"Relu", "Min"}) | QdqPass.creates
    lossless = False
    config_class = DfqConfig

    def quantizes(self) -> bool:
        """True unless `quantize=false` (then the output is a float model)."""
        return self.config.quantize

    def requires(self, graph: gs.Graph, ctx: PassContext) -> None:
        """The qdq step's preconditions (not quantized already, opset), before any step."""
        if self.config.quantize:
            QdqCorePass(self._qdq_config()).requires(graph, ctx)

    def steps(self) -> list[Pass]:
        """The steps, in order; the bracketed ones by config.

        simplify, fold-bn, stats, [equalize], [absorb-bias], [bias-correct], ranges,
        [measure-ranges, qdq-core].
        """
        cfg = self.config
        steps: list[Pass] = [SimplifyStep(), FoldBnPass(), _StatsStep(cfg)]
        steps += self._data_free_steps()
        steps.append(_RangesStep(cfg))
        if cfg.quantize:
            steps += [_MeasureRestStep(cfg), QdqCorePass(self._qdq_config())]
        return steps

    def summarize(self, results: dict[str, PassResult]) -> None:
        """Equalize coverage, weight SQNR before/after, ReLU6 bounds, charts."""
        cfg = self.config
        eq = results.get("equalize")
        if eq is not None and not eq.notes.get("links"):
            eq.notes["equalize_summary"] = "nothing to equalize (no provable layer pair)"
        elif eq is not None:
            eq.notes["equalize_coverage"] = (
                f"{eq.notes['layers_covered']} layers, {eq.notes['params_covered']:.0%} of weights"
            )
        naive = results["stats"].notes.pop("weight_sqnr_db", {})
        ranges = results["ranges"].notes
        now = ranges.get("weight_sqnr_db", {})
        ranges["weight_sqnr_db"] = {n: [naive[n], now[n]] for n in now if n in naive}
        core = results.get("qdq-core")
        clamps = Counter(core.notes.get("clamps", {}).values()) if core is not None else {}
        if core is not None and clamps:
            core.notes["relu6_bounds"] = ", ".join(
                f"{n} {how}" for how, n in sorted(clamps.items())
            )
        if cfg.plot:
            from graphcomp.passes.dfq import plot

            notes = {"equalize": eq.notes if eq is not None else {}, **ranges}
            notes["sensitivity_table"] = core.notes.get("sensitivity_table") if core else None
            ranges["plots"] = plot.dfq_charts(cfg.plot, notes)

    def _data_free_steps(self) -> list[Pass]:
        cfg, steps = self.config, list[Pass]()
        if cfg.equalizes:
            # clip="range" must fit the scales to the ranges qdq will get: range_k
            clip_k = cfg.range_k if cfg.clip == "range" else cfg.clip_k
            steps.append(
                EqualizePass(
                    EqualizeConfig(
                        clip=cfg.clip,
                        clip_k=clip_k,
                        act_aware=cfg.act_aware,
                        strength=cfg.strength,
                        **fields.forward(cfg),
                    )
                )
            )
        if cfg.absorb:
            clip = "stats" if cfg.clip == "constrain" else "per-channel"  # keep the Clip
            steps.append(
                AbsorbBiasPass(
                    AbsorbBiasConfig(
                        k=cfg.absorb_k,
                        clip=clip,
                        clip_k=cfg.clip_k,
                        **fields.forward(cfg),
                    )
                )
            )
        if cfg.corrects:
            steps.append(
                BiasCorrectPass(
                    BiasCorrectConfig(
                        bits=cfg.bits,
                        per_channel=cfg.per_channel,
                        weight_range=cfg.weight_range,
                        reduce_range=cfg.reduce_range,
                        rounding=cfg.rounding,
                        **fields.forward(cfg),
                    )
                )
            )
        return steps

    def _qdq_config(self) -> QdqConfig:
        return _qdq_config(self.config)


def _qdq_config(cfg: DfqConfig) -> QdqConfig:
    return QdqConfig(
        bits=cfg.bits,
        per_channel=cfg.per_channel,
        samples=cfg.samples,
        prior=cfg.prior,
        percentile=cfg.percentile,
        reduce_range=cfg.reduce_range,
        rounding=cfg.rounding,
        seed=cfg.seed,
        fidelity=cfg.fidelity,
        probe_samples=cfg.probe_samples,
    )


class _StatsStep(Pass):
    """Per-channel statistics of every layer output into ctx.stats (graphcomp.measure.stats).

    Also notes the naive weight quantizer's SQNR (before equalization) per layer.
    """

    name = "stats"
    lossless = True
    config_class = DfqConfig
    reads = frozenset({"stats"})  # "bn" entries left by fold-bn win
    writes = frozenset({"stats"})

    def apply(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        """Estimate and store; notes: sources and naive weight SQNR."""
        cfg, result = self.config, PassResult(self.name)
        result.notes["weight_sqnr_db"] = _weight_sqnr(graph, cfg)
        extra = self._input_means_to_measure(graph, ctx)
        known = channel_stats.estimate(
            graph, ctx, cfg.stats, samples=cfg.samples, seed=cfg.seed, prior=cfg.prior, extra=extra
        )
        ctx.stats.update(known)
        if extra:
            result.notes["input_means_measured"] = sum(n in known for n in extra)
        sources = Counter(s.source for n, s in known.items() if n not in extra)
        result.notes["stat_sources"] = dict(sources)
        count = _synthetic_count(graph, ctx, cfg) if "synthetic" in sources else cfg.samples
        result.notes["statistics"] = _statistics_note(sources, count)
        return result

    def _input_means_to_measure(self, graph: gs.Graph, ctx: PassContext) -> dict[str, int]:
        """Layer inputs bias-correct will need measured, to measure in this same run.

        Only when bias-correct runs and absorb-bias does not (its shift is not a
        rescaling: the measured means would not follow it).
        """
        cfg = self.config
        if not cfg.corrects or cfg.absorb:
            return {}
        layers = [n for n in graph_utils.nodes_of(graph, ("Conv", "Gemm")) if not skip_reason(n)]
        return input_means.to_measure(graph, ctx, layers)


class _RangesStep(Pass):
    """Activation ranges from the statistics (mean +- range_k std through each activation).

    Only with `ranges="stats"`; always notes the SQNR of the weights handed to qdq.
    """

    name = "ranges"
    lossless = True
    config_class = DfqConfig
    reads = frozenset({"stats", "ranges"})
    writes = frozenset({"ranges"})

    def apply(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        """Estimate the statistics as the layers are now, then their ranges."""
        cfg, result = self.config, PassResult(self.name)
        result.notes["weight_sqnr_db"] = _weight_sqnr(graph, cfg)
        if cfg.ranges == "stats":
            known = channel_stats.estimate(
                graph, ctx, cfg.stats, None, cfg.samples, cfg.seed, cfg.prior
            )
            fresh = activation_ranges(graph, known, cfg.range_k)
            ctx.ranges.update({n: r for n, r in fresh.items() if n not in ctx.ranges})
            result.notes["ranges_from_stats"] = len(fresh)
        return result


class _MeasureRestStep(Pass):
    """Ranges of the other tensors qdq quantizes, measured on the statistics' inputs."""

    name = "measure-ranges"
    lossless = True
    config_class = DfqConfig
    reads = frozenset({"ranges"})
    writes = frozenset({"ranges"})

    def apply(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        """Measure what has no range yet; notes: the count and whether the model ran."""
        result = PassResult(self.name)
        count, ran = self._measure_rest(graph, ctx)
        result.notes["ranges_measured"] = count
        result.notes["forward_pass"] = ran
        return result

    def _measure_rest(self, graph: gs.Graph, ctx: PassContext) -> tuple[int, bool]:
        """(tensors measured, whether the model ran: False when they are graph inputs)."""
        cfg, qcfg = self.config, _qdq_config(self.config)
        plan = build_plan(graph, qcfg)
        names = [
            n
            for n, a in plan.acts.items()
            if not a.dynamic and a.rule.method == "auto" and n not in ctx.ranges
        ]
        if not names:
            return 0, False
        use_data = ctx.calibration is not None and cfg.stats in ("auto", "calibration")
        source = "calibration" if use_data else "synthetic"
        model = model_io.to_model(graph)
        inputs = channel_stats.measure_source(ctx, source, cfg.samples, cfg.seed, cfg.prior)
        ran = any(n not in {t.name for t in graph.inputs} for n in names)
        if not use_data and not ran:
            # graph inputs alone: no model run, and their range is a percentile of the
            # prior itself, so only as many samples as give the values it keeps
            per_sample = max(inputs.values_per_sample(model), 1)
            needed = max(INPUT_RANGE_SAMPLES, -(-observe.MAX_VALUES // per_sample))
            inputs = dataclasses.replace(inputs, samples=min(cfg.samples, needed))
        label = source if use_data else f"synthetic-{cfg.prior}"
        ctx.ranges.update(measured_ranges(model, names, inputs, qcfg.percentile, label))
        return len(names), ran


def _synthetic_count(graph: gs.Graph, ctx: PassContext, cfg: DfqConfig) -> int:
    """The synthetic samples a measurement really runs (fewer than asked on large images)."""
    src = channel_stats.measure_source(ctx, "synthetic", cfg.samples, cfg.seed, cfg.prior)
    return src.count(model_io.inputs_model(graph))


def _statistics_note(sources: Counter[str], samples: int) -> str:
    """Where the statistics came from, in words (BatchNorm alone: no forward pass)."""
    measured = sum(n for src, n in sources.items() if src in MEASURED)
    from_bn = sum(n for src, n in sources.items() if src in FROM_BN)
    if not measured:
        return "from BatchNorm, no forward pass" if from_bn else "analytic, no forward pass"
    data = "the calibration" if "calibration" in sources else f"{samples} synthetic"
    return f"{measured} layers measured in one forward pass on {data} samples, {from_bn} from BN"


def _weight_sqnr(graph: gs.Graph, cfg: DfqConfig) -> dict[str, float]:
    """Per layer: mean over output channels of the weight quantizer's SQNR (dB).

    Per channel, because a per-tensor quantizer destroys the small channels while the
    large ones dominate a whole-tensor SQNR.
    """
    out = {}
    for node in graph_utils.nodes_of(graph, ("Conv", "Gemm")):
        w = graph_utils.const_input(node, 1)
        if w is None:
            continue
        corrector = BiasCorrectConfig(
            cfg.bits, cfg.per_channel, reduce_range=cfg.reduce_range, rounding=cfg.rounding
        )
        spec = corrector.spec(node)
        err = quant.fake_quant(w, spec).astype(np.float64) - w
        rows_w = out_rows(node, w.astype(np.float64))
        rows_e = out_rows(node, err)
        power = np.maximum(np.mean(rows_w**2, axis=1), TINY_POWER)
        noise = np.maximum(np.mean(rows_e**2, axis=1), TINY_POWER)
        out[node.name] = round(float(np.mean(10.0 * np.log10(power / noise))), 2)
    return out
