"""Where prune's data-free gap is: swap one stage's statistics between real and synthetic.

Runs `graphcomp.compress` with `prune(...)` on realbench's EfficientNet-Lite0 and scores
top-1 agreement (and top-5 overlap) with the float model on the 256 views of a split.
Each row names which statistics each stage sees; "real" is 32 tuning views given as
calibration data (realbench's `--gc-cal`), "synthetic" the pass's own probes:

- `default`, `cal`: the pass as shipped, without / with the 32 views;
- `cal-synthetic-refit`: real statistics, but the least-squares refit on the probes;
- `cal-synthetic-stats`: real refit, but the statistics (importance, compensation) from
  the probes;
- `save:NAME` records the channels a run removes, `load:NAME` removes exactly those,
  `counts:NAME` removes as many per group but picks them with the run's own scores,
  `group:NAME:OTHER:I` removes NAME's channels except in group I, where it takes OTHER's.

This is a diagnostic: it swaps private functions of graphcomp.passes.prune.prune for the
run (never use it as an API). Usage:
`python scripts/prune_swap.py [--split tuning] [--folded 1] ROW[@SPEC] ...`, e.g.
`cal@prune(macs=0.9)+save:real default+counts:real`; modes chain left to right.
Writes `<ROW>.onnx` under --out.
"""

from __future__ import annotations

import argparse
import copy
import pickle
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

import graphcomp
from graphcomp.passes.prune import prune as prune_pass

sys.path.insert(0, str(Path(__file__).resolve().parent))
import realbench  # noqa: E402 - the benchmark's own views, model and metrics

ORIGINAL = {
    "choose": prune_pass._choose,
    "reconstruct": prune_pass.prune_recon.reconstruct,
    "measure": prune_pass.prune_comp.measure,
}


def _without_data(ctx: Any) -> Any:
    c = copy.copy(ctx)
    c.calibration = None
    return c


def _chooser(mode: str, store: Path, inner: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
    kind, _, rest = mode.partition(":")
    names = rest.split(":")

    def choose(cg, groups, scores, cfg, ctx, result, target):
        removed = inner(cg, groups, scores, cfg, ctx, result, target)  # also sets the notes
        if kind == "save":
            (store / f"{names[0]}.pkl").write_bytes(pickle.dumps(removed))
            return removed
        recorded = pickle.loads((store / f"{names[0]}.pkl").read_bytes())
        if kind == "load":
            return recorded
        if kind == "group":
            other = pickle.loads((store / f"{names[1]}.pkl").read_bytes())
            units = next(g.units for g in groups if g.index == int(names[2]))
            mine = recorded[~np.isin(recorded, units)]
            return np.sort(np.concatenate([mine, other[np.isin(other, units)]]))
        picked = []
        for g in groups:  # counts: as many per group as recorded, own order
            count = int(np.isin(g.units, recorded).sum())
            picked.append(g.units[np.argsort(scores[g.index], kind="stable")[:count]])
        return np.concatenate(picked)

    return choose


def _patch(row: str, extra: list[str], store: Path) -> None:
    prune_pass._choose = ORIGINAL["choose"]
    prune_pass.prune_recon.reconstruct = ORIGINAL["reconstruct"]
    prune_pass.prune_comp.measure = ORIGINAL["measure"]
    if row == "cal-synthetic-refit":
        fn = ORIGINAL["reconstruct"]
        prune_pass.prune_recon.reconstruct = lambda cg, ctx, *a, **k: fn(
            cg, _without_data(ctx), *a, **k
        )
    if row == "cal-synthetic-stats":
        fm = ORIGINAL["measure"]
        prune_pass.prune_comp.measure = lambda cg, ctx, *a, **k: fm(cg, _without_data(ctx), *a, **k)
    for mode in extra:  # later modes wrap earlier ones: "counts:a+save:b" saves the counted
        prune_pass._choose = _chooser(mode, store, prune_pass._choose)


def main() -> None:
    """Run each ROW[@SPEC][+MODE...] and print its scores."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rows", nargs="+")
    parser.add_argument("--split", choices=("evaluation", "tuning"), default="tuning")
    parser.add_argument("--folded", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("prune_swap_out"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    model = realbench.export_effnet_lite0(bool(args.folded))
    tune = realbench.imagenet_feeds("tune")
    calibration = realbench.stack_feeds(realbench.spread(tune, 32))
    feeds = tune if args.split == "tuning" else realbench.imagenet_feeds("eval")
    batch = np.concatenate([f["input"] for f in feeds])

    def logits(path: Path) -> np.ndarray:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        return np.concatenate(
            [sess.run(None, {"input": batch[i : i + 32]})[0] for i in range(0, len(batch), 32)]
        )

    ref = logits(model)
    for item in args.rows:
        head, *extra = item.split("+")
        row, _, spec = head.partition("@")
        spec = spec or "prune(macs=0.9)"
        _patch(row, extra, args.out)
        out = args.out / f"{item.replace(':', '_').replace('@', '_')}.onnx"
        graphcomp.compress(
            str(model),
            spec,
            output=out,
            calibration_data=None if row == "default" else calibration,
            input_shapes={"input": [1, 3, realbench.IMAGENET_SIZE, realbench.IMAGENET_SIZE]},
            verify_output=False,
        )
        hyp = logits(out)
        top1, top5 = realbench.top1_agreement(ref, hyp), realbench.topk_overlap(ref, hyp)
        print(f"{item:60s} top-1 {top1:.4f} top-5 {top5:.3f}", flush=True)


if __name__ == "__main__":
    main()
