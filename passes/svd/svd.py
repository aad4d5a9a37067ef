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
By default (`whiten="always"`) the SVD is activation-aware: M is whitened by the square
root of the input covariance (SVD-LLM, Wang et al. 2024; ASVD, Yuan et al. 2023) of the
calibration samples, else of synthetic ones, minimizing the layer's expected output
error, and the mean output change of the split goes into its bias. The covariance is
shrunk toward its diagonal first (`shrink`): a few hundred samples against 384-1,536
channels, or synthetic inputs, give channel scales worth keeping but noisy correlations
(`whiten="auto"`: whitening only with calibration data; `"never"`: plain SVD).
`energy` still picks ranks from the weights' spectrum (so a given energy means the same
MACs with or without data, and data buys a better fit), unless `energy_of="outputs"`
counts the whitened, output-weighted one.

Will not touch (skipped with the reason): depthwise/grouped convs, weights shared by
several nodes, non-constant or non-2-D MatMul operands, weights under `min_params`,
layers where no rank saves `min_saving` of the MACs, and overrides saying `skip`.
"""

from __future__ import annotations

import logging

import onnx_graphsurgeon as gs

from graphcomp.core.pass_base import Pass, PassContext, PassResult
from graphcomp.passes.svd import plan as svd_plan
from graphcomp.passes.svd import split as svd_split
from graphcomp.passes.svd.config import SvdConfig
from graphcomp.passes.svd.rank import Candidate, Choice
from graphcomp.passes.svd.sense import mean_shift

log = logging.getLogger(__name__)


class SvdPass(Pass):
    """Low-rank split of Gemm/MatMul/Conv layers."""

    name = "svd"
    summary = "split big Gemm/MatMul/Conv layers into two low-rank ones (energy or MAC budget)"
    matches = frozenset({"Gemm", "MatMul", "Conv"})
    creates = frozenset({"Gemm", "MatMul", "Conv", "Add"})  # Add: mean shift with no bias
    lossless = False
    config_class = SvdConfig
    invalidates = frozenset({"stats", "ranges"})  # layers are split and refitted

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
            detail = _detail(cand, choice, choice.mode) + (
                ", mean shift in bias" if shift is not None else ""
            )
            before = cand.layer.params
            svd_split.split(graph, cand.layer, choice.mode, p, q, shift)
            result.change(node, detail, before, choice.params)
        result.notes.update(plan.notes, svd_methods=methods)
        return result


def _detail(cand: Candidate, choice: Choice, mode: str) -> str:
    """The change detail of a split in `mode` (choice.mode, known not None here)."""
    form, fact = cand.layer.forms[mode], cand.facts[mode]
    spectrum = cand.spectra.get(mode, fact)
    kept = 1.0 - spectrum.tail(choice.rank) / spectrum.total if spectrum.total > 0 else 1.0
    white = (
        ""
        if fact.white is None
        else (", output-weighted" if spectrum is fact else " of the weights, whitened fit")
    )
    return (
        f"{mode} split at rank {choice.rank}/{form.max_rank} (energy kept "
        f"{kept:.4f}{white}), MACs {_short(cand.layer.dense_macs)} -> "
        f"{_short(choice.macs)}, svd {fact.method}"
    )


def _dense_reason(cand: Candidate, choice: Choice) -> str:
    if cand.notes:
        return "; ".join(cand.notes)
    return "no rank within the target saves enough MACs; kept dense"


def _short(value: float) -> str:
    if value >= 1e6:
        return f"{value / 1e6:.2f}M"
    return f"{value / 1e3:.1f}k" if value >= 1e3 else f"{value:.0f}"
