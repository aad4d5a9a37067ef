"""dfq (no data) against onnxruntime's quantize_static per-tensor (calibrated) on the zoo.

For each zoo CNN: top-1 of the float model, of onnxruntime's per-tensor int8 calibrated
on models/data/glyphs_calib.npz and of graphcomp's dfq with no data, per-tensor profile
(`dfq(per_channel=false,stats=data-free)`), the images only one of the two quantized
models gets right, and the exact two-sided McNemar p-value of that split (is the
difference more than chance?). Prints the markdown table of docs/dfq.md ("Against
onnxruntime"). Usage, from
the repo root:
`python scripts/dfq_vs_ort.py` (about 2 minutes on 2 cores).
"""

from __future__ import annotations

import sys
import tempfile
from math import comb
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from graphcomp import api  # noqa: E402
from graphcomp.bench import baselines

MODELS = [
    "mobilenetv2_s_bn",
    "mobilenetv2_s",
    "resnet_s_bn",
    "resnet_s",
    "vgg_s_bn",
    "vgg_s",
    "densecat_s_bn",
    "densecat_s",
]
CALIB = ROOT / "models/data/glyphs_calib.npz"
EVAL = ROOT / "models/data/glyphs_eval.npz"
BATCH = 256


def predict(model: onnx.ModelProto | Path, x: np.ndarray) -> np.ndarray:
    """Top-1 class of every row of `x` in onnxruntime."""
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return np.concatenate(
        [sess.run(None, {"input": x[i : i + BATCH]})[0].argmax(1) for i in range(0, len(x), BATCH)]
    )


def mcnemar_p(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value of b vs c discordant pairs."""
    n = b + c
    if n == 0:
        return 1.0
    return min(1.0, 2 * sum(comb(n, i) for i in range(min(b, c) + 1)) / 2**n)


def main() -> None:
    """Print the table."""
    data = np.load(EVAL)
    x, y = data["input"].astype(np.float32), data["label"]
    print(
        "| model | float | onnxruntime per-tensor, calibrated | dfq, no data | only dfq right "
        "| only onnxruntime right | McNemar p |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in MODELS:
        path = ROOT / f"models/{name}.onnx"
        model = onnx.load(path)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "ort.onnx"
            baselines.run("ort-static-pt", path, out, str(CALIB))
            theirs = predict(out, x)
        spec = "dfq(per_channel=false,stats=data-free)"  # the per-tensor profile
        ours = predict(api.compress(model, spec, verify_output=False)[0], x)
        b, c = int(np.sum((ours == y) & (theirs != y))), int(np.sum((theirs == y) & (ours != y)))
        row = [
            name,
            f"{np.mean(predict(model, x) == y):.4f}",
            f"{np.mean(theirs == y):.4f}",
            f"{np.mean(ours == y):.4f}",
            str(b),
            str(c),
            f"{mcnemar_p(b, c):.2f}",
        ]
        print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
