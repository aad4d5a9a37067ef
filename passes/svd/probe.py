"""Measurements for the svd pass: input statistics and whole-model sensitivity.

- Feeds: the user's calibration samples, else data-free synthetic ones of the
  config's prior (graphcomp.measure.inputs.Source: "smooth" image-like floats by
  default; integer inputs get token ids over their embedding table, masks all ones).
- Input moments E[x x^T] and E[x] per input channel of each layer (whitening and the
  mean-shift bias correction).
- Sensitivity: the model's weights become graph inputs of one onnxruntime session;
  each layer in turn gets its rank-truncated weight while the others stay exact, and
  the relative squared error of the model outputs, sum ||y' - y||^2 / sum ||y||^2
  (averaged over float outputs), is what the whole model loses for that truncation.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import onnx
from onnx import numpy_helper

from graphcomp.core.errors import GraphcompError
from graphcomp.core.pass_base import PassContext
from graphcomp.measure import inputs, observe

Feeds = dict[str, np.ndarray]
T = TypeVar("T")
log = logging.getLogger(__name__)
TINY = 1e-30
BATCH = 16  # samples per onnxruntime run for the statistics
MAC_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def source(
    ctx: PassContext, samples: int, seed: int, prior: str = inputs.DEFAULT_PRIOR
) -> inputs.Source:
    """Up to `samples` inputs: the user's calibration samples, else synthetic `prior` ones.

    Synthetic samples of a user-fixed batch are joined for the runs (`joined_or_not`
    retries without).
    """
    return inputs.Source(
        ctx.calibration, prior, samples, seed, ctx.input_shapes, limit=samples, join=True
    )


def joined_or_not(run: Callable[[inputs.Source], T], src: inputs.Source) -> T:
    """run(src), and again unjoined when joined batches fail.

    A model can declare a free batch dim and still run only at the user's batch.
    """
    try:
        return run(src)
    except GraphcompError:
        if not src.join:
            raise
        log.info("svd: joined synthetic batches failed; one user batch per run")
        return run(dataclasses.replace(src, join=False))


def observed_shapes(
    model: onnx.ModelProto, ctx: PassContext, seed: int, prior: str = inputs.DEFAULT_PRIOR
) -> dict[str, list[int]]:
    """Shapes of the inputs and outputs of every MAC-counted node, from one real run.

    Shape inference cannot always see through computed pads or reshapes; one sample
    through onnxruntime always can (dynamic dims as in `source`, batch 1).
    """
    feeds = [next(source(ctx, 1, seed, prior).batches(model, 1))]
    inits = {i.name for i in model.graph.initializer}
    names = {
        name
        for node in model.graph.node
        if node.op_type in MAC_OPS
        for name in [*node.input[:2], *node.output[:1]]
        if name and name not in inits
    }
    shapes = {name: list(value.shape) for name, value in feeds[0].items()}
    wanted = sorted(names - set(shapes))
    values = observe.intermediates(model, wanted, feeds[0]) if wanted else {}
    shapes.update({name: list(np.shape(value)) for name, value in values.items()})
    return shapes


def moments(
    model: onnx.ModelProto, axes: dict[str, int], src: inputs.Source, batch: int = BATCH
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(E[x x^T], E[x]) over channel axis `axes[name]` of each tensor (float64), one run."""

    def run(feed: inputs.Source) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        reducers = {name: observe.Covariance(axis) for name, axis in axes.items()}
        observe.collect(model, reducers, feed, batch)
        return {n: got for n, r in reducers.items() if (got := r.result()) is not None}

    return joined_or_not(run, src)


def probe_model(
    model: onnx.ModelProto, base: dict[str, np.ndarray], shifts: dict[str, str]
) -> onnx.ModelProto:
    """A copy of `model` for probe runs: the initializers in `base` become inputs.

    Each tensor t in `shifts` gets `+ shifts[t]`, a new input (fed zero by default), so
    a trial can move a layer's output as a bias change would.
    """
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    have_inputs = {v.name for v in probe.graph.input}
    keep = [i for i in probe.graph.initializer if i.name not in base]
    for init in probe.graph.initializer:
        if init.name in base and init.name not in have_inputs:
            probe.graph.input.append(
                onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims))
            )
    del probe.graph.initializer[:]
    probe.graph.initializer.extend(keep)
    for tensor, shift in shifts.items():
        value = base[shift]
        elem = onnx.helper.np_dtype_to_tensor_dtype(value.dtype)
        probe.graph.input.append(onnx.helper.make_tensor_value_info(shift, elem, value.shape))
        raw = f"{tensor}__svd_raw"
        for node in probe.graph.node:
            node.output[:] = [raw if o == tensor else o for o in node.output]
        probe.graph.node.append(
            onnx.helper.make_node("Add", [raw, shift], [tensor], name=f"{tensor}__svd_shift")
        )
    return probe


def output_errors(
    model: onnx.ModelProto,
    base: dict[str, np.ndarray],
    shifts: dict[str, str],
    trials: list[dict[str, np.ndarray]],
    feeds: list[Feeds],
) -> list[float]:
    """Relative squared output error of each trial (inputs to replace in `base`).

    `base` holds the original weights and a zero for each shift input (see probe_model).
    """
    run = observe.Runner(probe_model(model, base, shifts))
    outputs = run.outputs
    refs = [run({**f, **base}, outputs) for f in feeds]
    errors = []
    for trial in trials:
        num, den = np.zeros(len(outputs)), np.zeros(len(outputs))
        for f, ref in zip(feeds, refs, strict=True):
            got = run({**f, **base, **trial}, outputs)
            for k, (a, b) in enumerate(zip(ref.values(), got.values(), strict=True)):
                if np.issubdtype(np.asarray(a).dtype, np.floating):
                    num[k] += float(np.sum((np.asarray(b, np.float64) - a) ** 2))
                    den[k] += float(np.sum(np.asarray(a, np.float64) ** 2))
        used = den > 0
        errors.append(
            float(np.mean(num[used] / np.maximum(den[used], TINY))) if used.any() else 0.0
        )
    return errors


def initializer_values(model: onnx.ModelProto, names: list[str]) -> dict[str, np.ndarray]:
    """Values of the initializers `names` (those that are initializers)."""
    wanted = set(names)
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer if i.name in wanted}
