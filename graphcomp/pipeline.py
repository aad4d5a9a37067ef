"""Run passes on a model and check the graph after each one (DESIGN.md sections 1-2).

The pipeline owns the copy: the input `ModelProto` is never modified. After each pass
the graph is cleaned (dead nodes, unused initializers), sorted, exported, its
intermediate shapes re-inferred (so a pass that changes channel counts only has to
get the weights right), checked with `onnx.checker` and for unique names, and
re-imported for the next pass.

A composite pass (`steps()` is a list) is expanded: each step runs like a top-level
pass and gets its own record, named `<composite>/<step>` (e.g. `dfq/equalize`).
The context is checked after every step: a pass that used or wrote a `STATE_KEYS`
field it did not declare (`reads`/`writes`), or wrote a run input, is a bug
(`PassFailedError`); after a pass that changed something, the entries of its
`invalidates` keys written before it are dropped, so no later pass reads them stale.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import onnx
import onnx_graphsurgeon as gs
from onnx import shape_inference

from graphcomp.core import analysis, graph_utils, model_io
from graphcomp.core.errors import GraphcompError, PassFailedError
from graphcomp.core.pass_base import INPUT_KEYS, STATE_KEYS, Pass, PassContext, PassResult

log = logging.getLogger(__name__)
Progress = Callable[[str], None]


@dataclass
class PassRecord:
    """One pass's result plus the model's size before and after it and its time."""

    result: PassResult
    config: dict[str, Any]
    params: tuple[int, int]
    macs: tuple[int, int]
    bytes: tuple[int, int]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        data = self.result.to_dict()
        data.update(
            config=self.config,
            params=list(self.params),
            macs=list(self.macs),
            bytes=list(self.bytes),
            seconds=round(self.seconds, 4),
        )
        return data


@dataclass
class PipelineResult:
    """The compressed model and the per-pass records."""

    model: onnx.ModelProto
    records: list[PassRecord] = field(default_factory=list)
    passes: list[Pass] = field(default_factory=list)

    def record(self, name: str) -> PassRecord:
        """The last record named `name` (a step: `dfq/equalize`); KeyError when none."""
        for r in reversed(self.records):
            if r.result.name == name:
                return r
        raise KeyError(f"no record '{name}'; have {[r.result.name for r in self.records]}")

    @property
    def lossless(self) -> bool:
        """True when every pass run is lossless (verification then holds to 1e-4)."""
        return all(p.lossless for p in self.passes)


def run(
    model: onnx.ModelProto,
    passes: list[Pass],
    ctx: PassContext | None = None,
    progress: Progress | None = None,
) -> PipelineResult:
    """Apply `passes` in order to a copy of `model`; composites run step by step."""
    ctx = ctx or PassContext(opset=model_io.default_opset(model))
    graph = model_io.import_graph(model)
    graph_utils.name_nodes(graph)
    state = _Run(model, ctx, PipelineResult(model=model, passes=list(passes)), progress)
    state.total = sum(_count_steps(p) for p in passes)
    for p in passes:
        graph = _run_pass(p, p.name, graph, state)
    return state.out


@dataclass
class _Run:
    """One pipeline run: the input model, the context, the records so far."""

    original: onnx.ModelProto
    ctx: PassContext
    out: PipelineResult
    progress: Progress | None
    done: list[str] = field(default_factory=list)
    size: tuple[int, int, int] | None = None  # params, MACs, bytes of out.model
    total: int = 0  # steps in the whole run (composites expanded)


def _run_pass(p: Pass, label: str, graph: gs.Graph, run: _Run) -> gs.Graph:
    """Run a pass (a composite as its steps, each labelled `<label>/<step>`)."""
    steps = p.steps()
    if steps is None:
        return _run_step(p, label, graph, run)
    _guarded(label, run.done, lambda: p.requires(graph, run.ctx))  # fail before any step
    results: dict[str, PassResult] = {}
    for step in steps:
        graph = _run_pass(step, f"{label}/{step.name}", graph, run)
        results[step.name] = run.out.records[-1].result
    _guarded(label, run.done, lambda: p.summarize(results))
    return graph


def _count_steps(p: Pass) -> int:
    steps = p.steps()
    return 1 if steps is None else sum(_count_steps(s) for s in steps)


def _run_step(p: Pass, label: str, graph: gs.Graph, run: _Run) -> gs.Graph:
    """requires, apply, context checks, finish (cleanup ... check), record."""
    if run.progress:
        run.progress(f"{label} ({len(run.out.records) + 1}/{run.total})")
    ctx = run.ctx
    _check_declarations(p, label)
    start = time.perf_counter()
    before = _snapshot(ctx)
    wired = _wiring(graph)
    with ctx.tracking() as touched:
        result = _apply_one(p, label, graph, ctx, run.done)
    _check_context(p, label, before, touched, ctx, run.done)
    if result.changes:
        _invalidate(p, before, ctx)
    result.name = label
    if _unchanged(p, result, run, wired == _wiring(graph)):  # the checked model stays as it was
        run.out.records.append(_record(p, result, run, run.out.model, time.perf_counter() - start))
        run.done.append(label)
        return graph
    current = finish_graph(graph, run.original, label=label, done=run.done)
    seconds = time.perf_counter() - start
    run.out.records.append(_record(p, result, run, current, seconds))
    run.out.model = current
    run.done.append(label)
    if model_io.is_lazy(current):
        gc.collect()  # a replaced weight is a reference cycle (gs tensors): unmap it now
    return model_io.import_graph(current)


def _unchanged(p: Pass, result: PassResult, run: _Run, same_wiring: bool) -> bool:
    """True for a lossless step that changed nothing (not the first step).

    A step that declares it edits nothing (empty `matches` and `creates`: dfq's stats,
    ranges, measure-ranges; tests/test_contracts.py holds passes to the declaration), or
    any lossless step that reported no change and left the nodes and their wiring as they
    were (fold-bn on a model without BatchNorm, equalize with no pair): exporting,
    re-inferring and checking the same graph again would find nothing.
    """
    if not run.out.records or not p.lossless or result.changes:
        return False
    return same_wiring or not (p.matches or p.creates)


def _wiring(graph: gs.Graph) -> tuple:
    """The nodes and the tensors they connect (compared by identity first; no values read)."""
    return (
        tuple(graph.inputs),
        tuple(graph.outputs),
        tuple((n, tuple(n.inputs), tuple(n.outputs)) for n in graph.nodes),
    )


def _guarded(label: str, done: list[str], call: Callable[[], None]) -> None:
    try:
        call()
    except GraphcompError as e:
        raise type(e)(f"pass '{label}': {e}{_after(done)}") from e
    except Exception as e:
        raise PassFailedError(f"pass '{label}' failed: {e!r}{_after(done)}") from e


def _apply_one(
    p: Pass, label: str, graph: gs.Graph, ctx: PassContext, done: list[str]
) -> PassResult:
    results: list[PassResult] = []

    def call() -> None:
        p.requires(graph, ctx)
        results.append(p.apply(graph, ctx))

    _guarded(label, done, call)
    return results[0]


def _after(done: list[str]) -> str:
    return f" (after {', '.join(done)})" if done else ""


def _check_declarations(p: Pass, label: str) -> None:
    """Declared context keys exist; only dict entries can be invalidated."""
    unknown = (p.reads | p.writes | p.invalidates) - STATE_KEYS
    if unknown:
        raise PassFailedError(f"pass '{label}' declares unknown context keys {sorted(unknown)}")
    if p.invalidates & {"opset"}:
        raise PassFailedError(f"pass '{label}' cannot invalidate ctx.opset")


def _snapshot(ctx: PassContext) -> dict[str, Any]:
    """Shallow copies of every context field (entries are replaced, never mutated)."""
    snap = {}
    for key in sorted(STATE_KEYS | INPUT_KEYS):
        value = getattr(ctx, key)
        snap[key] = dict(value) if isinstance(value, dict) else value
    return snap


def _changed(before: Any, after: Any) -> bool:
    """True when a context field was set, or an entry was added, replaced or dropped."""
    if isinstance(before, dict) and isinstance(after, dict):
        return before.keys() != after.keys() or any(after[k] is not v for k, v in before.items())
    return before is not after and before != after


def _check_context(
    p: Pass,
    label: str,
    before: dict[str, Any],
    touched: set[str],
    ctx: PassContext,
    done: list[str],
) -> None:
    """PassFailedError when the pass used or wrote context it did not declare."""
    written = {k for k, v in before.items() if _changed(v, getattr(ctx, k))}
    if written & INPUT_KEYS:
        keys = ", ".join(f"ctx.{k}" for k in sorted(written & INPUT_KEYS))
        raise PassFailedError(f"pass '{label}' wrote {keys}, the run's input{_after(done)}")
    undeclared = (written - p.writes) | (touched - p.reads - p.writes)
    if undeclared:
        keys = ", ".join(f"ctx.{k}" for k in sorted(undeclared))
        raise PassFailedError(
            f"pass '{label}' used {keys} without declaring it in `reads`/`writes`{_after(done)}"
        )


def _invalidate(p: Pass, before: dict[str, Any], ctx: PassContext) -> None:
    """Drop the entries of `p.invalidates` written before `p` (in place)."""
    for key in p.invalidates:
        entries, old = getattr(ctx, key), before[key]
        stale = [k for k, v in entries.items() if k in old and old[k] is v]
        for k in stale:
            del entries[k]
        if stale:
            log.debug("%s: dropped %d stale ctx.%s entries", p.name, len(stale), key)


def _size(m: onnx.ModelProto, ctx: PassContext) -> tuple[int, int, int]:
    shapes = analysis.infer_shapes(m, ctx.input_shapes)
    macs = sum(analysis.node_macs(n, shapes) for n in m.graph.node)
    return analysis.count_params(m), int(macs), model_io.model_size(m)


def _record(
    p: Pass, result: PassResult, run: _Run, after: onnx.ModelProto, seconds: float
) -> PassRecord:
    b = run.size or _size(run.out.model, run.ctx)
    # a step that changed nothing left the sizes as they were (the first one is measured:
    # its cleanup may drop what the input model carried unused)
    a = run.size = b if run.size is not None and not result.changes else _size(after, run.ctx)
    config = {k: _jsonable(v) for k, v in vars(p.config).items()}
    return PassRecord(result, config, (b[0], a[0]), (b[1], a[1]), (b[2], a[2]), seconds)


def _jsonable(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return str(value)


def finish_graph(
    graph: gs.Graph, original: onnx.ModelProto, label: str = "pass", done: list[str] | None = None
) -> onnx.ModelProto:
    """Clean, sort, export, re-infer shapes and check; returns the new ModelProto."""
    try:
        graph.cleanup(remove_unused_graph_inputs=False).toposort()
        model = model_io.export(graph, original.ir_version)
    except Exception as e:
        raise PassFailedError(
            f"pass '{label}' left a graph that cannot be exported: {e!r}{_after(done or [])}"
        ) from e
    _keep_model_fields(model, original)
    model = refresh_shapes(model)
    check(model, label, done or [])
    return model


def _keep_model_fields(model: onnx.ModelProto, original: onnx.ModelProto) -> None:
    model.producer_name = original.producer_name
    model.producer_version = original.producer_version
    del model.metadata_props[:]
    model.metadata_props.extend(original.metadata_props)
    model.graph.name = original.graph.name


def refresh_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop intermediate value_info and infer it again from the current weights."""
    del model.graph.value_info[:]
    if model_io.needs_external_data(model):
        return model  # in-memory inference cannot take > 2 GB; shapes come at load time
    try:
        return shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception as e:  # noqa: BLE001 - inference failure is caught by the checker below
        log.debug("shape inference failed: %s", e)
        return model


def check(model: onnx.ModelProto, label: str, done: list[str]) -> None:
    """onnx.checker plus unique node names; PassFailedError naming the pass on failure."""
    names = [n.name for n in model.graph.node]
    if len(set(names)) < len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})[:5]
        raise PassFailedError(f"pass '{label}' produced duplicate node names {dupes}{_after(done)}")
    try:
        if model_io.needs_external_data(model) or model_io.is_lazy(model):
            with model_io.on_disk(model) as path:
                onnx.checker.check_model(str(path))
        else:
            onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, ValueError) as e:
        raise PassFailedError(
            f"pass '{label}' produced an invalid model: {str(e).splitlines()[0]}{_after(done)}"
        ) from e
