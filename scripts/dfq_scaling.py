"""How `dfq` compile time grows with the model: scaled resnet_s, BN kept and folded.

Builds variants of the zoo's ResNet-style net (`models/nets.py`, ResNetS) with random
weights (timing only, nothing is trained) and non-trivial BatchNorm statistics (random
gamma and beta, running mean/var from forward passes in train mode on random inputs):

- width series (`--widths`): every stage width times W, so params and MACs both grow
  about W^2 (the main series; the acceptance question "linear in params?");
- depth series (`--depths`): B basic blocks per stage instead of 2 at width 1, so
  params, MACs and the number of nodes all grow about linearly in B;
- resolution (`--resolution R`): the width-1 net at an R x R input: the same params,
  (R/32)^2 the MACs, which tells a cost in params from a cost in MACs.

Each variant is exported twice like the zoo (`models/export.py`): BN kept (dynamo
exporter, opset 18) and BN folded (legacy exporter, opset 17). Each compile runs
`graphcomp.api.compress(model, PASSES)` in a fresh child process, exactly as
`graphcomp bench` times its rows (`graphcomp.bench.compile.run_child`: wall time of
load + passes + save, imports excluded), one compile at a time, in `--repeats` rounds
that each compile every file once (so load from other processes hits all rows alike);
the median per file is reported. Prints the Markdown tables of docs/dfq_scaling.md
(params and MACs per sample as `graphcomp inspect` counts them), per series and twin
the least-squares fit seconds = a + b * params with its R^2, and where the time of the
largest variant of each series goes (cProfile of an in-process compile, best of 3;
`--no-profile`: skip).

Needs torch (`pip install graphcomp[models]`); torch is used only here and in models/.
Run from the repo root (about 4 minutes on 2 cores with the defaults):

    python scripts/dfq_scaling.py [--widths 1,1.5,2,3] [--depths 2,4,8,16]
        [--resolution 64] [--repeats 5] [--passes dfq] [--out-dir DIR] [--zoo]
        [--no-profile]

`--out-dir` keeps the exported models (default: a temporary folder); `--zoo` adds rows
for the committed models/resnet_s{_bn}.onnx (trained weights) as a reference.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import logging
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "models"))

import export  # noqa: E402
import glyphs  # noqa: E402
import nets  # noqa: E402
import onnx  # noqa: E402

from graphcomp import api
from graphcomp.bench.compile import run_child  # noqa: E402
from graphcomp.core import analysis  # noqa: E402

FOLDED_OPSET = 17  # the zoo's resnet_s.onnx (models/build.py)
NUM_CLASSES = len(glyphs.CLASSES)  # as the zoo
BN_BATCHES, BN_BATCH = 8, 32  # train-mode forward passes that set the BN running stats
# (label, file name ending, function name) of the costs the profile table splits out
PROFILED = (
    ("onnxruntime inference", "onnxruntime_inference_collection.py", "run"),
    ("onnxruntime session setup", "verify.py", "session"),
    ("1/f noise inputs", "observe.py", "_field"),
    ("fresh_name", "graph_utils.py", "fresh_name"),
)


@dataclass
class Variant:
    """One ONNX file and its compile timings."""

    label: str
    twin: str  # "BN kept" or "BN folded"
    shape: tuple[float, int, int] | None  # (width, blocks, resolution); None: zoo file
    path: Path
    params: int = 0
    macs: int = 0
    seconds: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        """Median compile seconds."""
        return statistics.median(self.seconds)


class ScaledResNet(nets.ResNetS):
    """ResNetS with stage widths times `width` and `blocks` basic blocks per stage.

    width 1, blocks 2 is exactly the zoo's resnet_s.
    """

    def __init__(self, num_classes: int, width: float, blocks: int) -> None:
        torch.nn.Module.__init__(self)
        widths = [max(1, round(w * width)) for w in nets.ResNetS.WIDTHS]
        self.stem = nets.conv_bn(1, widths[0], 3, 2)
        layers: list[torch.nn.Module] = []
        c_in = widths[0]
        for i, w in enumerate(widths):
            layers.append(nets.BasicBlock(c_in, w, 1 if i == 0 else 2))
            layers += [nets.BasicBlock(w, w, 1) for _ in range(blocks - 1)]
            c_in = w
        self.blocks = torch.nn.Sequential(*layers)
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(c_in, num_classes)


def scaled_resnet(width: float, blocks: int, seed: int) -> torch.nn.Module:
    """A ScaledResNet with random weights and random BN statistics, in eval mode."""
    torch.manual_seed(seed)
    model = ScaledResNet(NUM_CLASSES, width, blocks)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(0.5 + torch.rand(m.num_features, generator=gen))
                m.bias.copy_(0.2 * torch.randn(m.num_features, generator=gen))
                m.momentum = None  # cumulative average over the passes below
        model.train()
        for _ in range(BN_BATCHES):
            model(torch.randn(BN_BATCH, 1, 32, 32, generator=gen))
    return model.eval()


def export_twins(
    model: torch.nn.Module, folder: Path, name: str, resolution: int
) -> list[tuple[str, Path]]:
    """BN-kept (dynamo, opset 18) and BN-folded (legacy) files, as models/export.py does."""
    export._INPUT_SHAPE = (1, 1, resolution, resolution)  # the exporters' sample input
    kept, folded = folder / f"{name}_bn.onnx", folder / f"{name}.onnx"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        export.export_dynamo(model, kept)
        export.export_legacy(model, folded, FOLDED_OPSET)
    for path, want_bn in ((kept, True), (folded, False)):
        nodes = onnx.load(str(path)).graph.node
        if any(n.op_type == "BatchNormalization" for n in nodes) != want_bn:
            state = "missing" if want_bn else "left"
            raise RuntimeError(f"{path.name}: BatchNormalization {state}")
    return [("BN kept", kept), ("BN folded", folded)]


def compile_once(variant: Variant, passes: str, workdir: Path) -> None:
    """One child-process compile of `variant`, timed as `graphcomp bench` times it."""
    out = workdir / f"{variant.path.stem}.compiled.onnx"
    result = run_child(
        {
            "passes": passes,
            "model": str(variant.path),
            "output": str(out),
            "calibration": None,
            "input_shapes": {},
        },
        workdir,
    )
    if not result["ok"]:
        raise RuntimeError(f"{variant.path.name}: {result['error']}\n{result.get('traceback', '')}")
    variant.seconds.append(float(result["seconds"]))
    out.unlink(missing_ok=True)


def profile(variant: Variant, passes: str, workdir: Path) -> dict[str, float]:
    """Profile one in-process compile: total and the PROFILED costs, in seconds."""
    out = workdir / f"{variant.path.stem}.profiled.onnx"
    prof = cProfile.Profile()
    prof.runcall(api.compress, str(variant.path), passes, output=str(out), verify_output=False)
    raw = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    costs = {"total": max(ct for _, _, _, ct, _ in raw.values())}
    for label, file, func in PROFILED:
        hits = [
            (nc, ct)
            for (f, _, fn), (_, nc, _, ct, _) in raw.items()
            if fn == func and f.endswith(file)
        ]
        costs[label] = sum(ct for _, ct in hits)
        costs[f"{label} calls"] = sum(nc for nc, _ in hits)
    out.unlink(missing_ok=True)
    return costs


def profile_table(profiles: list[tuple[Variant, dict[str, float]]], passes: str) -> str:
    """Where one compile's time goes (cProfile, so Python-heavy parts look slower)."""
    names = [label for label, _, _ in PROFILED]
    lines = [
        f"| profiled `{passes}` compile (cProfile) | BN | total s | "
        + " | ".join(names)
        + " | rest |",
        "|:---|:---|---:|" + "---:|" * (len(names) + 1),
    ]
    for v, costs in profiles:
        rest = costs["total"] - sum(costs[n] for n in names)
        cells = [
            f"{costs[n]:.2f} ({100 * costs[n] / costs['total']:.0f}%, "
            f"{costs[f'{n} calls']:.0f} calls)"
            for n in names
        ]
        lines.append(
            f"| {v.label} | {v.twin.split()[1]} | {costs['total']:.2f} | "
            + " | ".join(cells)
            + f" | {rest:.2f} ({100 * rest / costs['total']:.0f}%) |"
        )
    return "\n".join(lines)


