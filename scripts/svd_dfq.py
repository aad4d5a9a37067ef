"""The `svd,dfq` table of docs/svd.md: top-1 of int8 (dfq, per-tensor, no data) after svd.

For each zoo model: top-1 on models/data/glyphs_eval.npz of the original, of `dfq`
and of `svd(...),dfq` at three budgets, with the MACs relative to the original in
brackets. Prints a markdown table. Usage, from the repo root:
`python scripts/svd_dfq.py` (a few minutes on 2 cores).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from graphcomp import api
from graphcomp.core import analysis  # noqa: E402

MODELS = ["vit_s", "resnet_s", "vgg_s", "mobilenetv2_s", "densecat_s"]
SPECS = ["dfq", "svd(energy=0.95),dfq", "svd(macs=0.8),dfq", "svd(macs=0.6),dfq"]
EVAL = ROOT / "models/data/glyphs_eval.npz"
BATCH = 256


def top1(model: onnx.ModelProto, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of `model` on (x, y) in onnxruntime."""
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    pred = np.concatenate(
        [sess.run(None, {"input": x[i : i + BATCH]})[0].argmax(1) for i in range(0, len(x), BATCH)]
    )
    return float(np.mean(pred == y))


def main() -> None:
    """Print the table."""
    data = np.load(EVAL)
    x, y = data["input"].astype(np.float32), data["label"]
    print("| model | original | " + " | ".join(f"`{s}`" for s in SPECS) + " |")
    print("| --- | ---: |" + " ---: |" * len(SPECS))
    for name in MODELS:
        model = onnx.load(ROOT / f"models/{name}.onnx")
        macs = analysis.analyze(model).macs
        cells = [f"{top1(model, x, y):.4f} (1.00)"]
        for spec in SPECS:
            out = api.compress(model, spec, verify_output=False)[0]
            cells.append(f"{top1(out, x, y):.4f} ({analysis.analyze(out).macs / macs:.2f})")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
