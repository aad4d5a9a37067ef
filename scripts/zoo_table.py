"""Correct top-1 counts of the zoo models on the zoo eval set, float and dfq profiles.

Each `models/*.onnx` is compressed with `graphcomp.compress(path, spec)` for every spec
(default: `dfq` and `dfq(per_channel=false)`) and its top-1 counted on
`models/data/glyphs_eval.npz` (1,978 images), next to the unmodified model's. Prints a
Markdown table. Usage, from the repo root:
`python scripts/zoo_table.py [--spec SPEC ...]`.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

import graphcomp

ROOT = Path(__file__).resolve().parents[1]
CHUNK = 256  # eval images per run


def correct(path: Path, images: np.ndarray, labels: np.ndarray) -> int:
    """Eval images whose top-1 class is their label."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    preds = [
        sess.run(None, {name: images[i : i + CHUNK]})[0].argmax(axis=1)
        for i in range(0, len(images), CHUNK)
    ]
    return int((np.concatenate(preds) == labels).sum())


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--spec", action="append", help="pass spec (repeatable)")
    specs = parser.parse_args().spec or ["dfq", "dfq(per_channel=false)"]
    with np.load(ROOT / "models/data/glyphs_eval.npz") as data:
        images, labels = data["input"].astype(np.float32), data["label"]
    print("| model | float | " + " | ".join(specs) + " |")
    print("|---|---|" + "---|" * len(specs))
    with tempfile.TemporaryDirectory() as tmp:
        for path in sorted((ROOT / "models").glob("*.onnx")):
            counts = [correct(path, images, labels)]
            for spec in specs:
                out = Path(tmp) / path.name
                graphcomp.compress(str(path), spec, output=out, verify_output=False)
                counts.append(correct(out, images, labels))
            print(f"| {path.stem} | " + " | ".join(map(str, counts)) + " |", flush=True)
    print(f"\n{len(images)} eval images")


if __name__ == "__main__":
    main()
