"""Run the float model in onnxruntime and reduce the tensors a step asks for.

The one collection mechanism for every step that measures activations: calibration
ranges (qdq, dfq), per-channel statistics (graphcomp.measure.stats, dfq input means,
prune compensation), least-squares refits (prune reconstruct), input covariances and
sensitivity runs (svd). Inputs come from a `graphcomp.measure.inputs.Source`.

`collect(model, reducers, source, batch)` builds one onnxruntime session for the model
and the set of tensor names, runs it batch by batch and hands each batch's value of a
tensor to its reducer, which keeps only running sums: memory does not grow with the
number of samples. Reducers here:
- `Moments(axis)`: per-channel mean and std (3 float64 arrays of C values);
- `Covariance(axis)`: E[x x^T] and E[x] per channel (C x C + C float64);
- `Values(seed)`: exact min/max, max |x| per index of the last axis, and a seeded
  subsample of at most `max_values` values for percentile / mse ranges.
A step with its own reduction (prune's Gram matrices) passes any object with
`add(value)`. Tensors that are graph inputs are read from the feeds, not the session.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

import numpy as np
import onnx
import onnxruntime as ort

from graphcomp.core import progress
from graphcomp.core.errors import UnsupportedModelError
from graphcomp.measure import inputs

Feeds = inputs.Feeds
BATCH_BYTES = 256 << 20  # inputs and observed tensors of one onnxruntime run, at most
MAX_VALUES = 1 << 17  # values kept per tensor by `Values` (0.5 MB) for percentile / mse
PER_BATCH = 1 << 16  # values drawn per tensor from each batch by `Values`


class Reducer(Protocol):
    """Takes one batch's value of a tensor at a time."""

    def add(self, value: np.ndarray) -> None: ...  # noqa: D102


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


class Runner:
    """One onnxruntime session of `model` that returns the tensors `names` (and outputs).

    The session is built at the first batch that needs it: tensors that are graph
    inputs come from the feeds, so measuring only those runs no model at all.
    """

    def __init__(self, model: onnx.ModelProto, names: Iterable[str] = ()) -> None:
        graph_inputs = {a.name for a in inputs.input_args(model)}
        self.model = model
        self.names = [n for n in dict.fromkeys(names) if n not in graph_inputs]
        self._session: ort.InferenceSession | None = None
        if self.names:
            self._load()

    def _load(self) -> ort.InferenceSession:
        if self._session is None:
            extra = with_outputs(self.model, self.names) if self.names else self.model
            try:
                # many outputs: no planned arena (a DBNet page: 1.98 -> 1.09 GB peak)
                self._session = inputs.session(extra, mem_pattern=not self.names)
            except inputs.ORT_ERRORS as e:
                first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
                raise UnsupportedModelError(f"onnxruntime cannot load the model ({first})") from e
        return self._session

    @property
    def outputs(self) -> list[str]:
        """Names of the session's outputs (the graph outputs and the tensors asked for)."""
        return [o.name for o in self._load().get_outputs()]

    def __call__(self, feeds: Feeds, names: list[str] | None = None) -> dict[str, np.ndarray]:
        """Values of `names` (default: the names asked for) on one batch of `feeds`."""
        wanted = self.names if names is None else names
        inner = [n for n in wanted if n not in feeds]
        try:
            got = dict(zip(inner, self._load().run(inner, feeds), strict=True)) if inner else {}
        except inputs.ORT_ERRORS as e:
            raise inputs.run_error(e, feeds, "the model") from e
        return {n: feeds[n] if n in feeds else got[n] for n in wanted}


def collect(
    model: onnx.ModelProto,
    reducers: Mapping[str, Reducer] | Mapping[str, Sequence[Reducer]],
    source: inputs.Source | Sequence[Feeds],
    batch: int = inputs.BLOCK,
) -> None:
    """Run `model` on `source` (or on batches already made) in batches of `batch`.

    Each batch's value of a tensor goes to its reducer(s).
    """
    if not reducers:
        return
    names = list(reducers)
    runner = Runner(model, names)
    if isinstance(source, inputs.Source):
        batch = _fitting_batch(runner, names, source, model, batch)
        batches, total = source.batches(model, batch), source.count(model)
    else:
        batches, total = iter(source), sum(inputs.samples_in(feeds) for feeds in source)
    done = 0
    for feeds in batches:
        values = runner(feeds, names)
        for name in names:
            todo = reducers[name]
            for reducer in [todo] if hasattr(todo, "add") else todo:
                reducer.add(values[name])
        done += inputs.samples_in(feeds)
        progress.tick("samples", done, total)


