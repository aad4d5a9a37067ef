"""Run the float model in onnxruntime and read intermediate tensors.

The one shared mechanism for every step that measures activations: calibration
ranges (qdq), empirical statistics (dfq, prune compensation), activation-aware
factorization (svd). Feeds come from the user's `--calibration-data` or from seeded
synthetic inputs (N(0, 1) floats), in batches.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import onnx

from graphcomp.core.errors import ConfigError
from graphcomp.measure import inputs

Feeds = dict[str, np.ndarray]


def with_outputs(model: onnx.ModelProto, names: Iterable[str]) -> onnx.ModelProto:
    """A copy of `model` that also outputs the tensors `names` (type left to ORT)."""
    extra = onnx.ModelProto()
    extra.CopyFrom(model)
    have = {o.name for o in extra.graph.output}
    for name in names:
        if name not in have:
            extra.graph.output.append(onnx.ValueInfoProto(name=name))
            have.add(name)
    return extra


def intermediates(model: onnx.ModelProto, names: list[str], feeds: Feeds) -> dict[str, np.ndarray]:
    """Values of the tensors `names` for one batch of `feeds`."""
    sess = inputs.session(with_outputs(model, names))
    return dict(zip(names, sess.run(names, feeds), strict=True))


def stream(
    model: onnx.ModelProto, names: list[str], batches: Iterable[Feeds]
) -> Iterator[dict[str, np.ndarray]]:
    """Values of `names` batch by batch (one session for all batches)."""
    sess = inputs.session(with_outputs(model, names))
    for feeds in batches:
        yield dict(zip(names, sess.run(names, feeds), strict=True))


def input_specs(model: onnx.ModelProto) -> list[tuple[str, str, list[int | str]]]:
    """(name, ORT type, dims) of each real graph input (initializers excluded)."""
    sess = inputs.session(model)
    return [(a.name, a.type, list(a.shape)) for a in sess.get_inputs()]


def synthetic_feeds(
    model: onnx.ModelProto,
    n: int = 64,
    seed: int = 0,
    input_shapes: dict[str, list[int]] | None = None,
    batch: int = 32,
) -> list[Feeds]:
    """Seeded N(0, 1) inputs, `n` samples in batches of `batch` (dynamic dims as verify)."""
    sess = inputs.session(model)
    out, done = [], 0
    while done < n:
        size = min(batch, n - done)
        shapes = dict(input_shapes or {})
        feeds = inputs.make_inputs(
            sess, {k: [size, *v[1:]] for k, v in shapes.items()}, seed=seed + done, batch=size
        )
        out.append(feeds)
        done += size
    return out


def calibration_feeds(
    model: onnx.ModelProto, data: dict[str, np.ndarray], batch: int = 32
) -> list[Feeds]:
    """Split the user's samples (input name -> array, samples on axis 0) into batches."""
    names = [name for name, _, _ in input_specs(model)]
    missing = [n for n in names if n not in data]
    if missing:
        raise ConfigError(
            f"calibration data has no array for input(s) {missing}; it has {sorted(data)}"
        )
    count = min(len(data[n]) for n in names)
    if count == 0:
        raise ConfigError("calibration data is empty")
    return [
        {n: np.ascontiguousarray(data[n][i : i + batch]) for n in names}
        for i in range(0, count, batch)
    ]


def feeds_for(
    model: onnx.ModelProto,
    calibration: dict[str, np.ndarray] | None,
    n: int = 64,
    seed: int = 0,
    input_shapes: dict[str, list[int]] | None = None,
) -> tuple[list[Feeds], str]:
    """Calibration batches when given, else synthetic ones; with the source's name."""
    if calibration is not None:
        return calibration_feeds(model, calibration), "calibration"
    return synthetic_feeds(model, n, seed, input_shapes), "synthetic"


def channel_moments(
    model: onnx.ModelProto, names: list[str], batches: Iterable[Feeds], axis: int = 1
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-channel mean and std (over every axis but `axis`) of each tensor in `names`."""
    sums: dict[str, list[np.ndarray]] = {}
    for values in stream(model, names, batches):
        for name, v in values.items():
            x = np.moveaxis(np.asarray(v, dtype=np.float64), axis if v.ndim > 1 else 0, 0)
            x = x.reshape(x.shape[0], -1)
            acc = sums.setdefault(name, [np.zeros(x.shape[0]), np.zeros(x.shape[0]), np.zeros(1)])
            acc[0] += x.sum(axis=1)
            acc[1] += (x * x).sum(axis=1)
            acc[2] += x.shape[1]
    out = {}
    for name, (s1, s2, count) in sums.items():
        mean = s1 / count
        out[name] = (mean, np.sqrt(np.maximum(s2 / count - mean**2, 0.0)))
    return out


def smooth_feeds(
    model: onnx.ModelProto,
    n: int = 64,
    seed: int = 0,
    input_shapes: dict[str, list[int]] | None = None,
    batch: int = 32,
    exponent: float = 1.5,
    channel_corr: float = 0.9,
) -> list[Feeds]:
    """Seeded natural-image-like inputs: 1/f^exponent noise on the last two axes.

    Float inputs of rank >= 3 get, per sample and channel, random-phase noise whose
    amplitude spectrum falls as 1/f^exponent, scaled to zero mean and unit std over
    the batch, so spatial correlations resemble photos while the marginal stays
    N(0, 1)-like; with several channels (rank 4), each channel mixes a shared field
    (weight channel_corr) with its own (RGB channels of photos correlate strongly).
    Other inputs are as `synthetic_feeds`. The defaults (1.5, 0.9) gave the closest
    per-layer statistics to real images on the zoo and on an ImageNet CNN
    (scripts/dfq_study.py).
    """
    out = synthetic_feeds(model, n, seed, input_shapes, batch)
    rng = np.random.default_rng(seed + 7919)
    for feeds in out:
        for name, value in feeds.items():
            if value.ndim >= 3 and np.issubdtype(value.dtype, np.floating):
                feeds[name] = _field(rng, value.shape, exponent, channel_corr).astype(value.dtype)
    return out


def _field(
    rng: np.random.Generator, shape: tuple[int, ...], exponent: float, channel_corr: float
) -> np.ndarray:
    own = _pink(rng, shape, exponent)
    if len(shape) != 4 or shape[1] < 2 or channel_corr <= 0.0:
        return own
    shared = _pink(rng, (shape[0], 1, *shape[2:]), exponent)
    return np.sqrt(channel_corr) * shared + np.sqrt(1.0 - channel_corr) * own


def _pink(rng: np.random.Generator, shape: tuple[int, ...], exponent: float) -> np.ndarray:
    h, w = shape[-2], shape[-1]
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    radius = np.sqrt(fy * fy + fx * fx)
    amplitude = 1.0 / np.maximum(radius, 1.0 / max(h, w)) ** exponent
    phase = rng.uniform(0.0, 2.0 * np.pi, (*shape[:-2], h, fx.shape[1]))
    noise = np.fft.irfft2(amplitude * np.exp(1j * phase), s=(h, w))
    return (noise - noise.mean()) / max(float(noise.std()), 1e-12)
