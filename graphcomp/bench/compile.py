"""One bench compile in a child process, so its time and peak memory are its own.

`python -m graphcomp.bench.compile job.json` reads a job (model, output, passes or
baseline, calibration data, input shapes, result path), imports everything first,
records the process's max RSS (the interpreter and imports: graphcomp and the passes;
for a baseline also onnxruntime.quantization and its symbolic shape inference, which
pulls in sympy and torch when installed), then compiles:
`graphcomp.api.compress` without verification, or an onnxruntime quantizer baseline.
It writes `{"ok", "seconds", "peak_mb", "base_mb", "note"}` (or `"error"`) as JSON to the
result path. `seconds` is the wall time of the compile call only (load, passes or
quantizer, save); `peak_mb` is `getrusage(RUSAGE_SELF).ru_maxrss` after it, i.e. the
whole child's peak resident memory, `base_mb` the same before the compile started.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import resource
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from graphcomp import api
from graphcomp.bench import baselines
from graphcomp.core.errors import GraphcompError

RSS_UNIT = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
ROOT = Path(__file__).resolve().parents[1]


def max_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB (10^6 bytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * RSS_UNIT / 1e6


def compile_job(job: dict[str, Any]) -> dict[str, Any]:
    """Run one job in this process and measure it; see the module docstring."""
    api.registry()
    if job.get("baseline"):  # quant_pre_process imports these lazily (torch, if installed)
        importlib.import_module("onnxruntime.quantization")
        if importlib.util.find_spec("sympy") is not None:  # else pre-processing skips it
            importlib.import_module("onnxruntime.tools.symbolic_shape_infer")
    base = max_rss_mb()
    start = time.perf_counter()
    try:
        if job.get("baseline"):
            note = baselines.run(
                job["baseline"], Path(job["model"]), Path(job["output"]), job.get("calibration")
            )
        else:
            _, report = api.compress(
                job["model"],
                job["passes"],
                output=job["output"],
                calibration_data=job.get("calibration"),
                input_shapes=job.get("input_shapes") or None,
                verify_output=False,
            )
            note = "; ".join(
                [
                    f"{r.result.name}: {len(r.result.changes)} changed, "
                    f"{len(r.result.skipped)} skipped"
                    for r in report.passes
                ]
                + [f"warning: {w}" for w in report.warnings]
            )
    except GraphcompError as e:
        return {"ok": False, "error": str(e)}
    seconds = time.perf_counter() - start
    return {"ok": True, "seconds": seconds, "peak_mb": max_rss_mb(), "base_mb": base, "note": note}


def run_child(job: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Run `job` in a fresh Python process; its result, or an error with the traceback."""
    job_path = workdir / f"job-{os.getpid()}-{time.monotonic_ns()}.json"
    result_path = job_path.with_suffix(".result.json")
    job_path.write_text(json.dumps({**job, "result": str(result_path)}))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    proc = subprocess.run(
        [sys.executable, "-m", "graphcomp.bench.compile", str(job_path)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if proc.returncode != 0 or not result_path.exists():
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        return {
            "ok": False,
            "error": f"compile process failed (exit {proc.returncode})",
            "traceback": tail,
        }
    return json.loads(result_path.read_text())


def main(argv: list[str]) -> int:
    """Entry point of the child: read the job file, compile, write the result file."""
    job = json.loads(Path(argv[0]).read_text())
    try:
        result = compile_job(job)
    except Exception:  # noqa: BLE001 - a bug: its traceback goes to the parent's report
        result = {"ok": False, "error": "compile crashed", "traceback": traceback.format_exc()}
    Path(job["result"]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
