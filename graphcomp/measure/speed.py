"""Is the output faster than the input? A quick paired latency check after verification.

Both models run in onnxruntime with one intra-op thread on the same seeded inputs (batch
1 where the batch is dynamic): WARMUP runs each, then RUNS interleaved runs, and the ratio
of the medians (output / original) is the result. A ratio above SLOWER is measured again
over CONFIRM_RUNS pairs and that one counts: on a loaded machine 7 pairs once read a
lossless cleanup as 1.93x. A model whose single run takes longer than BUDGET_S is not
timed (None), so the check stays small; so is a model whose weights stay on disk
(graphcomp/core/lazy_weights.py): two sessions at once would hold its weights twice.
`graphcomp bench` is the measurement to quote; this one only keeps a slower model from
being written silently.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import onnx
import onnxruntime as ort

from graphcomp.core import model_io
from graphcomp.measure import inputs

RUNS = 7
CONFIRM_RUNS = 21  # pairs of the second measurement, when the first reads slower
WARMUP = 2
BUDGET_S = 0.5  # one run of the original slower than this: no check
SLOWER = 1.05  # a ratio above this is reported as a warning


def latency_ratio(
    original: onnx.ModelProto | str | Path,
    compressed: onnx.ModelProto | str | Path,
    shapes: dict[str, list[int]] | None = None,
) -> float | None:
    """Median latency of `compressed` over `original`'s, or None when not measured."""
    if any(isinstance(m, onnx.ModelProto) and model_io.is_lazy(m) for m in (original, compressed)):
        return None
    try:
        ref = inputs.session(original, threads=1)
        new = inputs.session(compressed, threads=1)
        feeds = inputs.make_inputs(ref, dict(shapes or {}), seed=0, batch=1)
        if _once(ref, feeds) > BUDGET_S:
            return None
        for _ in range(WARMUP):
            _once(ref, feeds), _once(new, feeds)
        ratio = _ratio([(_once(ref, feeds), _once(new, feeds)) for _ in range(RUNS)])
        if ratio is not None and ratio > SLOWER:
            ratio = _ratio([(_once(ref, feeds), _once(new, feeds)) for _ in range(CONFIRM_RUNS)])
    except inputs.ORT_ERRORS:
        return None  # verification reports why a model does not run
    return ratio


def _ratio(pairs: list[tuple[float, float]]) -> float | None:
    base = statistics.median(a for a, _ in pairs)
    return statistics.median(b for _, b in pairs) / base if base > 0 else None


def warning(ratio: float | None) -> str | None:
    """The summary's sentence for a slower output, None when it is not slower."""
    if ratio is None or ratio <= SLOWER:
        return None
    return (
        f"the output runs at {ratio:.2f}x the original's latency (batch 1, one thread, "
        f"median of {RUNS} runs): check with 'graphcomp bench'; a small model may be "
        "faster left float"
    )


def _once(sess: ort.InferenceSession, feeds: inputs.Feeds) -> float:
    start = time.perf_counter()
    sess.run(None, feeds)
    return time.perf_counter() - start
