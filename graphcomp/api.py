"""The Python entry point: `graphcomp.compress(model_or_path, passes="dfq,prune")`.

The CLI is a thin layer over `compress`. It returns the compressed `ModelProto` and
the `Report`, raises `GraphcompError` subclasses for user errors, and raises
`VerificationError` (carrying the report) when a threshold is missed.

`passes` is a spec string, or a list of names, tables (`{"name": "prune", "ratio":
0.2}`, as in config files) and `Pass` objects; `calibration_data` is an .npz path, a
dict of arrays or an iterable of feed dicts. Before any pass runs: the sequence is
checked (nothing but cleanup after dfq/qdq), `input_shapes` names are checked against
the model, and the original must load in onnxruntime (when verifying).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from google.protobuf.message import DecodeError

from graphcomp import pipeline
from graphcomp.core import analysis, lazy_weights, model_io, specs
from graphcomp.core.errors import ConfigError, UnsupportedModelError, VerificationError
from graphcomp.core.pass_base import Pass, PassContext
from graphcomp.measure import inputs as measure_inputs
from graphcomp.measure import speed
from graphcomp.measure.inputs import read_npz
from graphcomp.report import Report
from graphcomp.verify import LOSSLESS_RTOL, Thresholds, verify

VERIFY_BATCH = 8  # verify's default first dim
# Lengths tried, in turn, for the non-batch dynamic dims the user did not fix when the
# model does not run at DEFAULT_DYNAMIC_DIM (an STFT Conv or a reflect Pad needs at least
# a frame of audio samples).
GROWN_DIMS = (256, 1024, 4096, 16384)
MAX_GROWN = 4  # open dims searched (each try is one onnxruntime run of the original)


class VerificationFailedError(VerificationError):
    """VerificationError that carries the compressed model and its report."""

    def __init__(self, message: str, model: onnx.ModelProto, report: Report) -> None:
        super().__init__(message)
        self.model = model
        self.report = report


def registry() -> dict[str, type[Pass]]:
    """The pass registry (the one place core code looks passes up)."""
    from graphcomp.passes import REGISTRY

    return REGISTRY


def resolve_passes(
    passes: str | list[Any] | None, config_file: str | os.PathLike[str] | None
) -> list[Pass]:
    """Pass objects from a spec string, a list, or a config file; the sequence is checked.

    A list may mix `Pass` objects, names (with fields: `"prune(ratio=0.2)"`), tables
    (`{"name": "prune", "ratio": 0.2}`, the config file form) and (name, fields) pairs.
    A pass after one that already quantizes (dfq, qdq) is refused before anything runs.
    """
    if config_file is not None:
        chosen = specs.build_passes(specs.load_spec_file(Path(config_file)), registry())
    elif isinstance(passes, str):
        chosen = specs.build_passes(specs.parse_specs(passes), registry())
    elif passes:
        chosen = []
        for entry in passes:
            if isinstance(entry, Pass):
                chosen.append(entry)
            else:
                chosen += specs.build_passes(specs.list_specs([entry]), registry())
    else:
        raise ConfigError("no passes given; see 'graphcomp passes' for the list")
    specs.check_sequence(chosen)
    return chosen


Calibration = str | os.PathLike[str] | Mapping[str, np.ndarray] | Iterable[Mapping[str, np.ndarray]]


def load_calibration(data: Calibration | None) -> dict[str, np.ndarray] | None:
    """Calibration samples by input name (samples on axis 0; floats as float32).

    `data` is an .npz path, a dict of arrays, or an iterable of feed dicts (batches,
    joined on axis 0). A scalar array (no sample axis) is a ConfigError.
    """
    if data is None:
        return None
    if isinstance(data, (str, os.PathLike)):
        arrays = read_npz(data, "calibration data")
        where = str(data)
    elif isinstance(data, Mapping):
        arrays, where = {str(k): np.asarray(v) for k, v in data.items()}, "calibration data"
    else:
        arrays, where = _join_feeds(data), "calibration data"
    for name, value in arrays.items():
        if value.ndim == 0:
            raise ConfigError(
                f"{where}: array '{name}' is a scalar; calibration samples go on axis 0 "
                "(shape [N, ...])"
            )
    return {
        k: (v.astype(np.float32) if np.issubdtype(v.dtype, np.floating) else v)
        for k, v in arrays.items()
    }


def _join_feeds(feeds: Iterable[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    parts: dict[str, list[np.ndarray]] = {}
    try:
        for feed in feeds:
            if not isinstance(feed, Mapping):
                raise ConfigError(
                    "calibration data must be an .npz path, a dict of arrays or an "
                    f"iterable of feed dicts; got an item of type {type(feed).__name__}"
                )
            for name, value in feed.items():
                parts.setdefault(str(name), []).append(np.asarray(value))
        return {k: np.concatenate(v) if v[0].ndim else np.stack(v) for k, v in parts.items()}
    except TypeError as e:
        raise ConfigError(f"calibration data: not an iterable of feed dicts ({e})") from e
    except ValueError as e:
        raise ConfigError(f"calibration data: the batches do not join on axis 0 ({e})") from e


def compress(
    model: onnx.ModelProto | str | os.PathLike[str],
    passes: str | list[Any] | None = None,
    *,
    config_file: str | os.PathLike[str] | None = None,
    output: str | os.PathLike[str] | None = None,
    calibration_data: Calibration | None = None,
    inputs: str | os.PathLike[str] | None = None,
    input_shapes: dict[str, list[int]] | None = None,
    thresholds: Thresholds | None = None,
    verify_output: bool = True,
    progress: Callable[[str], None] | None = None,
    failed_output: str | os.PathLike[str] | None = None,
) -> tuple[onnx.ModelProto, Report]:
    """Compress `model` with `passes`, verify it, optionally save it; see module doc.

    When verification fails nothing is written to `output`; the result goes to
    `failed_output` when given.

    A model file with external data saved to `output` runs with its large weights on
    disk (graphcomp/core/lazy_weights.py, in a temporary folder beside `output`): the
    returned proto is then the saved one, its weights referenced in `<output>.data`.
    """
    if output is not None and not isinstance(model, onnx.ModelProto):
        _check_output_path(Path(model), Path(output))
    run = functools.partial(
        _compress,
        model,
        passes,
        config_file=config_file,
        output=output,
        calibration_data=calibration_data,
        inputs=inputs,
        input_shapes=input_shapes,
        thresholds=thresholds,
        verify_output=verify_output,
        progress=progress,
        failed_output=failed_output,
    )
    if output is None or isinstance(model, onnx.ModelProto) or not _external(Path(model)):
        return run()
    with lazy_weights.folder(Path(output).parent):
        _, report = run()
    return onnx.load(str(output), load_external_data=False), report


def _external(path: Path) -> bool:
    """True for a model file with external data (False for what load will refuse)."""
    try:
        return path.is_file() and model_io.has_external_data(path)
    except (OSError, DecodeError, ValueError, RuntimeError):
        return False


def _compress(
    model: onnx.ModelProto | str | os.PathLike[str],
    passes: str | list[Any] | None,
    *,
    config_file: str | os.PathLike[str] | None,
    output: str | os.PathLike[str] | None,
    calibration_data: Calibration | None,
    inputs: str | os.PathLike[str] | None,
    input_shapes: dict[str, list[int]] | None,
    thresholds: Thresholds | None,
    verify_output: bool,
    progress: Callable[[str], None] | None,
    failed_output: str | os.PathLike[str] | None,
) -> tuple[onnx.ModelProto, Report]:
    source = str(model) if not isinstance(model, onnx.ModelProto) else "<ModelProto>"
    proto = model if isinstance(model, onnx.ModelProto) else model_io.load(model)
    opset = model_io.check_opset(proto)
    chosen = resolve_passes(passes, config_file)
    calibration = load_calibration(calibration_data)
    given = run_shapes(proto, input_shapes, inputs, calibration)
    shapes = given
    if verify_output or _open_dims(measure_inputs.input_args(proto), given):
        # before any pass: a model onnxruntime cannot load is refused
        shapes = runnable_shapes(_check_runs(proto), given)
    ctx = PassContext(opset=opset, calibration=calibration, input_shapes=shapes)
    result = pipeline.run(proto, chosen, ctx, progress)
    report = Report(
        source,
        str(output) if output else None,
        result.records,
        _summary(proto, ctx),
        _summary(result.model, ctx),
        warnings=specs.order_warnings([p.name for p in chosen])
        + grown_warnings(given, shapes)
        + step_warnings(result.records),
    )
    if verify_output:
        if progress:
            progress("verify")
        limits = _limits(thresholds, result.lossless)
        feeds = Path(inputs) if inputs is not None else None
        report.verification = verify(proto, result.model, limits, feeds, ctx.input_shapes)
        report.latency_ratio = speed.latency_ratio(proto, result.model, ctx.input_shapes)
        slower = speed.warning(report.latency_ratio)
        if slower:
            report.warnings.append(slower)
        if report.verification.failed:
            if failed_output is not None:  # here: a big model's weights live only this long
                model_io.save(result.model, failed_output)
            raise VerificationFailedError(
                "verification failed: " + "; ".join(report.verification.failures),
                result.model,
                report,
            )
    if output is not None:
        keep_external = not isinstance(model, onnx.ModelProto) and model_io.has_external_data(model)
        model_io.save(result.model, output, external=True if keep_external else None)
    return result.model, report


def run_shapes(
    model: onnx.ModelProto,
    given: Mapping[str, list[int]] | None,
    inputs: str | os.PathLike[str] | None,
    calibration: Mapping[str, np.ndarray] | None,
) -> dict[str, list[int]]:
    """The input shapes every pass uses: the user's, else those of `--inputs`.

    Unknown names (or ranks) in `given` are ConfigErrors. Inputs with dynamic dims that
    the user did not fix take the shapes of the `--inputs` arrays, else those of the
    calibration samples (their first dim becomes the verification batch).
    """
    args = measure_inputs.input_args(model)
    shapes = {k: list(v) for k, v in (given or {}).items()}
    measure_inputs.check_shapes(shapes, args)
    feeds = read_npz(inputs, "inputs") if inputs is not None else {}
    for arg in args:
        dynamic = any(not isinstance(d, int) for d in arg.shape)
        if arg.name in shapes or not dynamic:
            continue
        if arg.name in feeds and feeds[arg.name].ndim == len(arg.shape):
            shapes[arg.name] = list(feeds[arg.name].shape)
        elif calibration and arg.name in calibration:
            dims = list(calibration[arg.name].shape)
            if len(dims) == len(arg.shape) and dims:
                first = arg.shape[0]
                dims[0] = first if isinstance(first, int) else VERIFY_BATCH
                shapes[arg.name] = dims
    return shapes


def _open_dims(
    args: Sequence[measure_inputs.InputArg], shapes: Mapping[str, list[int]]
) -> list[tuple[str, int]]:
    """(input, axis) of the dynamic non-batch dims that `shapes` leaves to the default.

    A dim named like some input's first dim (`h: [2, batch, 64]`) is a batch dim too.
    """
    batch = {arg.shape[0] for arg in args if arg.shape and isinstance(arg.shape[0], str)}
    return [
        (arg.name, i)
        for arg in args
        if arg.name not in shapes
        for i, d in enumerate(arg.shape)
        if i > 0 and not (isinstance(d, int) and d >= 0) and d not in batch
    ]


def runnable_shapes(sess: Any, shapes: dict[str, list[int]]) -> dict[str, list[int]]:
    """`shapes`, plus grown dims when the model does not run at the default dims.

    When onnxruntime fails on the default dims, the dynamic non-batch dims the user left
    open take each length of GROWN_DIMS in turn: all of them at once, then each alone
    with the others at the default or at the batch size (an unnamed batch axis, as in a
    [2, batch, 128] state). The first that runs fixes the shapes of those inputs for
    every pass and for verification. A model that runs at the defaults, or at none of
    them, keeps `shapes` (the second fails later with a hint).
    """
    args = sess.get_inputs()
    open_dims = _open_dims(args, shapes)
    if not open_dims or _runs(sess, shapes):
        return shapes
    base = measure_inputs.resolve_dims(args, shapes, VERIFY_BATCH)
    for length in GROWN_DIMS:
        for trial in _grown_trials(open_dims[:MAX_GROWN], length):
            fixed = dict(shapes)
            for (name, axis), value in trial.items():
                fixed[name] = list(fixed.get(name, base[name]))
                fixed[name][axis] = value
            fixed = measure_inputs.resolve_dims(args, fixed, VERIFY_BATCH)
            if _runs(sess, fixed):
                return {**shapes, **{n: v for n, v in fixed.items() if v != base[n]}}
    return shapes


def _grown_trials(dims: list[tuple[str, int]], length: int) -> list[dict[tuple[str, int], int]]:
    """Values for the open `dims` to try at `length`: all grown, then each grown alone."""
    trials = [dict.fromkeys(dims, length)]
    for grown in dims if len(dims) > 1 else []:
        for rest in (measure_inputs.DEFAULT_DYNAMIC_DIM, VERIFY_BATCH):
            trials.append({d: length if d == grown else rest for d in dims})
    return trials


def grown_warnings(given: Mapping[str, list[int]], shapes: Mapping[str, list[int]]) -> list[str]:
    """One warning per input whose shape `runnable_shapes` chose."""
    return [
        f"input {name}: onnxruntime does not run the model at the default dynamic dims; "
        f"{'x'.join(map(str, dims))} was used: give --input-shape {name}:DIMS with the real "
        "length"
        for name, dims in shapes.items()
        if name not in given
    ]


def _runs(sess: Any, shapes: dict[str, list[int]]) -> bool:
    try:
        sess.run(None, measure_inputs.make_inputs(sess, shapes, batch=VERIFY_BATCH))
    except measure_inputs.ORT_ERRORS:
        return False
    return True


def _check_runs(model: onnx.ModelProto) -> Any:
    """An onnxruntime session of `model`, or UnsupportedModelError when it cannot load."""
    try:
        return measure_inputs.session(model)
    except measure_inputs.ORT_ERRORS as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise UnsupportedModelError(
            f"onnxruntime cannot load the original model ({first}); graphcomp verifies "
            "every result in onnxruntime, so it needs a model onnxruntime runs"
        ) from e


def step_warnings(records: list[pipeline.PassRecord]) -> list[str]:
    """Every warning a step left in its notes (`warning`, `*_warning`), named by its step."""
    return [
        f"{record.result.name}: {value}"
        for record in records
        for key, value in record.result.notes.items()
        if (key == "warning" or key.endswith("_warning")) and value
    ]


def _limits(thresholds: Thresholds | None, lossless: bool) -> Thresholds:
    limits = thresholds or Thresholds()
    if lossless:
        rtol = limits.max_rel_err
        limits = dataclasses.replace(
            limits, max_rel_err=LOSSLESS_RTOL if rtol is None else min(rtol, LOSSLESS_RTOL)
        )
    return limits


def _summary(model: onnx.ModelProto, ctx: PassContext) -> dict[str, Any]:
    facts = analysis.analyze(model, ctx.input_shapes)
    return {
        "params": facts.params,
        "macs": facts.macs,
        "bytes": facts.bytes,
        "op_counts": facts.op_counts,
    }


def _check_output_path(source: Path, output: Path) -> None:
    if output.resolve() == source.resolve():
        raise ConfigError(f"{output}: the output must not overwrite the input model")
    if output.exists() and output.is_dir():
        raise ConfigError(f"{output}: is a folder; give a file name for the output")
    if not output.parent.is_dir():
        raise ConfigError(f"{output.parent}: output folder does not exist")
