"""svd: split big Gemm/MatMul and Conv layers into two thinner ones (DESIGN.md 4).

A layer matrix M (input side x output side; see svd_layers) is factored M ~ P Q with
P = U_r sqrt(S_r), Q = sqrt(S_r) V_r^T (Eckart-Young; Denton et al. 2014, Zhang et
al. 2015 for the channel split of convs, Jaderberg et al. 2014 / Tai et al. 2016 for
the spatial k x 1 then 1 x k split). The bias goes on the second factor.

Rank: `energy` (share of squared singular values kept per layer), `rank_ratio`, or a
whole-model target `macs` / `params` (fraction of the model's total) met by spending
rank where the model loses least per MAC saved (svd_rank). What a layer's truncation
costs the model is measured, not assumed: `allocate="sensitivity"` runs the model
(on the user's calibration samples, else synthetic inputs) once per layer with only
that layer truncated; `allocate="energy"` uses each layer's relative lost energy.
With `--calibration-data` (or `whiten="always"`) the SVD is activation-aware: M is
whitened by the square root of the input covariance (SVD-LLM, Wang et al. 2024; ASVD,
Yuan et al. 2023), minimizing the layer's expected output error, and the mean output
change of the split goes into its bias. `energy` still picks ranks from the weights'
spectrum (so a given energy means the same MACs with or without data, and data buys a
better fit), unless `energy_of="outputs"` counts the whitened, output-weighted one.

Will not touch (skipped with the reason): depthwise/grouped convs, weights shared by
several nodes, non-constant or non-2-D MatMul operands, weights under `min_params`,
layers where no rank saves `min_saving` of the MACs, and overrides saying `skip`.
"""
from __future__ import annotations

import dataclasses
import logging

import onnx_graphsurgeon as gs

from graphcomp.errors import ConfigError
from graphcomp.pass_base import Pass, PassContext, PassResult
from passes import svd_plan, svd_split
from passes.svd_plan import parse_override
from passes.svd_rank import Candidate, Choice
from passes.svd_sense import mean_shift

log = logging.getLogger(__name__)
TARGETS = ("energy", "rank_ratio", "macs", "params")
DEFAULT_ENERGY = 0.99


@dataclasses.dataclass(frozen=True)
class SvdConfig:
    """Options of the svd pass; give at most one of energy/rank_ratio/macs/params."""

    energy: float | None = None  # per layer: share of squared singular values kept
    rank_ratio: float | None = None  # per layer: rank = ratio x full rank
    macs: float | None = None  # whole model: MACs become this fraction of the original
    params: float | None = None  # whole model: parameters become this fraction
    mode: str = "auto"  # convs: channel | spatial | auto (the one with fewer MACs)
    round_to: int = 16  # ranks are multiples of this (MLAS NCHWc conv blocks are 16 wide)
    min_saving: float = 0.2  # split only when it saves this share of the layer's MACs
    min_params: int = 1024  # leave smaller weights alone
    allocate: str = "sensitivity"  # budget loss proxy: sensitivity | energy
    whiten: str = "auto"  # auto (with calibration data) | always | never
    correct_mean: bool = True  # with statistics: add the mean output shift to the bias
    energy_of: str = "weights"  # with statistics, energy counts: weights | outputs (whitened)
    samples: int = 64  # inputs used for statistics (calibration or synthetic)
    probe_samples: int = 16  # inputs per sensitivity run
    overrides: tuple[str, ...] = ()  # "glob:skip", "glob:rank=32", "glob:energy=0.9", ...
    seed: int = 0

    def __post_init__(self) -> None:
        given = [k for k in TARGETS if getattr(self, k) is not None]
        if len(given) > 1:
            raise ConfigError(f"svd takes one of {', '.join(TARGETS)}; got {', '.join(given)}")
        for key in TARGETS:
            value = getattr(self, key)
            if value is not None and not 0.0 < value <= 1.0:
                raise ConfigError(f"svd {key} must be in (0, 1], got {value}")
        _check_choice("mode", self.mode, ("auto", "channel", "spatial"))
        _check_choice("allocate", self.allocate, ("sensitivity", "energy"))
        _check_choice("whiten", self.whiten, ("auto", "always", "never"))
        _check_choice("energy_of", self.energy_of, ("weights", "outputs"))
        if self.round_to < 1 or self.samples < 1 or self.probe_samples < 1:
            raise ConfigError("svd round_to, samples and probe_samples must be >= 1")
        if not 0.0 <= self.min_saving < 1.0:
            raise ConfigError(f"svd min_saving must be in [0, 1), got {self.min_saving}")
        for item in self.overrides:
            parse_override(item)

    @property
    def target(self) -> tuple[str, float]:
        """(kind, value) of the rank rule in force."""
        for key in TARGETS:
            if getattr(self, key) is not None:
                return key, float(getattr(self, key))
        return "energy", DEFAULT_ENERGY


def _check_choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"svd {key} must be one of {', '.join(allowed)}, got {value!r}")


class SvdPass(Pass):
    """Low-rank split of Gemm/MatMul/Conv layers."""

    name = "svd"
    summary = "split big Gemm/MatMul/Conv layers into two low-rank ones (energy or MAC budget)"
    matches = frozenset({"Gemm", "MatMul", "Conv"})
    creates = frozenset({"Gemm", "MatMul", "Conv", "Add"})  # Add: mean shift with no bias
    lossless = False
    config_class = SvdConfig

    def apply(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        """Plan every split (see svd_plan), then rewrite the chosen layers."""
        result = PassResult(self.name)
        plan = svd_plan.make_plan(graph, ctx, self.config)
        for node, reason in plan.skips:
            result.skip(node, reason)
        methods: dict[str, int] = {}
        for cand, choice in zip(plan.candidates, plan.choices, strict=True):
            node = cand.layer.node
            if choice.mode is None:
                result.skip(node, _dense_reason(cand, choice))
                continue
            fact = cand.facts[choice.mode]
            method = fact.method.split("(")[0]
            methods[method] = methods.get(method, 0) + 1
            p, q = fact.factors(choice.rank)
            shift = mean_shift(cand, choice.mode, p, q)
            detail = _detail(cand, choice) + (", mean shift in bias" if shift is not None else "")
            before = cand.layer.params
            svd_split.split(graph, cand.layer, choice.mode, p, q, shift)
            result.change(node, detail, before, choice.params)
        result.notes.update(plan.notes, svd_methods=methods)
        return result


def _detail(cand: Candidate, choice: Choice) -> str:
    form, fact = cand.layer.forms[choice.mode], cand.facts[choice.mode]
    spectrum = cand.spectra.get(choice.mode, fact)
    kept = 1.0 - spectrum.tail(choice.rank) / spectrum.total if spectrum.total > 0 else 1.0
    white = "" if fact.white is None else (
        ", output-weighted" if spectrum is fact else " of the weights, whitened fit")
    return (f"{choice.mode} split at rank {choice.rank}/{form.max_rank} (energy kept "
            f"{kept:.4f}{white}), MACs {_short(cand.layer.dense_macs)} -> "
            f"{_short(choice.macs)}, svd {fact.method}")


def _dense_reason(cand: Candidate, choice: Choice) -> str:
    if cand.notes:
        return "; ".join(cand.notes)
    return "no rank within the target saves enough MACs; kept dense"


def _short(value: float) -> str:
    if value >= 1e6:
        return f"{value / 1e6:.2f}M"
    return f"{value / 1e3:.1f}k" if value >= 1e3 else f"{value:.0f}"
