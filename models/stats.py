"""ONNX-side facts for the zoo table: params, MACs, opset, BN count, top-1, INT8 baseline.

Needs only numpy, onnx and onnxruntime (no torch).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import shape_inference
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

EVAL_BATCH = 256
_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE}


def count_params(model: onnx.ModelProto) -> int:
    """Elements of floating-point initializers (and Constant-node tensors)."""
    tensors = list(model.graph.initializer)
    tensors += [
        a.t
        for n in model.graph.node
        if n.op_type == "Constant"
        for a in n.attribute
        if a.name == "value"
    ]
    return sum(int(np.prod(t.dims)) for t in tensors if t.data_type in _FLOAT_TYPES)


def opset_of(model: onnx.ModelProto) -> int:
    """Version of the default ("" / "ai.onnx") domain."""
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def count_ops(model: onnx.ModelProto, op_type: str) -> int:
    """Number of nodes of `op_type` in the main graph."""
    return sum(n.op_type == op_type for n in model.graph.node)


def _static_shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    """Shapes of every tensor with the batch dim fixed to 1 (via shape inference)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for value in model.graph.input:
        value.type.tensor_type.shape.dim[0].dim_value = 1
    del model.graph.value_info[:]
    inferred = shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    shapes = {t.name: list(t.dims) for t in inferred.graph.initializer}
    graph = inferred.graph
    for value in [*graph.input, *graph.value_info, *graph.output]:
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = [d.dim_value for d in dims]
    return shapes


def count_macs(model: onnx.ModelProto) -> int:
    """Multiply-accumulates of Conv, Gemm and MatMul per sample (batch 1)."""
    shapes = _static_shapes(model)
    macs = 0
    for node in model.graph.node:
        out = shapes[node.output[0]]
        if node.op_type == "Conv":
            weight = shapes[node.input[1]]  # (C_out, C_in / group, kh, kw)
            macs += int(np.prod(out)) * int(np.prod(weight[1:]))
        elif node.op_type == "Gemm":
            trans_a = next((a.i for a in node.attribute if a.name == "transA"), 0)
            a_shape = shapes[node.input[0]]
            macs += int(np.prod(out)) * a_shape[0 if trans_a else 1]
        elif node.op_type == "MatMul":
            macs += int(np.prod(out)) * shapes[node.input[0]][-1]
    return macs


def session(path: Path | str) -> ort.InferenceSession:
    """CPU session, 2 threads, default graph optimisations."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def predict(path: Path | str, images: np.ndarray) -> np.ndarray:
    """Logits for float32 images, EVAL_BATCH at a time."""
    sess = session(path)
    name = sess.get_inputs()[0].name
    parts = [
        sess.run(None, {name: images[i : i + EVAL_BATCH]})[0]
        for i in range(0, len(images), EVAL_BATCH)
    ]
    return np.concatenate(parts)


def top1(path: Path | str, images: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy in percent, run in onnxruntime."""
    return 100.0 * float((predict(path, images).argmax(1) == labels).mean())


class _CalibReader(CalibrationDataReader):
    def __init__(self, images: np.ndarray, batch: int = 32) -> None:
        self._batches = iter([images[i : i + batch] for i in range(0, len(images), batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {"input": batch}


def quantize_naive(src: Path, dst: Path, calib: np.ndarray) -> None:
    """quant_pre_process, then per-tensor QDQ INT8 (QInt8 weights and activations, MinMax)."""
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(src), str(pre))
        quantize_static(
            str(pre),
            str(dst),
            _CalibReader(calib),
            quant_format=QuantFormat.QDQ,
            per_channel=False,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )


def int8_top1(src: Path, calib: np.ndarray, images: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 (%) of the naive per-tensor INT8 QDQ model."""
    with tempfile.TemporaryDirectory() as tmp:
        dst = Path(tmp) / "int8.onnx"
        quantize_naive(src, dst, calib)
        return top1(dst, images, labels)


def summary(path: Path) -> dict[str, int | bool]:
    """Params, MACs, bytes, opset and BatchNormalization count of one file."""
    model = onnx.load(str(path))
    return {
        "params": count_params(model),
        "macs": count_macs(model),
        "bytes": path.stat().st_size,
        "opset": opset_of(model),
        "bn_nodes": count_ops(model, "BatchNormalization"),
    }
