"""Rebuild the graphcomp reference model zoo: data, training, ONNX export, README table.

Usage (from the repo root): `pip install torch==2.13.0 onnxscript`, then
`python models/build.py`. Writes models/data/glyphs_{calib,eval}.npz, models/*.onnx
and the table between the markers in models/README.md. Seeded; about 15 minutes on
2 CPU cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import export  # noqa: E402
import glyphs  # noqa: E402
import nets  # noqa: E402
import stats  # noqa: E402
import train  # noqa: E402

log = logging.getLogger("build")

MODELS_DIR = Path(__file__).resolve().parent
N_TRAIN, N_CALIB, N_EVAL = 40_000, 256, 1_978  # eval: 46 per class
SEED_TRAIN, SEED_CALIB, SEED_EVAL = 1001, 2002, 3003
TABLE_START, TABLE_END = "<!-- zoo-table:start -->", "<!-- zoo-table:end -->"


@dataclasses.dataclass(frozen=True)
class Spec:
    name: str
    opset: int  # of the BN-folded (legacy exporter) file
    exercises: str
    train: train.TrainConfig


SPECS = (
    Spec(
        "mobilenetv2_s",
        13,
        "depthwise conv, ReLU6 (Clip), residual Add coupling",
        train.TrainConfig(epochs=5, seed=1),
    ),
    Spec(
        "resnet_s",
        17,
        "residual Add coupling, 1x1 projection shortcuts",
        train.TrainConfig(epochs=3, seed=2),
    ),
    Spec(
        "vgg_s",
        13,
        "MaxPool, Flatten (64x4x4) -> Gemm, Gemm -> Relu -> Gemm",
        train.TrainConfig(epochs=4, seed=3),
    ),
    Spec(
        "densecat_s",
        17,
        "channel Concat (dense blocks), 1x1 transitions, AveragePool",
        train.TrainConfig(epochs=4, seed=4),
    ),
    Spec(
        "vit_s",
        17,
        "attention: MatMul (x@W and QK^T, AV), Softmax, LayerNorm, GELU",
        train.TrainConfig(epochs=10, lr=2e-3, weight_decay=0.05, seed=5),
    ),
)


def make_data(out_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Generate the splits; save calib and eval; return float32 arrays as consumers see them."""
    start = time.time()
    splits = {
        "train": glyphs.make_split(N_TRAIN, SEED_TRAIN),
        "calib": glyphs.make_split(N_CALIB, SEED_CALIB),
        "eval": glyphs.make_split(N_EVAL, SEED_EVAL),
    }
    for name in ("calib", "eval"):
        glyphs.save_split(out_dir / "data" / f"glyphs_{name}.npz", *splits[name])
        # consumers read float16 and cast to float32: use exactly that from here on
        images, labels = splits[name]
        splits[name] = (images.astype(np.float16).astype(np.float32), labels)
    log.info("data: %s in %.0f s", {k: len(v[1]) for k, v in splits.items()}, time.time() - start)
    return splits


def build_one(spec: Spec, data: dict, out_dir: Path) -> list[dict]:
    """Train, export and measure one architecture; returns one row per ONNX file."""
    start = time.time()
    torch.manual_seed(spec.train.seed)
    model = nets.ARCHITECTURES[spec.name](len(glyphs.CLASSES))
    train.train(model, *data["train"], spec.train)
    torch_acc = 100 * train.accuracy(model, *data["eval"])
    log.info(
        "%s: torch eval top-1 %.2f%% (trained in %.0f s)", spec.name, torch_acc, time.time() - start
    )
    rows = []
    for path in export.export_pair(model, out_dir, spec.name, spec.opset, data["eval"][0]):
        row = {
            "file": path.name,
            "arch": spec.name,
            "exercises": spec.exercises,
            **stats.summary(path),
            "top1": stats.top1(path, *data["eval"]),
            "int8_top1": stats.int8_top1(path, data["calib"][0], *data["eval"]),
        }
        log.info("%s", row)
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    """Markdown table, one row per ONNX file."""
    head = (
        "| file | architecture | params | MACs | bytes | opset | BN | FP32 top-1 (%) "
        "| INT8 naive top-1 (%) | exercises |\n"
        "|---|---|---:|---:|---:|---:|---|---:|---:|---|\n"
    )
    lines = []
    for r in rows:
        bn = f"kept ({r['bn_nodes']})" if r["bn_nodes"] else "folded"
        if r["arch"] == "vit_s":
            bn = "none (LayerNorm)"
        lines.append(
            f"| `{r['file']}` | {r['arch']} | {r['params']:,} | {r['macs']:,} | "
            f"{r['bytes']:,} | {r['opset']} | {bn} | {r['top1']:.2f} | "
            f"{r['int8_top1']:.2f} | {r['exercises']} |"
        )
    return head + "\n".join(lines) + "\n"


def merge_rows(new: list[dict]) -> list[dict]:
    """Update build_log.json with `new` rows (by file name); return all rows, zoo order."""
    log_path = MODELS_DIR / "build_log.json"
    old = json.loads(log_path.read_text()) if log_path.exists() else []
    by_file = {r["file"]: r for r in old} | {r["file"]: r for r in new}
    order = [s.name for s in SPECS]
    rows = sorted(by_file.values(), key=lambda r: (order.index(r["arch"]), r["file"]))
    log_path.write_text(json.dumps(rows, indent=1) + "\n")
    return rows


def write_readme(rows: list[dict], readme: Path) -> None:
    """Replace the text between the table markers in README.md."""
    text = readme.read_text()
    before, rest = text.split(TABLE_START, 1)
    _, after = rest.split(TABLE_END, 1)
    readme.write_text(f"{before}{TABLE_START}\n{table(rows)}{TABLE_END}{after}")


def main(argv: list[str] | None = None) -> None:
    """Entry point: `python models/build.py [--only NAME ...] [--threads N]`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="architectures to rebuild (default: all)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("onnx_ir", "onnxscript", "torch"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    start = time.time()
    data = make_data(MODELS_DIR)
    specs = [s for s in SPECS if not args.only or s.name in args.only]
    rows = merge_rows([row for spec in specs for row in build_one(spec, data, MODELS_DIR)])
    write_readme(rows, MODELS_DIR / "README.md")
    log.info("done in %.0f s", time.time() - start)


if __name__ == "__main__":
    main()
