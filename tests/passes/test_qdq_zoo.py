"""qdq on the reference zoo (models/): integer kernels, weight bytes, calibrated accuracy."""

from functools import cache
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from graphcomp import pipeline
from graphcomp.bench.timing import weight_bytes
from graphcomp.core import model_io
from graphcomp.core.pass_base import PassContext
from graphcomp.passes.qdq.qdq import QdqConfig, QdqPass
from tests import graphs

MODELS = Path(__file__).resolve().parents[2] / "models"
ZOO = sorted(p for p in MODELS.glob("*.onnx"))
INTEGER_KERNELS = {
    "QLinearConv",
    "ConvInteger",
    "QLinearMatMul",
    "MatMulInteger",
    "QGemm",
    "MatMulIntegerToFloat",
    "DynamicQuantizeMatMul",
}
MIN_COVERAGE = 0.9
EVAL_LIMIT = 1000  # eval samples used by the slow accuracy test


def _need(name: str) -> Path:
    path = MODELS / f"{name}.onnx"
    if not path.exists():
        pytest.skip(f"zoo model {path.name} not built")
    return path


@cache
def _calibration() -> dict[str, np.ndarray]:
    path = MODELS / "data" / "glyphs_calib.npz"
    if not path.exists():
        pytest.skip("models/data/glyphs_calib.npz not built")
    with np.load(path) as data:
        return {"input": data["input"].astype(np.float32)}


def _quantize(path: Path, calibrated: bool = True, **fields) -> onnx.ModelProto:
    model = model_io.load(path)
    ctx = PassContext(
        opset=model_io.default_opset(model), calibration=_calibration() if calibrated else None
    )
    return pipeline.run(model, [QdqPass(QdqConfig(**fields))], ctx).model


def _coverage(original: onnx.ModelProto, quantized: onnx.ModelProto, tmp: Path) -> float:
    wanted = sum(n.op_type in ("Conv", "Gemm", "MatMul") for n in original.graph.node)
    ops = graphs.optimized_ops(quantized, str(tmp / "optimized.onnx"))
    return sum(op in INTEGER_KERNELS for op in ops) / wanted


@pytest.mark.parametrize("name", ["mobilenetv2_s", "resnet_s"])
def test_zoo_models_run_as_integer_kernels(tmp_path, name):
    path = _need(name)
    quantized = _quantize(path, calibrated=False)
    onnx.checker.check_model(quantized)
    assert _coverage(model_io.load(path), quantized, tmp_path) >= MIN_COVERAGE


@pytest.mark.slow
@pytest.mark.parametrize("path", ZOO, ids=[p.stem for p in ZOO])
def test_every_zoo_model_integer_small_and_accurate(tmp_path, path):
    original = model_io.load(path)
    quantized = _quantize(path)
    assert _coverage(original, quantized, tmp_path) >= MIN_COVERAGE
    assert weight_bytes(quantized) <= 0.3 * weight_bytes(original)
    assert weight_bytes(_quantize(path, calibrated=False, bits=4)) <= 0.17 * weight_bytes(original)
    with np.load(MODELS / "data" / "glyphs_eval.npz") as data:
        images = data["input"][:EVAL_LIMIT].astype(np.float32)
        labels = data["label"][:EVAL_LIMIT]
    accuracy = [_top1(m, images, labels) for m in (original, quantized)]
    assert accuracy[1] >= accuracy[0] - 1.0, accuracy


def _top1(model: onnx.ModelProto, images: np.ndarray, labels: np.ndarray) -> float:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    pred = np.concatenate(
        [
            sess.run(None, {name: images[i : i + 250]})[0].argmax(-1)
            for i in range(0, len(images), 250)
        ]
    )
    return 100.0 * float(np.mean(pred == labels))