def _fitting_batch(
    runner: Runner, names: list[str], source: inputs.Source, model: onnx.ModelProto, batch: int
) -> int:
    """`batch`, or fewer samples when one batch's inputs and tensors would pass BATCH_BYTES.

    One sample is run first to weigh what a sample costs (the tensors asked for are most
    of what onnxruntime keeps alive); small models keep the requested batch.
    """
    first = next(iter(source.batches(model, 1)), None)
    if first is None or batch <= 1:
        return batch
    values = runner(first, names)
    per_sample = sum(np.asarray(v).nbytes for v in values.values()) + sum(
        v.nbytes for v in first.values()
    )
    return int(min(batch, max(1, BATCH_BYTES // max(per_sample, 1))))


def intermediates(model: onnx.ModelProto, names: list[str], feeds: Feeds) -> dict[str, np.ndarray]:
    """Values of the tensors `names` for one batch of `feeds`."""
    return Runner(model, names)(feeds, names)


def _channel_blocks(value: np.ndarray, axis: int) -> np.ndarray:
    """[before, channels, after] view of `value` around `axis` (1-D: one channel per entry)."""
    x = np.asarray(value)
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float64)
    if x.ndim <= 1:
        return x.reshape(1, -1, 1)
    axis %= x.ndim
    return x.reshape(math.prod(x.shape[:axis]), x.shape[axis], -1)


class Moments:
    """Running per-channel sum, sum of squares and count (channels on `axis`)."""

    def __init__(self, axis: int = 1) -> None:
        self.axis = axis
        self.s1: np.ndarray | None = None
        self.s2: np.ndarray | None = None
        self.count = 0

    def add(self, value: np.ndarray) -> None:  # noqa: D102
        x = _channel_blocks(value, self.axis)
        if self.s1 is None or self.s2 is None:
            self.s1, self.s2 = np.zeros(x.shape[1]), np.zeros(x.shape[1])
        # per-row sums in the tensor's dtype over the contiguous last axis (relative error
        # ~1e-7 in float32, no float64 copy), accumulated in float64 across rows and batches
        self.s1 += x.sum(axis=2).sum(axis=0, dtype=np.float64)
        self.s2 += np.einsum("ijk,ijk->ij", x, x).sum(axis=0, dtype=np.float64)
        self.count += x.shape[0] * x.shape[2]

    def result(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(mean, std) per channel, None before any value."""
        if self.s1 is None or self.s2 is None or self.count == 0:
            return None
        mean = self.s1 / self.count
        return mean, np.sqrt(np.maximum(self.s2 / self.count - mean**2, 0.0))


class Covariance:
    """Running E[x x^T] and E[x] over channels on `axis` (every other axis is a sample)."""

    def __init__(self, axis: int) -> None:
        self.axis = axis
        self.xx: np.ndarray | None = None
        self.x: np.ndarray | None = None
        self.count = 0

    def add(self, value: np.ndarray) -> None:  # noqa: D102
        x = np.moveaxis(np.asarray(value, dtype=np.float64), self.axis, -1)
        x = x.reshape(-1, x.shape[-1])
        self.xx = x.T @ x if self.xx is None else self.xx + x.T @ x
        self.x = x.sum(axis=0) if self.x is None else self.x + x.sum(axis=0)
        self.count += x.shape[0]

    def result(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(E[x x^T], E[x]), None before any value."""
        if self.xx is None or self.x is None:
            return None
        return self.xx / max(self.count, 1), self.x / max(self.count, 1)


class Values:
    """Exact min/max, per-last-axis max |x|, and a seeded subsample of the values seen."""

    def __init__(
        self,
        rng: np.random.Generator,
        per_batch: int = PER_BATCH,
        max_values: int | None = MAX_VALUES,
    ) -> None:
        self.rng, self.per_batch, self.max_values = rng, per_batch, max_values
        self.lo, self.hi, self.count, self.seen = np.inf, -np.inf, 0, 0
        self.kept: list[np.ndarray] = []
        self.channel_max: np.ndarray | None = None

    def add(self, value: np.ndarray) -> None:  # noqa: D102
        values = np.asarray(value, dtype=np.float32)
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
        if not finite.size:
            return
        take = (
            finite
            if finite.size <= self.per_batch
            else self.rng.choice(finite, self.per_batch, replace=False)
        )
        before, self.seen = self.seen, self.seen + finite.size
        if self.max_values is None or self.count + take.size <= self.max_values:
            self.kept.append(take)
            self.count += take.size
            return
        self._merge(take, before, finite.size)

    def _merge(self, take: np.ndarray, before: int, new: int) -> None:
        """Keep `max_values` values: uniform subsets of the kept ones and of `take`.

        The kept share follows the values seen (`before` against `new`), so every value
        seen is about equally likely to stay, whatever the order and size of the batches.
        """
        old = self.values()
        size = int(self.max_values or old.size + take.size)
        from_old = int(self.rng.binomial(size, before / (before + new)))
        from_old = min(max(from_old, size - take.size), old.size)
        keep_old = self.rng.choice(old.size, from_old, replace=False)
        keep_new = self.rng.choice(take.size, size - from_old, replace=False)
        self.kept = [np.concatenate([old[keep_old], take[keep_new]])]
        self.count = size

    def _track_channels(self, values: np.ndarray) -> None:
        if values.ndim < 2 or not np.all(np.isfinite(values)):
            return
        peak = np.abs(values).reshape(-1, values.shape[-1]).max(axis=0)
        old = self.channel_max
        same = old is not None and old.shape == peak.shape
        self.channel_max = np.maximum(old, peak) if old is not None and same else peak

    def values(self) -> np.ndarray:
        """The kept subsample (float32, finite values only)."""
        return np.concatenate(self.kept) if self.kept else np.zeros(0, np.float32)

    def channel_spread(self) -> float:
        """Largest channel's max |x| over the median channel's (channels: last axis)."""
        if self.channel_max is None or self.channel_max.size < 2:
            return 1.0
        median = float(np.median(self.channel_max))
        return float(self.channel_max.max()) / median if median > 0 else np.inf


def channel_moments(
    model: onnx.ModelProto,
    axes: Mapping[str, int],
    source: inputs.Source | Sequence[Feeds],
    batch: int = inputs.BLOCK,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-channel (mean, std) over every axis but `axes[name]` of each tensor, one run."""
    reducers = {name: Moments(axis) for name, axis in axes.items()}
    collect(model, reducers, source, batch)
    return {n: got for n, r in reducers.items() if (got := r.result()) is not None}
