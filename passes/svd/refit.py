"""Sequential refit of the chosen MatMul/Gemm splits on the compressed model's own inputs.

Fitting every layer to the original model's input statistics (svd_factor) ignores that
once the layers before it are split, a layer sees different inputs x' instead of x, so
the errors compound. Here the layers are refitted in graph order (GPTQ, Frantar et al.
2022; SVD-LLM v2, Wang et al. 2025): with the earlier splits in place, the layer's new
factors W' = P Q minimize E||(x' - mu') W' - (x - mu) W||^2, whose minimizer over all
matrices is W* = C'^-1 X W (C' = cov(x'), X = E[(x' - mu')(x - mu)^T]); the excess error
of any W' is ||C'^1/2 (W' - W*)||_F^2 (C' damped: the ridge pulls W* toward W), so the rank-r answer is the truncated SVD of
W* whitened by C' (svd_factor.factorize), at the rank already chosen. The bias takes the
mean change mu W - mu' W' (times alpha for Gemm), so the layer's output mean is kept.
Layers sharing an input (attention Q, K, V) are refitted together from one measurement;
each measurement runs the original and the partly split model on the same samples.
Convs and layers whose weight is not an initializer keep their first fit (but the
layers after them see it).
"""

from __future__ import annotations

import numpy as np
import onnx

from graphcomp.core import graph_utils
from graphcomp.measure import inputs, observe
from graphcomp.passes.svd import probe as svd_probe
from graphcomp.passes.svd.factor import factorize, whitener
from graphcomp.passes.svd.layers import matrix_to_weight
from graphcomp.passes.svd.rank import Candidate, Choice
from graphcomp.passes.svd.sense import mean_shift, shift_shape, weight_name

REFIT_KINDS = ("matmul", "matmul_left", "gemm")


class _Cross:
    """Running sums of x' and x (n x C each): n, sum x', sum x, sum x'x'^T, sum x'x^T."""

    def __init__(self) -> None:
        self.n = 0
        self.sp: np.ndarray | float = 0.0
        self.so: np.ndarray | float = 0.0
        self.pp: np.ndarray | float = 0.0
        self.po: np.ndarray | float = 0.0

    def add(self, new: np.ndarray, old: np.ndarray) -> None:
        self.n += new.shape[0]
        self.sp = self.sp + new.sum(axis=0)
        self.so = self.so + old.sum(axis=0)
        self.pp = self.pp + new.T @ new
        self.po = self.po + new.T @ old

    def moments(self, centred: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(C', X, mu', mu): covariances (second moments when not `centred`) and means."""
        n = max(self.n, 1)
        mu_new, mu_old = np.asarray(self.sp) / n, np.asarray(self.so) / n
        cov, cross = np.asarray(self.pp) / n, np.asarray(self.po) / n
        if centred:
            cov = cov - np.outer(mu_new, mu_new)
            cross = cross - np.outer(mu_new, mu_old)
        return cov, cross, mu_new, mu_old


def refit(
    cands: list[Candidate],
    choices: list[Choice],
    model: onnx.ModelProto,
    src: inputs.Source,
    centred: bool,
    shrink: float,
) -> str:
    """Refit the chosen splits in graph order; sets `Candidate.fitted`; returns a note."""
    chosen = [i for i, c in enumerate(choices) if c.mode is not None]
    base = svd_probe.initializer_values(model, [weight_name(cands[i]) for i in chosen])
    shifts: dict[str, str] = {}
    for i in chosen:
        if centred:
            output = cands[i].layer.node.outputs[0].name
            shifts[output] = f"{output}__svd_shift_in"
            base[shifts[output]] = np.zeros(shift_shape(cands[i]), cands[i].layer.weight.dtype)
    groups: dict[str, list[int]] = {}
    for i in chosen:
        if weight_name(cands[i]) in base:
            groups.setdefault(cands[i].layer.input_name, []).append(i)
    feeds = list(src.batches(model, svd_probe.BATCH))
    run = observe.Runner(svd_probe.probe_model(model, base, shifts), list(groups))
    current: dict[str, np.ndarray] = {}
    refitted = 0
    for name, members in groups.items():
        todo = [i for i in members if cands[i].layer.kind in REFIT_KINDS]
        if todo:
            axis = _axis(cands[todo[0]])
            acc = _Cross()
            for f in feeds:
                old = run({**f, **base}, [name])[name]
                new = run({**f, **base, **current}, [name])[name]
                acc.add(_rows(new, axis), _rows(old, axis))
            cov, cross, mu_new, mu_old = acc.moments(centred)
            for i in todo:
                cands[i].fitted = _fit(cands[i], choices[i], cov, cross, mu_new, mu_old, shrink)
                refitted += 1
        for i in members:
            _apply(cands[i], choices[i], current, shifts)
    return f"{refitted} splits refitted in order on {src.label} inputs ({src.count(model)} samples)"


def _axis(cand: Candidate) -> int:
    layer = cand.layer
    if layer.kind == "matmul_left":
        return -2
    if layer.kind == "gemm" and graph_utils.attr(layer.node, "transA", 0):
        return 0
    return -1


def _rows(value: np.ndarray, axis: int) -> np.ndarray:
    x = np.moveaxis(np.asarray(value, dtype=np.float64), axis, -1)
    return x.reshape(-1, x.shape[-1])


def _fit(
    cand: Candidate,
    choice: Choice,
    cov: np.ndarray,
    cross: np.ndarray,
    mu_new: np.ndarray,
    mu_old: np.ndarray,
    shrink: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(P, Q, shift) of the layer fitted to its compressed-model input."""
    mode = choice.mode or "linear"
    matrix = cand.layer.forms[mode].matrix
    white = whitener(cov, shrink=shrink)
    # W* = C'^-1 X W written as W + C'^-1 (X - C') W: the damping of C' then pulls the
    # correction toward the original weight, and equal inputs give W itself
    target = matrix + white.solve((cross - cov) @ matrix)
    fact = factorize(target, white, rank_cap=choice.rank, seed=0)
    p, q = fact.factors(choice.rank)
    if cand.mean is None:
        return p, q, None
    shift = mu_old @ matrix - mu_new @ (p @ q)
    if cand.layer.kind == "gemm":
        shift = shift * float(np.asarray(graph_utils.attr(cand.layer.node, "alpha", 1.0)))
    return p, q, shift


def _apply(
    cand: Candidate, choice: Choice, current: dict[str, np.ndarray], shifts: dict[str, str]
) -> None:
    """Put the layer's split (refitted or first fit) into the inputs of later runs."""
    mode = choice.mode or "linear"
    if cand.fitted is not None:
        p, q, shift = cand.fitted
    else:
        p, q = cand.facts[mode].factors(choice.rank)
        shift = mean_shift(cand, mode, p, q)
    current[weight_name(cand)] = matrix_to_weight(cand.layer, mode, p @ q)
    output = cand.layer.node.outputs[0].name
    if output in shifts:
        value = np.zeros(shift_shape(cand)) if shift is None else shift.reshape(shift_shape(cand))
        current[shifts[output]] = value.astype(cand.layer.weight.dtype)
