"""The `graphcomp` command (typer): run, passes, inspect, verify, bench.

Exit codes: 0 success, 1 verification failed (report still written), 2 user error
(one line on stderr, no traceback), 3 a pass broke the graph (a bug: traceback shown).
"""

from __future__ import annotations

import dataclasses
import inspect as pyinspect
import json
import re
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import onnxruntime as ort
import typer
from rich.console import Console
from rich.table import Table

from graphcomp import api
from graphcomp.core import analysis, model_io
from graphcomp.core.errors import ConfigError, GraphcompError, PassFailedError
from graphcomp.core.version import __version__
from graphcomp.live import ProgressView
from graphcomp.measure.inputs import parse_shapes
from graphcomp.report import verify_table
from graphcomp.verify import Thresholds, verify

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    rich_markup_mode=None,
    help="Data-free compression of ONNX models, verified with onnxruntime.",
)
ORT_ERRORS_ONLY = 3  # onnxruntime logger severity: errors and fatal only
out = Console()
err = Console(stderr=True)


def _version(value: bool) -> None:
    if value:
        print(f"graphcomp {__version__}")
        raise typer.Exit(0)


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Data-free compression of ONNX models, verified with onnxruntime."""


def guarded(fn: Callable[[], int | None]) -> None:
    """Run a command body; map graphcomp errors to one line and an exit code."""
    try:
        code = fn() or 0
    except PassFailedError as e:
        traceback.print_exc()
        err.print(f"error: {e}", markup=False, highlight=False)
        raise typer.Exit(e.exit_code) from None
    except GraphcompError as e:
        err.print(f"error: {e}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(e.exit_code) from None
    raise typer.Exit(code)


InputShape = Annotated[
    list[str] | None,
    typer.Option("--input-shape", help="Fix a dynamic input, e.g. input:1x3x224x224 (repeatable)."),
]


@app.command(
    epilog="Example: graphcomp run models/resnet_s_bn.onnx --passes fold-bn,cleanup "
    "-o resnet_s.folded.onnx --report report.json"
)
def run(
    model: Annotated[Path, typer.Argument(help="The ONNX model to compress (never modified).")],
    passes: Annotated[
        str | None,
        typer.Option(
            "--passes",
            "-p",
            help=("Passes in order, e.g. 'prune(ratio=0.3),dfq'. See 'graphcomp passes'."),
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="TOML/JSON file with a 'passes' list."),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Output path [default: <model>.compressed.onnx]."),
    ] = None,
    report: Annotated[Path | None, typer.Option(help="Write the JSON report here.")] = None,
    inputs: Annotated[Path | None, typer.Option(help="Verify on these inputs (.npz).")] = None,
    input_shape: InputShape = None,
    calibration_data: Annotated[
        Path | None,
        typer.Option(help="Samples (.npz) for passes that can use data; none needed."),
    ] = None,
    no_verify: Annotated[bool, typer.Option("--no-verify", help="Skip verification.")] = False,
    max_rel_err: Annotated[
        float | None, typer.Option(help="Fail above this relative error.")
    ] = None,
    min_cosine: Annotated[float | None, typer.Option(help="Fail below this cosine.")] = None,
    min_top1: Annotated[float | None, typer.Option(help="Fail below this top-1 agreement.")] = None,
    keep_failed: Annotated[
        bool, typer.Option(help="On failed verification, keep the model as <output>.failed.onnx.")
    ] = False,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the JSON report instead of tables.")
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress (the report is still printed).")
    ] = False,
) -> None:
    """Compress MODEL with the given passes, verify it and write the result."""

    def body() -> int:
        if passes is not None and config is not None:
            raise ConfigError("give the passes with --passes or with --config, not both")
        target = output or model.with_name(f"{model.stem}.compressed.onnx")
        failed = target.with_name(f"{target.stem}.failed.onnx")
        if report is not None:
            _check_writable(report, "--report")
        thresholds = Thresholds(max_rel_err, min_cosine, min_top1)
        with ProgressView(err, quiet, lines=None if json_out else out) as view:
            try:
                _, rep = api.compress(
                    model,
                    passes,
                    config_file=config,
                    output=target,
                    calibration_data=calibration_data,
                    inputs=inputs,
                    input_shapes=parse_shapes(input_shape or []),
                    thresholds=thresholds,
                    verify_output=not no_verify,
                    progress=view,
                    failed_output=failed if keep_failed else None,
                )
                code = 0
            except api.VerificationFailedError as e:
                rep, code = e.report, 1
        if report:
            rep.write_json(report)
        _show(rep, json_out)
        if code:
            kept = f"; kept the model as {failed}" if keep_failed else ""
            err.print(
                f"error: verification failed; {target} not written{kept}",
                highlight=False,
                soft_wrap=True,
            )
        return code

    guarded(body)


def _check_writable(path: Path, option: str) -> None:
    """ConfigError unless `path` can be written (checked before any work is done)."""
    if path.is_dir():
        raise ConfigError(f"{option} {path}: is a folder; give a file name")
    if not path.parent.is_dir():
        raise ConfigError(f"{option} {path}: folder {path.parent} does not exist")


def _show(rep: Any, json_out: bool) -> None:
    if json_out:
        out.print_json(json.dumps(rep.to_dict(), default=str))
    else:
        rep.render(out)
        if rep.output and (not rep.verification or not rep.verification.failed):
            out.print(f"wrote {rep.output}")


@app.command(name="passes", epilog="Example: graphcomp passes dfq")
def list_passes(
    name: Annotated[
        str | None, typer.Argument(help="Show this pass's fields, each with what it does.")
    ] = None,
) -> None:
    """List every pass with its config fields and defaults, or describe one pass."""

    def body() -> int:
        registry = api.registry()
        if name is not None:
            if name not in registry:
                raise ConfigError(
                    f"unknown pass '{name}'; choose from {', '.join(sorted(registry))}"
                )
            _describe_pass(name, registry[name])
            return 0
        table = Table(title="passes")
        for col in ("name", "lossless", "fields (default)", "what it does"):
            table.add_column(col)
        for key, cls in sorted(registry.items()):
            fields = (
                ", ".join(f"{f.name}={f.default!r}" for f in dataclasses.fields(cls.config_class))
                or "-"
            )
            table.add_row(key, "yes" if cls.lossless else "no", fields, cls.summary)
        out.print(table)
        return 0

    guarded(body)


def _field_notes(config_class: type) -> dict[str, str]:
    """Field name -> its trailing comment in the config class source (the field's doc)."""
    try:
        source = pyinspect.getsource(config_class)
    except (OSError, TypeError):
        return {}
    found = re.finditer(r"^\s+(\w+):[^\n#]*#\s*(.+)$", source, re.M)
    return {m.group(1): m.group(2).strip() for m in found}


def _describe_pass(name: str, cls: Any) -> None:
    lossless = "lossless" if cls.lossless else "lossy"
    out.print(f"{name} ({lossless}): {cls.summary}", highlight=False)
    table = Table(title=f'{name} fields: --passes "{name}(field=value,...)"')
    for col in ("field", "default", "what it does"):
        table.add_column(col)
    notes = _field_notes(cls.config_class)
    for f in dataclasses.fields(cls.config_class):
        table.add_row(f.name, repr(f.default), notes.get(f.name, ""))
    out.print(table)


@app.command(epilog="Example: graphcomp inspect models/mobilenetv2_s.onnx --json")
def inspect(
    model: Annotated[Path, typer.Argument(help="The ONNX model.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    nodes: Annotated[bool, typer.Option(help="Include MACs per node.")] = False,
    input_shape: InputShape = None,
    groups: Annotated[
        bool,
        typer.Option(
            "--groups",
            help=("List prune's channel groups: members, channels, prunable or why not."),
        ),
    ] = False,
) -> None:
    """Show the pre-flight facts of MODEL: opset, I/O, ops, params, MACs, BN, sharing."""

    def body() -> int:
        if groups:
            return _show_groups(model_io.load(model), json_out)
        facts = analysis.analyze(model_io.load(model), parse_shapes(input_shape or []))
        data = facts.to_dict(with_nodes=nodes)
        if json_out:
            out.print_json(json.dumps(data))
            return 0
        table = Table(title=str(model), show_header=False)
        for key, value in data.items():
            table.add_row(key, json.dumps(value) if isinstance(value, (list, dict)) else str(value))
        out.print(table)
        return 0

    guarded(body)


def _show_groups(model: Any, json_out: bool) -> int:
    from graphcomp.passes.prune.walk import describe

    rows = describe(model)
    if json_out:
        out.print_json(json.dumps(rows))
        return 0
    table = Table(title="channel groups")
    for col in ("group", "channels", "producers", "members", "prunable"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            str(r["group"]),
            str(r["channels"]),
            ", ".join(r["producers"]),
            ", ".join(r["members"]),
            "yes" if r["prunable"] else f"no: {r['reason']}",
        )
    out.print(table)
    return 0


@app.command(
    name="verify", epilog="Example: graphcomp verify model.onnx model.small.onnx --min-cosine 0.99"
)
def verify_cmd(
    reference: Annotated[Path, typer.Argument(help="The original model.")],
    candidate: Annotated[Path, typer.Argument(help="The model to check against it.")],
    inputs: Annotated[Path | None, typer.Option(help="Inputs (.npz).")] = None,
    input_shape: InputShape = None,
    max_rel_err: Annotated[float | None, typer.Option()] = None,
    min_cosine: Annotated[float | None, typer.Option()] = None,
    min_top1: Annotated[float | None, typer.Option()] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Compare two models output by output in onnxruntime; exit 1 if a threshold is missed."""

    def body() -> int:
        ref, cand = model_io.load(reference), model_io.load(candidate)
        result = verify(
            ref,
            cand,
            Thresholds(max_rel_err, min_cosine, min_top1),
            inputs,
            parse_shapes(input_shape or []),
        )
        if json_out:
            out.print_json(json.dumps(result.to_dict(), default=str))
        else:
            out.print(verify_table(result))
        return 1 if result.failed else 0

    guarded(body)


@app.command(
    epilog="Example: graphcomp bench models/resnet_s.onnx --passes none "
    "--passes fold-bn,cleanup --eval models/data/glyphs_eval.npz --markdown"
)
def bench(
    model: Annotated[Path, typer.Argument(help="The ONNX model (the original row).")],
    passes: Annotated[
        list[str] | None,
        typer.Option(
            "--passes",
            "-p",
            help="A pass list to compare, one row each (repeatable); 'none' or '' is the original.",
        ),
    ] = None,
    baseline: Annotated[
        list[str] | None,
        typer.Option(
            help="onnxruntime quantizer row: ort-static-pt, ort-static-pc, ort-dynamic "
            "(repeatable; static ones need --calibration-data)."
        ),
    ] = None,
    calibration_data: Annotated[
        Path | None,
        typer.Option(help="Samples (.npz) for the passes and the static baselines."),
    ] = None,
    eval_data: Annotated[
        Path | None,
        typer.Option("--eval", help="Labelled set (.npz with 'input' and 'label') for top-1."),
    ] = None,
    batch: Annotated[str, typer.Option(help="Latency batch sizes, e.g. 1,32.")] = "1",
    runs: Annotated[int, typer.Option(help="Timed runs per latency figure (median).")] = 20,
    warmup: Annotated[int, typer.Option(help="Discarded warm-up runs per session.")] = 5,
    input_shape: InputShape = None,
    max_rel_err: Annotated[float | None, typer.Option(help="Verify: relative error limit.")] = None,
    min_cosine: Annotated[float | None, typer.Option(help="Verify: cosine limit.")] = None,
    min_top1: Annotated[float | None, typer.Option(help="Verify: top-1 agreement limit.")] = None,
    out_dir: Annotated[Path | None, typer.Option(help="Keep the compiled models here.")] = None,
    pass_calibration: Annotated[
        bool,
        typer.Option(
            help="Give --calibration-data to the pass lists too (else only to the baselines)."
        ),
    ] = True,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    markdown: Annotated[bool, typer.Option(help="Print a Markdown table.")] = False,
) -> None:
    """Compress MODEL with each pass list and measure all versions side by side."""
    from graphcomp.bench import run as benchmod
    from graphcomp.bench import table as bench_table

    def body() -> int:
        options = benchmod.BenchOptions(
            tuple(passes or ()),
            tuple(baseline or ()),
            calibration_data,
            eval_data,
            benchmod.parse_batches(batch),
            runs,
            warmup,
            parse_shapes(input_shape or []),
            Thresholds(max_rel_err, min_cosine, min_top1),
            out_dir,
            pass_calibration,
        )
        with err.status("bench") as status:
            result = benchmod.bench(model, options, lambda step: status.update(step))
        for row in result.rows:
            if row.error:
                err.print(
                    f"error in {row.config}: {row.error}\n{row.traceback or ''}",
                    markup=False,
                    highlight=False,
                )
        if json_out:
            out.print_json(json.dumps(result.to_dict(), default=str))
        elif markdown:
            print(bench_table.markdown(result), end="")
        else:
            bench_table.render(result, out)
        return 1 if result.failed else 0

    guarded(body)


@app.command(
    name="config",
    epilog="Example: graphcomp config models/resnet_s.onnx --qconfig q.toml --profile trt",
)
def config_cmd(
    model: Annotated[Path, typer.Argument(help="The ONNX model.")],
    qconfig: Annotated[
        Path | None,
        typer.Option(help="Per-tensor quantization rules (TOML/JSON)."),
    ] = None,
    profile: Annotated[str, typer.Option(help="Placement profile: ort or trt.")] = "ort",
    calibration_data: Annotated[
        Path | None,
        typer.Option(help="Say that ranges will come from these samples."),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Print how the qdq pass will quantize every tensor of MODEL (nothing runs)."""
    from graphcomp.core.pass_base import PassContext
    from graphcomp.passes.qdq import table as qdq_table
    from graphcomp.passes.qdq.config import QdqConfig

    def body() -> int:
        cfg = QdqConfig(profile=profile, qconfig=str(qconfig) if qconfig else None)
        ctx = PassContext(calibration=api.load_calibration(calibration_data))
        rows = qdq_table.resolve(model_io.load(model), cfg, ctx)
        if json_out:
            out.print_json(json.dumps(qdq_table.to_dicts(rows)))
        else:
            out.print(qdq_table.render(rows, title=f"qdq config of {model}"))
        return 0

    guarded(body)


def main() -> None:
    """Console-script entry point."""
    # onnxruntime's own warnings (graph optimizers) would break the one-line errors
    ort.set_default_logger_severity(ORT_ERRORS_ONLY)
    app(prog_name="graphcomp")


if __name__ == "__main__":
    main()
