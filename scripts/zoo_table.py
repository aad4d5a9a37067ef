"""Correct top-1 counts of the zoo models on the zoo eval set, float and dfq profiles.

Each `models/*.onnx` is compressed with `graphcomp.compress(path, spec)` for every spec
(default: `dfq` and `dfq(per_channel=false)`) and its top-1 counted on
`models/data/glyphs_eval.npz` (1,978 images), next to the unmodified model's. Prints a
Markdown table. Usage, from the repo root:
`python scripts/zoo_table.py [--spec SPEC ...]`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dfq_vs_ort import EVAL, ROOT, predict  # noqa: E402

import graphcomp  # noqa: E402


def correct(path: Path, images: np.ndarray, labels: np.ndarray) -> int:
    """Eval images whose top-1 class is their label."""
    return int((predict(path, images) == labels).sum())


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--spec", action="append", help="pass spec (repeatable)")
    specs = parser.parse_args().spec or ["dfq", "dfq(per_channel=false)"]
    with np.load(EVAL) as data:
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
