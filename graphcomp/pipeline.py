"""Run passes on a model and check the graph after each one (DESIGN.md sections 1-2).

The pipeline owns the copy: the input `ModelProto` is never modified. After each pass
the graph is cleaned (dead nodes, unused initializers), sorted, exported, its
intermediate shapes re-inferred (so a pass that changes channel counts only has to
get the weights right), checked with `onnx.checker` and for unique names, and
re-imported for the next pass.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
import onnx_graphsurgeon as gs
from onnx import shape_inference

from graphcomp.core import analysis, graph_utils, model_io
from graphcomp.core.errors import GraphcompError, PassFailedError
from graphcomp.core.pass_base import Pass, PassContext, PassResult

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
    """Apply `passes` in order to a copy of `model`."""
    ctx = ctx or PassContext(opset=model_io.default_opset(model))
    graph = gs.import_onnx(model)
    graph_utils.name_nodes(graph)
    out = PipelineResult(model=model, passes=list(passes))
    done: list[str] = []
    for p in passes:
        if progress:
            progress(p.name)
        start = time.perf_counter()
        result = _apply_one(p, graph, ctx, done)
        current = finish_graph(graph, model, label=p.name, done=done)
        seconds = time.perf_counter() - start
        out.records.append(_record(p, result, out.model, current, seconds, ctx))
        out.model = current
        done.append(p.name)
        graph = gs.import_onnx(current)
    return out


def _apply_one(p: Pass, graph: gs.Graph, ctx: PassContext, done: list[str]) -> PassResult:
    try:
        p.requires(graph, ctx)
        return p.apply(graph, ctx)
    except GraphcompError as e:
        raise type(e)(f"pass '{p.name}': {e}{_after(done)}") from e
    except Exception as e:
        raise PassFailedError(f"pass '{p.name}' failed: {e!r}{_after(done)}") from e


def _after(done: list[str]) -> str:
    return f" (after {', '.join(done)})" if done else ""


def _record(
    p: Pass,
    result: PassResult,
    before: onnx.ModelProto,
    after: onnx.ModelProto,
    seconds: float,
    ctx: PassContext,
) -> PassRecord:
    def size(m: onnx.ModelProto) -> tuple[int, int, int]:
        shapes = analysis.infer_shapes(m, ctx.input_shapes)
        macs = sum(analysis.node_macs(n, shapes) for n in m.graph.node)
        return analysis.count_params(m), int(macs), model_io.model_size(m)

    b, a = size(before), size(after)
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
        model = gs.export_onnx(graph, do_type_check=False)
    except Exception as e:
        raise PassFailedError(
            f"pass '{label}' left a graph that cannot be exported: {e!r}{_after(done or [])}"
        ) from e
    _keep_model_fields(model, original)
    model = refresh_shapes(model)
    check(model, label, done or [])
    return model


def _keep_model_fields(model: onnx.ModelProto, original: onnx.ModelProto) -> None:
    needed = onnx.helper.find_min_ir_version_for(list(model.opset_import), True)
    model.ir_version = max(original.ir_version, needed)
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
        if model_io.needs_external_data(model):
            _check_by_path(model)
        else:
            onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, ValueError) as e:
        raise PassFailedError(
            f"pass '{label}' produced an invalid model: {str(e).splitlines()[0]}{_after(done)}"
        ) from e


def _check_by_path(model: onnx.ModelProto) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        model_io.save(model, path, external=True)
        onnx.checker.check_model(str(path))
