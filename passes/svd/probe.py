"""Measurements for the svd pass: input statistics and whole-model sensitivity.

- Feeds: the user's calibration samples, else data-free synthetic ones: N(0, 1) for
  float inputs; an integer input that indexes a constant embedding table (through
  Cast/Unsqueeze/Reshape) gets uniform ids over the table's rows, any other integer
  input (attention masks) is all ones.
- Input moments E[x x^T] and E[x] per input channel of each layer (whitening and the
  mean-shift bias correction).
- Sensitivity: the model's weights become graph inputs of one onnxruntime session;
  each layer in turn gets its rank-truncated weight while the others stay exact, and
  the relative squared error of the model outputs, sum ||y' - y||^2 / sum ||y||^2
  (averaged over float outputs), is what the whole model loses for that truncation.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx
from onnx import numpy_helper

from graphcomp.core.pass_base import PassContext
from graphcomp.measure import inputs, observe

Feeds = dict[str, np.ndarray]
PASS_THROUGH = ("Cast", "Unsqueeze", "Reshape", "Squeeze", "Flatten", "Identity")
MAX_WALK = 4  # nodes followed from an integer input to its Gather
TINY = 1e-30
IMAGE_MIN = 8  # float 4-D inputs with H, W at least this get image-like noise
SHARED = 0.8  # share of the noise common to all channels of a synthetic image
MAC_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def probe_feeds(
    model: onnx.ModelProto, ctx: PassContext, samples: int, seed: int, batch: int = 16
) -> tuple[list[Feeds], str]:
    """Up to `samples` inputs in batches: calibration data if given, else synthetic."""
    if ctx.calibration is not None:
        feeds = observe.calibration_feeds(model, ctx.calibration, batch)
        return _first(feeds, samples), "calibration"
    feeds = observe.synthetic_feeds(model, samples, seed, ctx.input_shapes, batch)
    tables = _embedding_rows(model)
    rng = np.random.default_rng(seed)
    for batch_feeds in feeds:
        for name, value in batch_feeds.items():
            if (
                value.ndim == 4
                and min(value.shape[2:]) >= IMAGE_MIN
                and np.issubdtype(value.dtype, np.floating)
            ):
                batch_feeds[name] = natural_noise(rng, value.shape).astype(value.dtype)
            elif np.issubdtype(value.dtype, np.integer):
                rows = tables.get(name)
                batch_feeds[name] = (
                    rng.integers(0, rows, value.shape).astype(value.dtype)
                    if rows
                    else np.ones_like(value)
                )
    return feeds, "synthetic"


def natural_noise(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Image-like noise with the 1/f amplitude spectrum of natural images.

    Channels share most of their content; each is standardized to zero mean, unit std.
    """
    n, c, h, w = shape
    white = rng.standard_normal((n, 1, h, w)) * SHARED + rng.standard_normal((n, c, h, w)) * (
        1 - SHARED
    )
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    radius = np.sqrt(fy**2 + fx**2)
    radius[0, 0] = 1.0 / max(h, w)
    x = np.fft.irfft2(np.fft.rfft2(white) / radius, s=(h, w))
    x -= x.mean(axis=(0, 2, 3), keepdims=True)
    return x / np.maximum(x.std(axis=(0, 2, 3), keepdims=True), TINY)


def _first(feeds: list[Feeds], samples: int) -> list[Feeds]:
    out, count = [], 0
    for f in feeds:
        if count >= samples:
            break
        take = min(samples - count, len(next(iter(f.values()))))
        out.append({k: v[:take] for k, v in f.items()})
        count += take
    return out


def _embedding_rows(model: onnx.ModelProto) -> dict[str, int]:
    """Graph input name -> rows of the constant table it indexes by Gather."""
    inits = {i.name: list(i.dims) for i in model.graph.initializer}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    found = {}
    for value in model.graph.input:
        frontier = [value.name]
        for _ in range(MAX_WALK):
            nxt = []
            for name in frontier:
                for node in readers.get(name, []):
                    if (
                        node.op_type == "Gather"
                        and node.input[1] == name
                        and node.input[0] in inits
                    ):
                        found.setdefault(value.name, int(inits[node.input[0]][0]))
                    elif node.op_type in PASS_THROUGH:
                        nxt.append(node.output[0])
            frontier = nxt
    return found


def observed_shapes(model: onnx.ModelProto, ctx: PassContext, seed: int) -> dict[str, list[int]]:
    """Shapes of the inputs and outputs of every MAC-counted node, from one real run.

    Shape inference cannot always see through computed pads or reshapes; one sample
    through onnxruntime always can (dynamic dims as in `probe_feeds`, batch 1).
    """
    feeds, _ = probe_feeds(model, ctx, 1, seed, batch=1)
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
    model: onnx.ModelProto, inputs: dict[str, int], batches: Iterable[Feeds]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(E[x x^T], E[x]) over channel axis `inputs[name]` of each tensor (float64)."""
    sums: dict[str, list] = {}
    batches = list(batches)
    inner = [n for n in inputs if n not in batches[0]] if batches else []
    streamed = observe.stream(model, inner, batches) if inner else ({} for _ in batches)
    for feeds, values in zip(batches, streamed, strict=True):
        values = {**values, **{n: feeds[n] for n in inputs if n in feeds}}
        for name, value in values.items():
            x = np.moveaxis(np.asarray(value, dtype=np.float64), inputs[name], -1)
            x = x.reshape(-1, x.shape[-1])
            acc = sums.setdefault(name, [0.0, 0.0, 0])
            acc[0] = acc[0] + x.T @ x
            acc[1] = acc[1] + x.sum(axis=0)
            acc[2] += x.shape[0]
    return {name: (a[0] / max(a[2], 1), a[1] / max(a[2], 1)) for name, a in sums.items()}


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
    sess = inputs.session(probe_model(model, base, shifts))
    outputs = [o.name for o in sess.get_outputs()]
    refs = [sess.run(outputs, {**f, **base}) for f in feeds]
    errors = []
    for trial in trials:
        num, den = np.zeros(len(outputs)), np.zeros(len(outputs))
        for f, ref in zip(feeds, refs, strict=True):
            got = sess.run(outputs, {**f, **base, **trial})
            for k, (a, b) in enumerate(zip(ref, got, strict=True)):
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
