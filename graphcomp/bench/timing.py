"""The measurements of `graphcomp bench`: size on disk, weight bytes, latency, predictions.

Latency: every model gets onnxruntime CPU sessions with the same options (all graph
optimizations, `intra_op_num_threads` 1 or 0 = onnxruntime's default, one thread per
physical core) and the same seeded N(0, 1) inputs. After `warmup` discarded runs per
session, the `runs` timed runs are spread over `ROUNDS` rounds that visit the models in
turn (rotating the order); each model's first run in a round is discarded too, so a
model switch (caches, the previous session's spinning threads) is not timed, and a
load change on the machine hits every model alike. The figure is the median of the
timed `sess.run` wall times (`time.perf_counter`), in ms; the minimum, 10th and 90th
percentiles come with it (on a loaded machine the times are bimodal: a run that gets
a core to itself, or one that shares it, and the minimum is the steadier figure).
"""

from __future__ import annotations

import math
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import external_data_helper

from graphcomp.measure import inputs

ROUNDS = 5  # rounds the timed runs are spread over
NP_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
}
SUB_BYTE_BITS: dict[int, int] = {onnx.TensorProto.INT4: 4, onnx.TensorProto.UINT4: 4}
if hasattr(onnx.TensorProto, "FLOAT4E2M1"):
    SUB_BYTE_BITS[onnx.TensorProto.FLOAT4E2M1] = 4


@dataclass
class Latency:
    """Timing of one model at one batch size and thread setting."""

    batch: int
    threads: int  # 0 = onnxruntime's default
    median_ms: float | None
    min_ms: float | None = None
    p10_ms: float | None = None
    p90_ms: float | None = None
    runs: int = 0
    skipped: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def disk_bytes(path: Path) -> int:
    """Bytes of the model file plus every external data file it references."""
    model = onnx.load(str(path), load_external_data=False)
    files = {path.resolve()}
    for tensor in external_data_helper._get_all_tensors(model):
        if external_data_helper.uses_external_data(tensor):
            location = external_data_helper.ExternalDataInfo(tensor).location
            files.add((path.parent / location).resolve())
    return sum(f.stat().st_size for f in files if f.exists())


def tensor_bytes(tensor: onnx.TensorProto) -> int:
    """Storage of a tensor's values from its dims and type (works on external data)."""
    count = math.prod(tensor.dims)
    if tensor.data_type in SUB_BYTE_BITS:
        return math.ceil(count * SUB_BYTE_BITS[tensor.data_type] / 8)
    if tensor.data_type == onnx.TensorProto.STRING:
        return sum(len(s) for s in tensor.string_data)
    return count * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize


def weight_bytes(model: onnx.ModelProto) -> int:
    """Sum of initializer and Constant-node tensor bytes (int8 weights count 1 byte)."""
    total = sum(tensor_bytes(t) for t in model.graph.initializer)
    for node in model.graph.node:
        if node.op_type == "Constant":
            total += sum(
                tensor_bytes(a.t) for a in node.attribute if a.type == onnx.AttributeProto.TENSOR
            )
    return total


def batch_feeds(
    sess: ort.InferenceSession,
    batch: int,
    input_shapes: dict[str, list[int]],
    seed: int = 0,
    force: bool = False,
) -> tuple[dict[str, np.ndarray] | None, str | None]:
    """Seeded inputs with first dim `batch`.

    (None, reason) when the model fixes another batch size, unless `force` (then the
    caller splits the samples into runs of the fixed size).
    """
    shapes = {}
    for arg in sess.get_inputs():
        dims = list(input_shapes.get(arg.name) or arg.shape)
        fixed = bool(dims) and isinstance(dims[0], int) and dims[0] > 0
        if fixed and dims[0] != batch and arg.name not in input_shapes and not force:
            return None, f"input '{arg.name}' has a fixed batch dim {dims[0]}"
        # forced: a static first dim stays (a batch-1 model, or a state of shape [2, ?, 128])
        static = bool(arg.shape) and isinstance(arg.shape[0], int) and arg.shape[0] > 0
        shapes[arg.name] = [
            arg.shape[0] if static and force else batch,
            *[d if isinstance(d, int) and d > 0 else inputs.DEFAULT_DYNAMIC_DIM for d in dims[1:]],
        ]
    return inputs.make_inputs(sess, shapes, seed), None


