"""Least-squares reconstruction of the layers that lose input channels.

For a consumer layer y = W x + b whose inputs lose the channels R, with samples of x
(the layer's input in the unpruned model, on the user's calibration data or, data-free,
on the same smooth noise the statistics use), solve over the kept inputs K

    min_{W'_K, b'} || (W x + b) - (W'_K x_K + b') ||^2 + lam || [W'_K, b'] - [W_K, b] ||^2,

so the kept inputs take over what the removed ones carried (He et al., "Channel
Pruning for Accelerating Very Deep Neural Networks", ICCV 2017; Luo et al., "ThiNet",
ICCV 2017). A Conv is fitted on kernel patches sampled at random output positions;
the ridge term (lam relative to the mean diagonal of the Gram matrix) pulls toward the
original weights when the samples are few. Data-free, the fitted bias is replaced by
the one that keeps each output's mean under the pass's statistics (BN means when the
model has them): on glyph MobileNetV2 at 0.5x MACs this refit lifted accuracy from
0.11 to 0.46, on EfficientNet-Lite0 it changed little. Covers Conv (group 1, explicit pads), Gemm
(no transA) and MatMul with a 2-D weight; other consumers keep bias compensation.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_graphsurgeon as gs

from graphcomp.core import graph_utils, model_io
from graphcomp.core.pass_base import PassContext
from graphcomp.measure import inputs, observe
from graphcomp.passes.prune import compensate as prune_comp
from graphcomp.passes.prune.groups import Binding, ChannelGraph
from graphcomp.passes.prune.score import Moments

log = logging.getLogger(__name__)

POSITIONS = 64  # sampled output positions per image for a Conv
SAMPLES = 64  # synthetic images when there is no calibration data
RIDGE = 1e-3  # lam as a share of the mean diagonal of the Gram matrix
BATCH = 8
MAX_INPUTS = 8192  # kept inputs x kernel size above this are left to compensation


def reconstruct(
    cg: ChannelGraph,
    ctx: PassContext,
    keep: dict[str, np.ndarray],
    moments: Moments | None = None,
    prior: str = inputs.DEFAULT_PRIOR,
    seed: int = 0,
    samples: int = SAMPLES,
) -> list[str]:
    """Refit every eligible consumer of a pruned space; returns the names refitted.

    Samples come from the calibration data, else from `prior` noise (as for the
    statistics). The fitted bias is then replaced by the one that keeps the output mean
    under `moments` (BN means where the model has them), when given.
    """
    todo = [b for b in cg.bindings if b.inp is not None and _eligible(b, b.inp, keep)]
    if not todo:
        return []
    model = model_io.to_model(cg.graph)
    src = inputs.Source(ctx.calibration, prior, samples, seed, ctx.input_shapes)
    rng = np.random.default_rng(seed)
    fits = [_Normal(b, keep[_space(b)], rng) for b in todo]
    readers: dict[str, list[_Normal]] = {}
    for fit in fits:
        readers.setdefault(fit.binding.node.inputs[0].name, []).append(fit)
    observe.collect(model, readers, src, BATCH)
    done = []
    for b, fit in zip(todo, fits, strict=True):
        if fit.gram is not None and fit.cross is not None:
            space = _space(b)
            means = moments[space][0] if moments and space in moments else None
            _solve(cg, b, keep[space], fit.gram, fit.cross, means)
            done.append(b.node.name)
    return done


def _space(b: Binding) -> str:
    """The input space of a binding to refit (eligible bindings have one)."""
    if b.inp is None:
        raise ValueError(f"{b.node.name}: binding without an input space")
    return b.inp


def _weight(b: Binding) -> np.ndarray:
    """The constant weight of a bound layer (bindings are built on constant weights)."""
    w = graph_utils.const_input(b.node, 1)
    if w is None:
        raise ValueError(f"{b.node.name}: layer weight is not a constant")
    return w


def _ints(node: gs.Node, key: str, default: list[int]) -> list[int]:
    """An integer-list attribute of `node`."""
    return [int(v) for v in np.asarray(graph_utils.attr(node, key, default)).reshape(-1)]


def _float(node: gs.Node, key: str, default: float) -> float:
    """A float attribute of `node`."""
    return float(np.asarray(graph_utils.attr(node, key, default)))


class _Normal:
    """Running normal equations of one layer's refit: [K+1]^2 and [K+1] x outputs floats.

    K is the number of kept inputs (x kernel size); the memory is the same for any
    number of samples. Patch positions come from the generator shared by every layer.
    """

    def __init__(self, binding: Binding, kept: np.ndarray, rng: np.random.Generator) -> None:
        self.binding, self.kept, self.rng = binding, kept, rng
        self.gram: np.ndarray | None = None
        self.cross: np.ndarray | None = None

    def add(self, value: np.ndarray) -> None:
        """Accumulate one batch of the layer's input."""
        rows, target = _samples(self.binding, value, self.kept, self.rng)
        gram, cross = rows.T @ rows, rows.T @ target
        self.gram = gram if self.gram is None else self.gram + gram
        self.cross = cross if self.cross is None else self.cross + cross


