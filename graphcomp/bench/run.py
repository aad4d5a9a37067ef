"""`graphcomp bench`: the original model and compressed versions, measured in one run.

Rows (DESIGN.md section 7): the original (always first; `--passes none` or `""` name
it), one per pass list (`graphcomp.api.compress`), one per onnxruntime quantizer
baseline (`graphcomp.bench.baselines`). Each compile runs in its own child process
(`graphcomp.bench.compile`), which gives its wall time and peak RSS. Then, in this
process, for every row: params and MACs per sample (`graphcomp.core.analysis`), bytes on
disk (file plus external data), weight bytes (initializers by dtype); on the same
inputs (the eval set, else `AGREEMENT_SAMPLES` seeded N(0, 1) samples) top-1 against
the labels, top-1 agreement with the original and every output's fidelity statistics
and verdict (`graphcomp.verify.compare_arrays` and `verdict`; lossless pass lists held
to 1e-4 relative, others to the user's thresholds); and latency
(`graphcomp.bench.timing`: same session options and inputs for every row). A row
whose compile fails, or that onnxruntime cannot run, keeps its error; the others go on.
"""

from __future__ import annotations

import dataclasses
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from graphcomp import api, verify
from graphcomp.bench import baselines
from graphcomp.bench import timing as bench_measure
from graphcomp.bench.compile import run_child
from graphcomp.bench.timing import Latency
from graphcomp.core import analysis, model_io
from graphcomp.core.errors import ConfigError, UnsupportedModelError
from graphcomp.measure import inputs

ORIGINAL = "original"
NONE_SPECS = ("", "none")
AGREEMENT_SAMPLES = 256  # seeded samples for top-1 agreement when no eval set is given
Progress = Callable[[str], None]


@dataclass(frozen=True)
class BenchOptions:
    """What to compile and how to measure; ConfigError on bad values."""

    configs: tuple[str, ...] = ()  # pass specs; "" or "none" is the original
    baselines: tuple[str, ...] = ()  # names in graphcomp.bench.baselines.BASELINES
    calibration_data: Path | None = None
    eval_data: Path | None = None
    batches: tuple[int, ...] = (1,)
    runs: int = 20
    warmup: int = 5
    input_shapes: dict[str, list[int]] = field(default_factory=dict)
    thresholds: verify.Thresholds = field(default_factory=verify.Thresholds)
    out_dir: Path | None = None  # keep the compiled models here
    pass_calibration: bool = True  # give calibration_data to the pass lists too

    def __post_init__(self) -> None:
        if self.runs < 1 or self.warmup < 0:
            raise ConfigError(f"need runs >= 1 and warmup >= 0, got {self.runs}, {self.warmup}")
        if not self.batches or any(b < 1 for b in self.batches):
            raise ConfigError(f"batch sizes must be positive, got {list(self.batches)}")
        baselines.check(list(self.baselines), self.calibration_data)
        for label, path in (
            ("--eval", self.eval_data),
            ("--calibration-data", self.calibration_data),
        ):
            if path is not None and not Path(path).is_file():
                raise ConfigError(f"{label} {path}: no such file")
        if self.out_dir is not None and not Path(self.out_dir).is_dir():
            raise ConfigError(f"{self.out_dir}: output folder does not exist")
        if not [c for c in self.configs if c.strip().lower() not in NONE_SPECS] + list(
            self.baselines
        ):
            raise ConfigError("nothing to compare: give --passes SPEC or --baseline NAME")


@dataclass
class Row:
    """One configuration's measurements (None where not measured)."""

    config: str
    kind: str  # "original", "passes" or "baseline"
    note: str = ""
    path: Path | None = None
    params: int | None = None
    macs: int | None = None
    disk_bytes: int | None = None
    weight_bytes: int | None = None
    latency: list[Latency] = field(default_factory=list)
    compile_s: float | None = None
    compile_peak_mb: float | None = None
    compile_base_mb: float | None = None
    top1: float | None = None
    agreement: float | None = None
    verification: dict[str, Any] | None = None
    error: str | None = None
    traceback: str | None = None

    def to_dict(self, kept: bool) -> dict[str, Any]:
        """JSON-ready form; `path` only when the compiled model was kept."""
        data = dataclasses.asdict(self)
        data["latency"] = [t.to_dict() for t in self.latency]
        data["path"] = str(self.path) if self.path and (kept or self.kind == ORIGINAL) else None
        return data