def latency(
    paths: dict[str, Path],
    batch: int,
    threads: int,
    runs: int,
    warmup: int,
    input_shapes: dict[str, list[int]],
) -> dict[str, Latency]:
    """Latency of every model at one batch size and thread setting; see the module doc."""
    sessions = {key: inputs.session(path, threads) for key, path in paths.items()}
    feeds, reason = batch_feeds(next(iter(sessions.values())), batch, input_shapes)
    if feeds is None:
        return {key: Latency(batch, threads, None, skipped=reason) for key in paths}
    for sess in sessions.values():
        for _ in range(warmup):
            sess.run(None, feeds)
    times: dict[str, list[float]] = {key: [] for key in paths}
    keys = list(paths)
    rounds = min(ROUNDS, runs)
    for r in range(rounds):
        per_round = runs // rounds + (r < runs % rounds)
        for key in keys[r % len(keys) :] + keys[: r % len(keys)]:
            sessions[key].run(None, feeds)  # discarded: first run after a model switch
            times[key].extend(_timed(sessions[key], feeds, per_round))
    return {key: _summary(batch, threads, t) for key, t in times.items()}


def _timed(sess: ort.InferenceSession, feeds: dict[str, np.ndarray], n: int) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        sess.run(None, feeds)
        out.append((time.perf_counter() - start) * 1e3)
    return out


def _summary(batch: int, threads: int, times: list[float]) -> Latency:
    p10, median, p90 = np.percentile(times, [10, 50, 90])
    return Latency(batch, threads, float(median), min(times), float(p10), float(p90), len(times))


def sample_inputs(
    sess: ort.InferenceSession,
    eval_data: Path | None,
    count: int,
    input_shapes: dict[str, list[int]],
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """(feeds, labels) from `eval_data` (keys `input`, `label`) or seeded samples.

    Seeded: `count` samples up to 112x112 images, fewer for larger ones (as the synthetic
    priors, inputs.plan_synthetic: 32 of 256 at 640x640).
    """
    if eval_data is None:
        one, _ = batch_feeds(sess, 1, input_shapes, seed=1, force=True)
        count = inputs.plan_synthetic(one or {}, count)[0]
        feeds, _ = batch_feeds(sess, count, input_shapes, seed=1, force=True)
        return feeds or {}, None
    arg = sess.get_inputs()[0]
    with np.load(eval_data) as data:
        values, labels = np.asarray(data["input"]), np.asarray(data["label"])
    return {arg.name: values.astype(NP_TYPES.get(arg.type, values.dtype))}, labels


def outputs(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every output of the model on all samples of `feeds`, by output name.

    Runs in chunks of at most inputs.BLOCK samples and inputs.BLOCK_BYTES of inputs
    (inputs.plan_synthetic), or of the model's fixed batch size (a remainder that does not
    fill a fixed batch is left out); chunks are joined on axis 0.
    """
    sess = inputs.session(path)
    first = sess.get_inputs()[0].shape[0]
    fixed = first if isinstance(first, int) and first > 0 else None
    count = min(len(a) for a in feeds.values())
    step = fixed or inputs.plan_synthetic({k: a[:1] for k, a in feeds.items()}, count)[1]
    names = [o.name for o in sess.get_outputs()]
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for i in range(0, count - step + 1 if fixed else count, step):
        for name, out in zip(
            names, sess.run(names, {k: a[i : i + step] for k, a in feeds.items()}), strict=True
        ):
            parts[name].append(out)
    return {n: np.concatenate(p) for n, p in parts.items() if p}


def top1(scores: np.ndarray) -> np.ndarray | None:
    """Argmax over axis 1 of [N, C] class scores; None for any other output."""
    if scores.ndim != 2 or scores.shape[1] < 2:
        return None
    return np.argmax(scores, axis=1)


def cpu_info() -> tuple[str, int | None]:
    """(CPU model name, physical cores) from /proc/cpuinfo; platform facts elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine(), None
    cores, package, name = set(), "", platform.machine()
    for line in text.splitlines():
        key, _, value = (part.strip() for part in line.partition(":"))
        if key == "physical id":
            package = value
        elif key == "core id":
            cores.add((package, value))
        elif key == "model name":
            name = value
    return name, len(cores) or None


def load_average() -> float | None:
    """The 1-minute load average (other processes competing for the CPUs)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def machine() -> dict[str, Any]:
    """Facts that make latency figures comparable: cores, CPU, onnxruntime version."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    name, cores = cpu_info()
    return {
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable,
        "physical_cores": cores,
        "processor": name,
        "onnxruntime": ort.__version__,
        "onnx": onnx.__version__,
        "ort_optimization": str(inputs.ORT_OPT_LEVEL),
        "default_threads": "intra_op_num_threads=0: onnxruntime uses one thread per physical core",
    }