def _eligible(b: Binding, space: str, keep: dict[str, np.ndarray]) -> bool:
    if keep[space].all() or b.kind not in ("conv", "gemm", "matmul") or b.extra.get("depthwise"):
        return False
    node, w = b.node, graph_utils.const_input(b.node, 1)
    if w is None:
        return False
    if b.kind == "conv":
        return (
            w.ndim == 4
            and graph_utils.attr(node, "auto_pad", "NOTSET") in ("NOTSET", b"NOTSET")
            and int(keep[space].sum()) * w[0, 0].size <= MAX_INPUTS
        )
    return not graph_utils.attr(node, "transA", 0) and int(keep[space].sum()) <= MAX_INPUTS


def _weights(b: Binding) -> tuple[np.ndarray, np.ndarray]:
    """(W as [inputs * kernel, outputs], bias [outputs]) in float64."""
    w = _weight(b).astype(np.float64)
    if b.kind == "conv":
        mat = w.reshape(w.shape[0], -1).T
    elif b.kind == "gemm":
        alpha = _float(b.node, "alpha", 1.0)
        mat = alpha * (w.T if graph_utils.attr(b.node, "transB", 0) else w)
    else:
        mat = w
    bias = graph_utils.const_input(b.node, 2) if b.kind != "matmul" else None
    beta = _float(b.node, "beta", 1.0) if b.kind == "gemm" else 1.0
    flat = (
        np.zeros(mat.shape[1])
        if bias is None
        else beta * np.broadcast_to(bias.astype(np.float64).reshape(-1), (mat.shape[1],))
    )
    return mat, flat


def _samples(
    b: Binding, x: np.ndarray, kept: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(rows [samples, kept inputs + 1] with a ones column, original outputs)."""
    mat, bias = _weights(b)
    if b.kind == "conv":
        full = _patches(b, x.astype(np.float64), rng)
        columns = np.repeat(kept, full.shape[1] // kept.size)
    else:
        full = x.astype(np.float64).reshape(-1, x.shape[-1])
        columns = kept
    target = full @ mat + bias
    rows = np.concatenate([full[:, columns], np.ones((full.shape[0], 1))], axis=1)
    return rows, target


def _patches(b: Binding, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Kernel patches [samples, C * kh * kw] at random output positions of Conv `b`."""
    kh, kw = _weight(b).shape[2:]
    sh, sw = _ints(b.node, "strides", [1, 1])
    dh, dw = _ints(b.node, "dilations", [1, 1])
    top, left, bottom, right = _ints(b.node, "pads", [0, 0, 0, 0])
    xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    oh = (xp.shape[2] - dh * (kh - 1) - 1) // sh + 1
    ow = (xp.shape[3] - dw * (kw - 1) - 1) // sw + 1
    count = x.shape[0] * POSITIONS
    image = np.repeat(np.arange(x.shape[0]), POSITIONS)
    rows = rng.integers(0, oh, count)[:, None] * sh + np.arange(kh)[None, :] * dh
    cols = rng.integers(0, ow, count)[:, None] * sw + np.arange(kw)[None, :] * dw
    chans = np.arange(x.shape[1])
    patch = xp[
        image[:, None, None, None],
        chans[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]
    return patch.reshape(count, -1)


def _solve(
    cg: ChannelGraph,
    b: Binding,
    kept: np.ndarray,
    gram: np.ndarray,
    cross: np.ndarray,
    means: np.ndarray | None,
) -> None:
    mat, bias = _weights(b)
    per_input = mat.shape[0] // kept.size
    columns = np.repeat(kept, per_input)
    prior = np.concatenate([mat[columns], bias[None, :]], axis=0)
    lam = RIDGE * float(np.mean(np.diag(gram))) + 1e-12
    fitted = np.linalg.solve(gram + lam * np.eye(gram.shape[0]), cross + lam * prior)
    new = np.zeros_like(mat)
    new[columns] = fitted[:-1]
    offset = fitted[-1]
    if means is not None and means.size == kept.size:
        offset = bias + (mat - new).T @ np.repeat(means, per_input)  # output mean kept
    _store(cg, b, new, offset)


def _store(cg: ChannelGraph, b: Binding, mat: np.ndarray, bias: np.ndarray) -> None:
    """Write W ([inputs * kernel, outputs] layout) and the bias back into layer `b`."""
    node, old = b.node, _weight(b)
    dtype = old.dtype
    if b.kind == "conv":
        weight = mat.T.reshape(old.shape)
    elif b.kind == "gemm":
        alpha = _float(node, "alpha", 1.0)
        weight = (mat.T if graph_utils.attr(node, "transB", 0) else mat) / alpha
        node.attrs["beta"] = 1.0
    else:
        weight = mat
    graph_utils.set_const_input(cg.graph, node, 1, weight.astype(dtype))
    if b.kind != "matmul":
        graph_utils.set_const_input(cg.graph, node, 2, bias.astype(dtype))
    elif not prune_comp.add_to_following(cg.graph, node, bias):
        log.debug("%s: MatMul has no bias input; the fitted offset is dropped", node.name)
