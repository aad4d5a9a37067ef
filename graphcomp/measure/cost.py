"""Measured per-node cost: what a latency budget spends (prune's `latency=`).

One onnxruntime session with one intra-op thread and basic graph optimizations (nodes
keep their names; the extended fusions rename them), profiled over `RUNS` runs on
seeded batch-1 inputs after `WARMUP` runs. A node's cost is its mean kernel time; the
total is the mean time of a whole run, so the cost of what is not a node's kernel
(copies, the session's own work) is in the total and in no node. Relative costs are
what a budget uses; `graphcomp bench` is the measurement to quote.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnxruntime as ort

from graphcomp.core import model_io
from graphcomp.measure import inputs

RUNS = 10
WARMUP = 3


@dataclass(frozen=True)
class Costs:
    """Mean kernel time per node name and of a whole run, in microseconds."""

    nodes: dict[str, float]
    total: float


def node_costs(model: onnx.ModelProto, shapes: dict[str, list[int]] | None = None) -> Costs:
    """Profile `model` (see the module docstring); errors are onnxruntime's."""
    with tempfile.TemporaryDirectory() as folder:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        opts.intra_op_num_threads = 1
        opts.log_severity_level = 4
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(folder) / "cost")
        with model_io.on_disk(model) as path:
            sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        feeds = inputs.make_inputs(sess, dict(shapes or {}), seed=0, batch=1)
        for _ in range(WARMUP + RUNS):
            sess.run(None, feeds)
        events = json.loads(Path(sess.end_profiling()).read_text())
    runs = sorted(
        (e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
        key=lambda e: e["ts"],
    )[-RUNS:]
    cutoff = runs[0]["ts"] if runs else 0
    nodes: Counter[str] = Counter()
    for event in events:
        name = event.get("name", "")
        if event.get("cat") == "Node" and name.endswith("_kernel_time") and event["ts"] >= cutoff:
            nodes[name.removesuffix("_kernel_time")] += event["dur"] / RUNS
    total = sum(e["dur"] for e in runs) / max(len(runs), 1)
    return Costs(dict(nodes), max(total, sum(nodes.values())))
