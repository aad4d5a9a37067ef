"""The reference model zoo in models/: accuracy matches the README, shapes, BN twins."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

MODELS_DIR = Path(__file__).resolve().parents[2] / "models"
MODEL_FILES = sorted(MODELS_DIR.glob("*.onnx"))
MAX_BYTES = 3 * 1024 * 1024
MIN_TOP1 = 95.0
TOP1_TOLERANCE = 0.5  # percentage points vs the README table
EVAL_BATCH = 256


@cache
def _session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


@cache
def _eval_data() -> tuple[np.ndarray, np.ndarray]:
    with np.load(MODELS_DIR / "data" / "glyphs_eval.npz") as data:
        return data["input"].astype(np.float32), data["label"]


@cache
def _readme_top1() -> dict[str, float]:
    """Map model file name -> `FP32 top-1 (%)` from the README table."""
    lines = (MODELS_DIR / "README.md").read_text().splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("|") and "FP32 top-1 (%)" in ln)
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    column = header.index("FP32 top-1 (%)")
    result = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        if match := re.search(r"[\w.]+\.onnx", cells[0]):
            result[match.group(0)] = float(cells[column])
    return result


def _ids(paths: list[Path]) -> list[str]:
    return [p.name for p in paths]


def test_zoo_is_not_empty_and_fully_documented() -> None:
    assert len(MODEL_FILES) >= 9
    assert set(_readme_top1()) == {p.name for p in MODEL_FILES}


def test_eval_and_calib_data_have_expected_layout() -> None:
    images, labels = _eval_data()
    assert images.shape[1:] == (1, 32, 32) and labels.dtype == np.int64
    with np.load(MODELS_DIR / "data" / "glyphs_calib.npz") as calib:
        assert calib["input"].shape == (256, 1, 32, 32)
        assert calib["input"].dtype == np.float16


@pytest.mark.parametrize("path", MODEL_FILES, ids=_ids(MODEL_FILES))
def test_top1_matches_readme(path: Path) -> None:
    images, labels = _eval_data()
    sess = _session(path)
    preds = [
        sess.run(["logits"], {"input": images[i : i + EVAL_BATCH]})[0].argmax(1)
        for i in range(0, len(images), EVAL_BATCH)
    ]
    top1 = 100.0 * float((np.concatenate(preds) == labels).mean())
    assert top1 >= MIN_TOP1
    assert abs(top1 - _readme_top1()[path.name]) <= TOP1_TOLERANCE


@pytest.mark.parametrize("path", MODEL_FILES, ids=_ids(MODEL_FILES))
def test_dynamic_batch_small_file(path: Path) -> None:
    assert path.stat().st_size <= MAX_BYTES
    model = onnx.load(str(path))
    (inp,), (out,) = model.graph.input, model.graph.output
    assert (inp.name, out.name) == ("input", "logits")
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param and not dims[0].dim_value
    assert [d.dim_value for d in dims[1:]] == [1, 32, 32]
    images, _ = _eval_data()
    for n in (1, 3):
        logits = _session(path).run(["logits"], {"input": images[:n]})[0]
        assert logits.shape[0] == n and np.isfinite(logits).all()


BN_FILES = sorted(MODELS_DIR.glob("*_bn.onnx"))


def _count(path: Path, op_type: str) -> int:
    return sum(n.op_type == op_type for n in onnx.load(str(path)).graph.node)


@pytest.mark.parametrize("path", BN_FILES, ids=_ids(BN_FILES))
def test_bn_twin_keeps_and_folded_twin_drops_batchnorm(path: Path) -> None:
    folded = path.with_name(path.name.replace("_bn.onnx", ".onnx"))
    assert folded.exists()
    assert _count(path, "BatchNormalization") > 0
    assert _count(folded, "BatchNormalization") == 0
    assert _count(path, "Conv") == _count(folded, "Conv")
