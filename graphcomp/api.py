"""The Python entry point: `graphcomp.compress(model_or_path, passes="dfq,prune")`.

The CLI is a thin layer over `compress`. It returns the compressed `ModelProto` and
the `Report`, raises `GraphcompError` subclasses for user errors, and raises
`VerificationError` (carrying the report) when a threshold is missed.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from graphcomp import pipeline
from graphcomp.core import analysis, model_io, specs
from graphcomp.core.errors import ConfigError, VerificationError
from graphcomp.core.pass_base import Pass, PassContext
from graphcomp.report import Report
from graphcomp.verify import LOSSLESS_RTOL, Thresholds, verify


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
    """Pass objects from a spec string, a list of names/Pass objects, or a config file."""
    if config_file is not None:
        parsed = specs.load_spec_file(Path(config_file))
    elif isinstance(passes, str):
        parsed = specs.parse_specs(passes)
    elif passes:
        ready = [p for p in passes if isinstance(p, Pass)]
        if len(ready) == len(passes):
            return list(passes)
        parsed = [(p, {}) if isinstance(p, str) else p for p in passes]
    else:
        raise ConfigError("no passes given; see 'graphcomp passes' for the list")
    return specs.build_passes(parsed, registry())


def load_calibration(path: str | os.PathLike[str] | None) -> dict[str, np.ndarray] | None:
    """Arrays of a calibration .npz, by name (cast to float32 where floating)."""
    if path is None:
        return None
    try:
        with np.load(path) as data:
            return {
                k: (v.astype(np.float32) if np.issubdtype(v.dtype, np.floating) else v)
                for k, v in ((k, data[k]) for k in data.files)
            }
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: cannot read calibration data ({e})") from e


def compress(
    model: onnx.ModelProto | str | os.PathLike[str],
    passes: str | list[Any] | None = None,
    *,
    config_file: str | os.PathLike[str] | None = None,
    output: str | os.PathLike[str] | None = None,
    calibration_data: str | os.PathLike[str] | None = None,
    inputs: str | os.PathLike[str] | None = None,
    input_shapes: dict[str, list[int]] | None = None,
    thresholds: Thresholds | None = None,
    verify_output: bool = True,
    progress: Callable[[str], None] | None = None,
) -> tuple[onnx.ModelProto, Report]:
    """Compress `model` with `passes`, verify it, optionally save it; see module doc."""
    source = str(model) if not isinstance(model, onnx.ModelProto) else "<ModelProto>"
    proto = model if isinstance(model, onnx.ModelProto) else model_io.load(model)
    if output is not None and not isinstance(model, onnx.ModelProto):
        _check_output_path(Path(model), Path(output))
    opset = model_io.check_opset(proto)
    chosen = resolve_passes(passes, config_file)
    ctx = PassContext(
        opset=opset,
        calibration=load_calibration(calibration_data),
        input_shapes=dict(input_shapes or {}),
    )
    result = pipeline.run(proto, chosen, ctx, progress)
    report = Report(
        source,
        str(output) if output else None,
        result.records,
        _summary(proto, ctx),
        _summary(result.model, ctx),
        warnings=specs.order_warnings([p.name for p in chosen]),
    )
    if verify_output:
        if progress:
            progress("verify")
        limits = _limits(thresholds, result.lossless)
        feeds = Path(inputs) if inputs is not None else None
        report.verification = verify(proto, result.model, limits, feeds, ctx.input_shapes)
        if report.verification.failed:
            raise VerificationFailedError(
                "verification failed: " + "; ".join(report.verification.failures),
                result.model,
                report,
            )
    if output is not None:
        keep_external = not isinstance(model, onnx.ModelProto) and model_io.has_external_data(model)
        model_io.save(result.model, output, external=True if keep_external else None)
    return result.model, report


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
