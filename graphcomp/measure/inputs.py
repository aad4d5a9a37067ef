"""Inputs for running a model: one onnxruntime session factory and the input sources.

The user's arrays (`--inputs`, `--calibration-data`: an .npz of named arrays, cast to
each input's declared type) or seeded synthetic inputs: N(0, 1) floats, integers in
[0, 2), random bools; dynamic dims take `shapes` overrides, else `batch` for the first
dim and `DEFAULT_DYNAMIC_DIM` for the others.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from graphcomp.core import model_io
from graphcomp.core.errors import ConfigError

DEFAULT_DYNAMIC_DIM = 64
ORT_OPT_LEVEL = ort.GraphOptimizationLevel.ORT_ENABLE_ALL


def session(model: onnx.ModelProto | str | Path, threads: int = 0) -> ort.InferenceSession:
    """A CPU onnxruntime session; large protos go through a temporary file."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ORT_OPT_LEVEL
    opts.log_severity_level = 4  # graphcomp reports failures itself, in one line
    if threads:
        opts.intra_op_num_threads = threads
    if isinstance(model, (str, Path)):
        return ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    if not model_io.needs_external_data(model):
        return ort.InferenceSession(
            model.SerializeToString(), opts, providers=["CPUExecutionProvider"]
        )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        model_io.save(model, path, external=True)
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def parse_shapes(items: list[str]) -> dict[str, list[int]]:
    """`["input:1x3x224x224"]` -> {"input": [1, 3, 224, 224]}."""
    shapes = {}
    for item in items:
        name, _, dims = item.rpartition(":")
        try:
            shapes[name] = [int(d) for d in dims.lower().split("x")]
        except ValueError:
            raise ConfigError(f"bad --input-shape '{item}': expected name:1x3x224x224") from None
        if not name or any(d <= 0 for d in shapes[name]):
            raise ConfigError(f"bad --input-shape '{item}': expected name:1x3x224x224")
    return shapes


def make_inputs(
    sess: ort.InferenceSession,
    shapes: dict[str, list[int]] | None = None,
    seed: int = 0,
    batch: int = 8,
) -> dict[str, np.ndarray]:
    """Seeded inputs for every model input, dynamic dims resolved as documented."""
    rng = np.random.default_rng(seed)
    shapes = shapes or {}
    feeds = {}
    for arg in sess.get_inputs():
        dims = shapes.get(arg.name) or [
            d if isinstance(d, int) and d > 0 else (batch if i == 0 else DEFAULT_DYNAMIC_DIM)
            for i, d in enumerate(arg.shape)
        ]
        feeds[arg.name] = _random(rng, arg.type, dims)
    return feeds


def _random(rng: np.random.Generator, ort_type: str, dims: list[int]) -> np.ndarray:
    if "float16" in ort_type:
        return rng.standard_normal(dims).astype(np.float16)
    if "double" in ort_type:
        return rng.standard_normal(dims)
    if "float" in ort_type:
        return rng.standard_normal(dims).astype(np.float32)
    if "bool" in ort_type:
        return rng.integers(0, 2, dims).astype(bool)
    if "int32" in ort_type:
        return rng.integers(0, 2, dims).astype(np.int32)
    if "int" in ort_type:
        return rng.integers(0, 2, dims).astype(np.int64)
    raise ConfigError(f"cannot make inputs of type {ort_type}; pass --inputs file.npz")


def load_inputs(path: str | Path, sess: ort.InferenceSession) -> dict[str, np.ndarray]:
    """Read an .npz of named inputs, cast to the model's input types."""
    try:
        data = np.load(path)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: cannot read inputs ({e})") from e
    feeds = {}
    for arg in sess.get_inputs():
        if arg.name not in data:
            raise ConfigError(f"{path}: no array named '{arg.name}' (has {', '.join(data.files)})")
        feeds[arg.name] = _cast(np.asarray(data[arg.name]), arg.type)
    return feeds


def _cast(array: np.ndarray, ort_type: str) -> np.ndarray:
    kinds = {
        "tensor(float)": np.float32,
        "tensor(float16)": np.float16,
        "tensor(double)": np.float64,
        "tensor(int64)": np.int64,
        "tensor(int32)": np.int32,
        "tensor(bool)": np.bool_,
    }
    return array.astype(kinds.get(ort_type, array.dtype), copy=False)
