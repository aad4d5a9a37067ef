"""onnxruntime's own quantizers as bench rows, measured beside graphcomp's passes.

- `ort-static-pt` / `ort-static-pc`: `quantize_static`, QuantFormat.QDQ, activations
  QUInt8 (asymmetric), weights QInt8 (symmetric), per-tensor / per-channel weights,
  MinMax calibration on the user's `--calibration-data` samples (required).
- `ort-dynamic`: `quantize_dynamic`, weights QInt8, activations quantized at run time.

Every baseline first runs `quant_pre_process` (symbolic and ONNX shape inference plus
onnxruntime's basic graph optimizations, which fold BatchNormalization into Conv), as
onnxruntime's documentation recommends before quantizing; the row's note says whether
it succeeded. Nothing here changes how graphcomp's own passes work.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import onnx

from graphcomp.core.errors import ConfigError

log = logging.getLogger(__name__)
CALIBRATION_BATCH = 32  # samples per calibration run when the batch dim is dynamic


@dataclass(frozen=True)
class Baseline:
    """One onnxruntime quantizer configuration."""

    name: str
    kind: str  # "static" or "dynamic"
    per_channel: bool
    summary: str


BASELINES: dict[str, Baseline] = {
    "ort-static-pt": Baseline(
        "ort-static-pt",
        "static",
        False,
        "ORT quantize_static QDQ, act QUInt8, weight QInt8 per-tensor, MinMax",
    ),
    "ort-static-pc": Baseline(
        "ort-static-pc",
        "static",
        True,
        "ORT quantize_static QDQ, act QUInt8, weight QInt8 per-channel, MinMax",
    ),
    "ort-dynamic": Baseline(
        "ort-dynamic",
        "dynamic",
        False,
        "ORT quantize_dynamic, weight QInt8 per-tensor, dynamic activations",
    ),
}


def check(names: list[str], calibration_data: str | os.PathLike[str] | None) -> None:
    """ConfigError for unknown baselines or a static one without calibration data."""
    for name in names:
        if name not in BASELINES:
            raise ConfigError(f"unknown baseline '{name}'; available: {', '.join(BASELINES)}")
        if BASELINES[name].kind == "static" and calibration_data is None:
            raise ConfigError(
                f"baseline '{name}' calibrates activation ranges; "
                "give --calibration-data samples.npz"
            )


def _np_dtype(value: onnx.ValueInfoProto) -> np.dtype:
    return onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)


def _batch_dim(value: onnx.ValueInfoProto) -> int | None:
    dims = value.type.tensor_type.shape.dim
    return dims[0].dim_value if dims and dims[0].HasField("dim_value") else None


class NpzReader:
    """`CalibrationDataReader` over an .npz: one array per model input, cast to its dtype.

    An array is found under the input's name, or under `input` for a one-input model.
    Batches of `CALIBRATION_BATCH` samples, or of the model's fixed batch size.
    """

    def __init__(self, model: onnx.ModelProto, path: str | os.PathLike[str]) -> None:
        inits = {i.name for i in model.graph.initializer}
        inputs = [v for v in model.graph.input if v.name not in inits]
        try:
            with np.load(path) as data:
                arrays = {
                    v.name: _pick(data, v.name, len(inputs)).astype(_np_dtype(v)) for v in inputs
                }
        except (OSError, ValueError) as e:
            raise ConfigError(f"{path}: cannot read calibration data ({e})") from e
        self.count = min(len(a) for a in arrays.values())
        fixed = _batch_dim(inputs[0])
        step = fixed or CALIBRATION_BATCH
        stop = self.count - step + 1 if fixed else self.count  # a fixed batch takes no rest
        self._batches = iter(
            [{k: a[i : i + step] for k, a in arrays.items()} for i in range(0, stop, step)]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        """The next batch of feeds, None when done."""
        return next(self._batches, None)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self._batches


def _pick(data: np.lib.npyio.NpzFile, name: str, n_inputs: int) -> np.ndarray:
    if name in data.files:
        return np.asarray(data[name])
    if n_inputs == 1 and "input" in data.files:
        return np.asarray(data["input"])
    raise ConfigError(f"no array named '{name}' (has {', '.join(data.files)})")


def run(
    name: str, model_path: Path, output: Path, calibration_data: str | os.PathLike[str] | None
) -> str:
    """Quantize `model_path` into `output` with baseline `name`; returns the row's note."""
    from onnxruntime import quantization as q  # heavy import, only in the compile child

    base = BASELINES[name]
    with tempfile.TemporaryDirectory(dir=output.parent) as tmp:
        prepared, pre_note = _pre_process(q, model_path, Path(tmp) / "pre.onnx")
        if base.kind == "dynamic":
            q.quantize_dynamic(
                prepared, output, per_channel=base.per_channel, weight_type=q.QuantType.QInt8
            )
            return f"{base.summary}; {pre_note}"
        reader = NpzReader(
            onnx.load(str(prepared), load_external_data=False), calibration_data or ""
        )
        q.quantize_static(
            prepared,
            output,
            reader,
            quant_format=q.QuantFormat.QDQ,
            per_channel=base.per_channel,
            activation_type=q.QuantType.QUInt8,
            weight_type=q.QuantType.QInt8,
            calibrate_method=q.CalibrationMethod.MinMax,
        )
    return f"{base.summary}, calibrated on {reader.count} samples; {pre_note}"


def _pre_process(q: ModuleType, source: Path, target: Path) -> tuple[Path, str]:
    """quant_pre_process into `target`; the source itself when it fails (noted)."""
    try:
        # symbolic shape inference needs sympy, which graphcomp does not depend on
        symbolic = importlib.util.find_spec("sympy") is not None
        q.quant_pre_process(str(source), str(target), skip_symbolic_shape=not symbolic)
    except Exception as e:  # noqa: BLE001 - the baseline still runs, and says so
        log.warning("quant_pre_process failed on %s: %s", source, e)
        return source, f"quant_pre_process failed ({type(e).__name__}), quantized as is"
    return target, "after quant_pre_process (shape inference, ORT basic optimizations)"