@dataclass
class BenchResult:
    """All rows, plus the machine and settings needed to read the numbers."""

    model: str
    machine: dict[str, Any]
    settings: dict[str, Any]
    rows: list[Row]

    @property
    def failed(self) -> bool:
        """True when a row did not compile or missed a verification threshold."""
        return any(
            r.error or (r.verification and r.verification["verdict"] == "failed") for r in self.rows
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        kept = self.settings["out_dir"] is not None
        return {
            "model": self.model,
            "machine": self.machine,
            "settings": self.settings,
            "rows": [r.to_dict(kept) for r in self.rows],
        }


def parse_batches(text: str) -> tuple[int, ...]:
    """`"1,32"` -> (1, 32); ConfigError on anything else."""
    try:
        batches = tuple(int(b) for b in text.split(","))
    except ValueError:
        raise ConfigError(f"bad --batch '{text}': expected sizes like 1,32") from None
    if any(b < 1 for b in batches):
        raise ConfigError(f"bad --batch '{text}': sizes must be positive")
    return batches


def bench(
    model: str | Path, options: BenchOptions, progress: Progress | None = None
) -> BenchResult:
    """Compile every configuration of `options` and measure all rows; see module doc."""
    say = progress or (lambda _msg: None)
    load_start = bench_measure.load_average()
    source = Path(model).resolve()
    original = model_io.load(source)
    _check_eval(original, options.eval_data)
    specs = [
        (s, all(p.lossless for p in api.resolve_passes(s, None)))
        for s in dict.fromkeys(c.strip() for c in options.configs)
        if s.lower() not in NONE_SPECS
    ]
    rows = [Row(ORIGINAL, ORIGINAL, note="the input model", path=source)]
    try:  # dims the model cannot run at the default grow, as in `graphcomp run`
        grown = api.runnable_shapes(inputs.session(source), dict(options.input_shapes))
        options = dataclasses.replace(options, input_shapes=grown)
    except inputs.ORT_ERRORS:
        pass  # _runs says why
    if not _runs(rows[0], options.input_shapes):
        raise UnsupportedModelError(f"{model}: {rows[0].error}")
    with tempfile.TemporaryDirectory(prefix="graphcomp-bench-") as tmp:
        folder = Path(options.out_dir).resolve() if options.out_dir else Path(tmp)
        jobs = [(s, {"passes": s}) for s, _ in specs] + [
            (b, {"baseline": b}) for b in options.baselines
        ]
        for i, (label, job) in enumerate(jobs, 1):
            say(f"compile {label}")
            rows.append(_compile(source, folder, Path(tmp), i, label, job, options))
        measured = [r for r in rows if r.path is not None and _runs(r, options.input_shapes)]
        say("sizes, accuracy, verification")
        for row in measured:
            _sizes(row, options.input_shapes)
        fidelity_inputs = _fidelity(measured, options, dict(specs))
        _latency(measured, options, say)
    facts = {**bench_measure.machine(), "load_avg_1m": [load_start, bench_measure.load_average()]}
    return BenchResult(
        str(model), facts, {**_settings(options), "fidelity_inputs": fidelity_inputs}, rows
    )


def _check_eval(model: onnx.ModelProto, eval_data: Path | None) -> None:
    if eval_data is None:
        return
    inits = {i.name for i in model.graph.initializer}
    if len([v for v in model.graph.input if v.name not in inits]) != 1:
        raise ConfigError("--eval needs a model with exactly one input")
    try:
        with np.load(eval_data) as data:
            missing = [k for k in ("input", "label") if k not in data.files]
    except (OSError, ValueError) as e:
        raise ConfigError(f"{eval_data}: cannot read the eval set ({e})") from e
    if missing:
        raise ConfigError(
            f"{eval_data}: the eval set needs arrays 'input' and 'label' "
            f"(missing {', '.join(missing)})"
        )


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")[:60] or "x"


def _compile(
    source: Path,
    folder: Path,
    workdir: Path,
    index: int,
    label: str,
    job: dict[str, Any],
    options: BenchOptions,
) -> Row:
    kind = "baseline" if "baseline" in job else "passes"
    output = folder / f"{source.stem}.{index:02d}-{_slug(label)}.onnx"
    given = options.calibration_data if kind == "baseline" or options.pass_calibration else None
    calibration = str(Path(given).resolve()) if given else None
    result = run_child(
        {
            **job,
            "model": str(source),
            "output": str(output),
            "calibration": calibration,
            "input_shapes": options.input_shapes,
        },
        workdir,
    )
    if not result["ok"]:
        return Row(label, kind, error=result["error"], traceback=result.get("traceback"))
    data = f"calibration data {given}" if given else "no calibration data"
    note = result["note"] if kind == "baseline" else f"{data}; {result['note']}"
    return Row(
        label,
        kind,
        note=note,
        path=output,
        compile_s=result["seconds"],
        compile_peak_mb=result["peak_mb"],
        compile_base_mb=result["base_mb"],
    )


def _runs(row: Row, input_shapes: dict[str, list[int]]) -> bool:
    """True when onnxruntime loads and runs the row's model; else record why, once."""
    try:
        sess = inputs.session(row.path or Path())
        feeds, _ = bench_measure.batch_feeds(sess, 1, input_shapes, force=True)
        sess.run(None, feeds or {})
    except Exception as e:  # noqa: BLE001 - any onnxruntime failure becomes the row's error
        row.error = f"onnxruntime cannot run it: {str(e).strip().splitlines()[0][:300]}"
        return False
    return True


def _sizes(row: Row, input_shapes: dict[str, list[int]]) -> None:
    path = row.path or Path()
    proto = model_io.load(path)
    facts = analysis.analyze(proto, input_shapes)
    row.params, row.macs = facts.params, facts.macs
    row.disk_bytes = bench_measure.disk_bytes(path)
    row.weight_bytes = bench_measure.weight_bytes(proto)


def _fidelity(rows: list[Row], options: BenchOptions, lossless: dict[str, bool]) -> str:
    """Top-1, agreement and verification of every row on the same inputs; their source."""
    reference = inputs.session(rows[0].path or Path())
    feeds, labels = bench_measure.sample_inputs(
        reference, options.eval_data, AGREEMENT_SAMPLES, options.input_shapes
    )
    base = bench_measure.outputs(rows[0].path or Path(), feeds)
    first = next(iter(base))
    base_pred = bench_measure.top1(base[first])
    for row in rows:
        outs = base if row is rows[0] else bench_measure.outputs(row.path or Path(), feeds)
        pred = bench_measure.top1(outs[first]) if first in outs else None
        if pred is not None and labels is not None:
            row.top1 = float(np.mean(pred == labels[: len(pred)]))
        if pred is not None and base_pred is not None:
            row.agreement = float(np.mean(pred == base_pred))
        if row is not rows[0]:
            row.verification = _verdict(base, outs, _limits(options, lossless.get(row.config)))
    count = min(len(a) for a in feeds.values())
    return (
        f"{count} samples of {options.eval_data}"
        if options.eval_data
        else f"{count} seeded N(0,1) samples"
    )


def _limits(options: BenchOptions, lossless: bool | None) -> verify.Thresholds:
    limits = options.thresholds
    if lossless:
        rtol = limits.max_rel_err
        limits = dataclasses.replace(
            limits,
            max_rel_err=verify.LOSSLESS_RTOL if rtol is None else min(rtol, verify.LOSSLESS_RTOL),
        )
    return limits


def _verdict(
    base: dict[str, np.ndarray], outs: dict[str, np.ndarray], limits: verify.Thresholds
) -> dict[str, Any]:
    stats = [verify.compare_arrays(n, ref, outs[n]) for n, ref in base.items() if n in outs]
    failures = (
        [f"outputs missing from the result: {sorted(set(base) - set(outs))}"]
        if set(base) - set(outs)
        else verify.verdict(stats, limits)
    )
    checked = any(v is not None for v in dataclasses.astuple(limits))
    return {
        "verdict": "failed" if failures else ("passed" if checked else "unchecked"),
        "thresholds": dataclasses.asdict(limits),
        "failures": failures,
        "rel_err": max((o.rel_err for o in stats), default=None),
        "cosine": min((o.cosine for o in stats), default=None),
        "sqnr_db": min((o.sqnr_db for o in stats), default=None),
    }


def _latency(rows: list[Row], options: BenchOptions, say: Progress) -> None:
    paths = {str(i): r.path or Path() for i, r in enumerate(rows)}
    for batch in options.batches:
        for threads in (1, 0):
            say(f"latency batch {batch}, {threads or 'default'} thread(s)")
            timings = bench_measure.latency(
                paths, batch, threads, options.runs, options.warmup, options.input_shapes
            )
            for i, row in enumerate(rows):
                row.latency.append(timings[str(i)])


def _settings(options: BenchOptions) -> dict[str, Any]:
    data = dataclasses.asdict(options)
    data = {k: (str(v) if isinstance(v, Path) else v) for k, v in data.items()}
    data.update(
        batches=list(options.batches),
        configs=list(options.configs),
        baselines=list(options.baselines),
        rounds=min(bench_measure.ROUNDS, options.runs),
        compile_measure="child process per compile: wall time of the compile "
        "call; peak = ru_maxrss of the child (base = after imports)",
    )
    return data
