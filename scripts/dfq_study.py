"""Measurements behind dfq's defaults (docs/dfq.md; the ablation tables come from bench).

Usage: python scripts/dfq_study.py stats|configs|exact MODEL.onnx [...] [--eval NPZ]

- stats: how close each data-free statistics source (bn, analytic, synthetic with
  white or 1/f prior) comes to the statistics of real data (the eval set): per
  layer the mean error in units of the true std, and |log(std / true std)|.
- configs: top-1 accuracy and agreement with the float model of dfq variants.
- exact: equalize alone, max relative output error on the eval inputs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from graphcomp import pipeline
from graphcomp.core.pass_base import PassContext  # noqa: E402
from graphcomp.measure import observe, stats  # noqa: E402
from graphcomp.passes.dfq.dfq import DfqConfig, DfqPass  # noqa: E402
from graphcomp.passes.dfq.equalize import EqualizePass  # noqa: E402
from graphcomp.passes.fold_bn import FoldBnPass  # noqa: E402

EVAL = Path(__file__).resolve().parents[1] / "models" / "data" / "glyphs_eval.npz"


def load_eval(path: Path, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """Images (float32) and labels of an eval .npz."""
    data = np.load(path)
    return data["input"][:limit].astype(np.float32), data["label"][:limit]


def logits(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """The model's outputs on `x`, in batches."""
    batches = [{"input": x[i : i + 256]} for i in range(0, len(x), 256)]
    sess = observe.inputs.session(model)
    return np.concatenate([sess.run(None, b)[0] for b in batches])


def study_stats(path: Path, x: np.ndarray) -> None:
    """Print each statistics source's error against the real-data statistics."""
    model = onnx.load(str(path))
    ctx = PassContext()
    folded = pipeline.run(model, [FoldBnPass()], ctx).model
    truth = stats.estimate(folded, PassContext(calibration={"input": x}), "calibration")
    candidates = {
        "bn": ({}, "bn", "smooth"),
        "analytic": ({}, "analytic", "smooth"),
        "synthetic-normal": ({}, "synthetic", "normal"),
        "synthetic-smooth": ({}, "synthetic", "smooth"),
    }
    for label, (_, method, prior) in candidates.items():
        start = time.perf_counter()
        got = stats.estimate(folded, ctx if method == "bn" else PassContext(), method, prior=prior)
        secs = time.perf_counter() - start
        m_err, s_err = [], []
        for name, st in got.items():
            ref = truth[name]
            m_err.append(np.mean(np.abs(st.mean - ref.mean) / (ref.std + 1e-6)))
            s_err.append(np.mean(np.abs(np.log((st.std + 1e-6) / (ref.std + 1e-6)))))
        if got:
            print(
                f"{path.name:24s} {label:18s} layers {len(got):3d}/{len(truth):3d} "
                f"mean err {np.mean(m_err):.3f} std |log| {np.mean(s_err):.3f} ({secs:.1f}s)"
            )


def study_configs(path: Path, x: np.ndarray, y: np.ndarray, variants: list[str]) -> None:
    """Print top-1 and agreement of each dfq variant."""
    model = onnx.load(str(path))
    ref = logits(model, x)
    print(f"{path.name:24s} float top-1 {np.mean(ref.argmax(1) == y):.4f}")
    for spec in variants:
        fields = dict(kv.split("=") for kv in spec.split(",") if kv)
        cfg = DfqConfig(**{k: _value(v) for k, v in fields.items()})
        start = time.perf_counter()
        out = pipeline.run(model, [DfqPass(cfg)], PassContext()).model
        secs = time.perf_counter() - start
        got = logits(out, x)
        print(
            f"{path.name:24s} {spec or 'default':40s} top-1 {np.mean(got.argmax(1) == y):.4f} "
            f"agree {np.mean(got.argmax(1) == ref.argmax(1)):.4f} ({secs:.1f}s)"
        )


def study_exact(path: Path, x: np.ndarray) -> None:
    """Print equalize's output error and coverage."""
    model = onnx.load(str(path))
    out = pipeline.run(model, [EqualizePass()], PassContext())
    ref, got = logits(model, x), logits(out.model, x)
    notes = out.records[0].result.notes
    err = float(np.max(np.abs(ref - got)) / np.max(np.abs(ref)))
    print(
        f"{path.name:24s} equalize rel err {err:.2e} links {notes['links']} "
        f"layers {notes['layers_covered']} params {notes['params_covered']:.2%}"
    )


def _value(text: str) -> object:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def main() -> None:
    """Command line entry."""
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=("stats", "configs", "exact"))
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--eval", type=Path, default=EVAL)
    parser.add_argument("--limit", type=int, default=2000)
    parser.add_argument("--variant", action="append", default=[])
    args = parser.parse_args()
    x, y = load_eval(args.eval, args.limit)
    for path in args.models:
        if args.what == "stats":
            study_stats(path, x)
        elif args.what == "configs":
            study_configs(path, x, y, args.variant or [""])
        else:
            study_exact(path, x)


if __name__ == "__main__":
    main()
