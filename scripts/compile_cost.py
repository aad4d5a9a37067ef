"""Wall time and peak RSS of `graphcomp run` against samples and input size (issue 13).

    python scripts/compile_cost.py MODEL --input NAME --sizes 224,448 --samples 16,64,256

For each pass (dfq, qdq, prune, svd), each input size (a square image side; the input
is NAME:1x3xSxS) and each sample count, one `graphcomp run --no-verify` runs in a fresh
child process; its wall time and peak RSS (os.wait4's ru_maxrss) are printed as a
Markdown table. Sample counts go to each pass's `samples` field. Above 112x112 the
synthetic sample count is scaled down by the measurement layer
(graphcomp.measure.inputs.plan_synthetic), so the samples rows are run at the first size.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PASSES = {"dfq": "dfq", "qdq": "qdq", "prune": "prune(macs=0.7)", "svd": "svd(macs=0.8)"}


def run_once(model: str, spec: str, shape: str, out: Path) -> tuple[float, float, int]:
    """(wall seconds, peak RSS in MB, exit code) of one compile in a child process."""
    cmd = [
        sys.executable,
        "-m",
        "graphcomp",
        "run",
        model,
        "-p",
        spec,
        "-o",
        str(out),
        "--input-shape",
        shape,
        "--no-verify",
        "-q",
    ]
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_maxrss / 1024.0, proc.returncode


def with_samples(spec: str, samples: int) -> str:
    """`spec` with `samples=N` added to its fields."""
    if spec.endswith(")"):
        return f"{spec[:-1]},samples={samples})"
    return f"{spec}(samples={samples})"


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--input", required=True, help="the image input's name")
    parser.add_argument("--sizes", default="224,448")
    parser.add_argument("--samples", default="16,64,256")
    parser.add_argument("--passes", default=",".join(PASSES))
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    counts = [int(s) for s in args.samples.split(",")]
    print("| pass | input | samples | wall s | peak RSS MB | exit |")
    print("|---|---|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.passes.split(","):
            spec = PASSES[name]
            runs = [(sizes[0], n) for n in counts] + [(s, 64) for s in sizes[1:]]
            for size, samples in runs:
                shape = f"{args.input}:1x3x{size}x{size}"
                wall, rss, code = run_once(
                    args.model, with_samples(spec, samples), shape, Path(tmp) / "out.onnx"
                )
                print(
                    f"| {name} | {size}x{size} | {samples} | {wall:.1f} | {rss:.0f} | {code} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