def fit(xs: list[float], ys: list[float]) -> tuple[float, float, float]:
    """Least squares y = a + b x; returns (a, b, R^2)."""
    x, y = np.asarray(xs, float), np.asarray(ys, float)
    b, a = np.polyfit(x, y, 1)
    resid = y - (a + b * x)
    total = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - float(np.sum(resid**2)) / total if total > 0 else 1.0
    return float(a), float(b), r2


def series(
    rows: list[Variant], twin: str, base: tuple[float, int, int]
) -> dict[str, list[Variant]]:
    """The width and depth series of one twin (both contain the base variant), by params."""
    mine = [v for v in rows if v.twin == twin and v.shape is not None]
    width = [v for v in mine if v.shape is not None and v.shape[1:] == base[1:]]
    depth = [
        v for v in mine if v.shape is not None and (v.shape[0], v.shape[2]) == (base[0], base[2])
    ]
    return {
        "width": sorted(width, key=lambda v: v.params),
        "depth": sorted(depth, key=lambda v: v.params),
    }


def table(rows: list[Variant], passes: str, repeats: int, base: tuple[float, int, int]) -> str:
    """The Markdown table, then per series and twin the linear fit of seconds on params."""
    lines = [
        f"| variant | BN | params | MACs | `{passes}` compile s: median of {repeats} "
        "| min | max | median s per M params | min s per M params |",
        "|:---|:---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for v in rows:
        mp = v.params / 1e6
        lines.append(
            f"| {v.label} | {v.twin.split()[1]} | {v.params:,} | {v.macs:,} | "
            f"{v.median:.2f} | {min(v.seconds):.2f} | {max(v.seconds):.2f} | "
            f"{v.median / mp:.2f} | {min(v.seconds) / mp:.2f} |"
        )
    lines.append("")
    for twin in ("BN kept", "BN folded"):
        for name, members in series(rows, twin, base).items():
            if len(members) < 3:
                continue
            mparams = [v.params / 1e6 for v in members]
            a, b, r2 = fit(mparams, [v.median for v in members])
            a_min, b_min, r2_min = fit(mparams, [min(v.seconds) for v in members])
            first, last = members[0], members[-1]
            lines.append(
                f"- {name} series, {twin} ({len(members)} sizes): median seconds = {a:.3f} + "
                f"{b:.3f} x (M params), R^2 = {r2:.4f}; min seconds = {a_min:.3f} + "
                f"{b_min:.3f} x (M params), R^2 = {r2_min:.4f}; {first.label} -> {last.label}: "
                f"params x{last.params / first.params:.2f}, MACs x{last.macs / first.macs:.2f}, "
                f"median time x{last.median / first.median:.2f}, "
                f"min time x{min(last.seconds) / min(first.seconds):.2f}."
            )
    return "\n".join(lines)


def label(width: float, blocks: int, resolution: int) -> str:
    """Row name, e.g. `resnet_s x1.5` or `resnet_s x1, 8 blocks/stage`."""
    extra = ([f"{blocks} blocks/stage"] if blocks != 2 else []) + (
        [f"{resolution}x{resolution} input"] if resolution != 32 else []
    )
    return ", ".join([f"resnet_s x{width:g}", *extra])


def code_version() -> str:
    """The last commit that touched graphcomp/ or passes/, '-dirty' with uncommitted edits."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        dirty = git("status", "--porcelain", "--", "graphcomp", "passes")
        last = git("log", "-1", "--format=%h", "--", "graphcomp", "passes")
        return last + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> None:
    """Build, export, time and print; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", default="1,1.5,2,3", help="width multipliers")
    parser.add_argument(
        "--depths", default="2,4,8,16", help="basic blocks per stage at the first width ('' : none)"
    )
    parser.add_argument(
        "--resolution", type=int, default=64, help="also the first width at this input size (0: no)"
    )
    parser.add_argument("--repeats", type=int, default=5, help="compiles per file (median)")
    parser.add_argument("--passes", default="dfq", help="pass list to time")
    parser.add_argument("--out-dir", type=Path, help="keep the models here")
    parser.add_argument("--zoo", action="store_true", help="add models/resnet_s{_bn}.onnx")
    parser.add_argument(
        "--profile",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="cProfile the largest variant of each series (best of 3)",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.repeats < 3:
        parser.error("--repeats must be at least 3")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    for noisy in ("onnx_ir", "onnxscript", "torch"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    torch.set_num_threads(1)
    widths = [float(w) for w in args.widths.split(",")]
    base = (widths[0], 2, 32)
    plan = [(w, 2, 32) for w in widths]
    plan += [(widths[0], int(d), 32) for d in args.depths.split(",") if d and int(d) != 2]
    plan += [(widths[0], 2, args.resolution)] if args.resolution else []
    with tempfile.TemporaryDirectory(prefix="dfq-scaling-") as tmp:
        folder = Path(args.out_dir) if args.out_dir else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        rows: list[Variant] = []
        if args.zoo:
            for twin, name in (("BN kept", "resnet_s_bn"), ("BN folded", "resnet_s")):
                rows.append(
                    Variant("zoo resnet_s (trained)", twin, None, ROOT / "models" / f"{name}.onnx")
                )
        for width, blocks, res in dict.fromkeys(plan):
            model = scaled_resnet(width, blocks, args.seed)
            name = f"resnet_s_w{width:g}_b{blocks}_r{res}"
            rows += [
                Variant(label(width, blocks, res), twin, (width, blocks, res), path)
                for twin, path in export_twins(model, folder, name, res)
            ]
        for variant in rows:
            facts = analysis.analyze(onnx.load(str(variant.path)))
            variant.params, variant.macs = facts.params, facts.macs
        load, versions = [os.getloadavg()[0]], {code_version()}
        for i in range(args.repeats):  # one compile at a time; rounds interleave the files
            for variant in rows:
                compile_once(variant, args.passes, Path(tmp))
            logging.info("round %d/%d done", i + 1, args.repeats)
        load.append(os.getloadavg()[0])
        versions.add(code_version())
        profiles = []
        if args.profile:
            profile(rows[-1], args.passes, Path(tmp))  # warm up: lazy imports
            for twin in ("BN kept", "BN folded"):
                for members in series(rows, twin, base).values():
                    if len(members) > 1:  # the least disturbed of 3 profiled runs
                        runs = [profile(members[-1], args.passes, Path(tmp)) for _ in range(3)]
                        profiles.append((members[-1], min(runs, key=lambda c: c["total"])))
    rows.sort(
        key=lambda v: (
            v.twin != "BN kept",
            v.shape is not None,
            (v.shape[2] != 32, v.shape[1]) if v.shape else (),
            v.params,
        )
    )
    print(
        f"Random-initialised weights (timing only), random BN statistics; compile = "
        f"`graphcomp.api.compress(model, '{args.passes}')` in a fresh child process as "
        f"`graphcomp bench` times it; {os.cpu_count()} CPUs, 1-minute load average "
        f"{load[0]:.1f} to {load[1]:.1f}; graphcomp {', '.join(sorted(versions))}"
        f"{' (the code changed during the run)' if len(versions) > 1 else ''}; "
        f"torch {torch.__version__}.\n"
    )
    print(table(rows, args.passes, args.repeats, base))
    if profiles:
        print()
        print(profile_table(profiles, args.passes))


if __name__ == "__main__":
    main()
