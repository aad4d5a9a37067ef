"""Load and save ONNX models safely.

- load: refuses what is not an ONNX model with one sentence, checks that external
  data stays inside the model's folder, never writes to the input. Inside
  `lazy_weights.folder()` large external weights stay on disk (graphcomp/core/lazy_weights.py).
- save: writes into a temporary folder beside the target and renames into place, so a
  reader never sees a half-written file; external data when the model is large or
  has weights on disk (streamed from their files, never held in memory).
- import_graph / export: the one way between a ModelProto and a gs.Graph.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from google.protobuf.message import DecodeError
from onnx import external_data_helper

from graphcomp.core import lazy_weights
from graphcomp.core.errors import ModelLoadError, UnsupportedModelError
from graphcomp.core.lazy_weights import is_lazy

EXTERNAL_DATA_THRESHOLD = int(1.8 * 2**30)  # bytes; protobuf's hard limit is 2 GiB
MIN_OPSET = 7
# IR 3 requires every initializer to be a graph input; the exporter writes weights as
# initializers only, so an exported model is at least IR 4 (onnxruntime reads both)
MIN_IR = 4


def load(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """Read an ONNX model with its external data, after validating the file.

    Inside `lazy_weights.folder()`, external initializers of at least
    `lazy_weights.LAZY_BYTES` stay on disk (see graphcomp/core/lazy_weights.py).
    """
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file")
    if not path.is_file():
        raise ModelLoadError(f"{path}: is not a file")
    if path.stat().st_size == 0:
        raise ModelLoadError(f"{path}: the file is empty")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError) as e:
        raise ModelLoadError(f"{path}: not an ONNX model ({_first_line(e)})") from e
    _check_is_model(path, model)
    if check_external_locations(model, path.parent):
        try:
            _load_external_data(model, path.parent)
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"{path}: cannot read external data ({_first_line(e)})") from e
    check_opset(model, str(path))
    return model


def _load_external_data(model: onnx.ModelProto, base_dir: Path) -> None:
    """onnx.load_external_data_for_model, except for the tensors that stay on disk."""
    for tensor in model.graph.initializer:
        lazy_weights.keep_on_disk(tensor, base_dir.resolve())
    for tensor in external_data_helper._get_all_tensors(model):
        lazy = lazy_weights.location(tensor) is not None
        if not lazy and external_data_helper.uses_external_data(tensor):
            external_data_helper.load_external_data_for_tensor(tensor, str(base_dir))


def has_external_data(path: str | os.PathLike[str]) -> bool:
    """True when the model file keeps some weights in external files."""
    model = onnx.load(str(path), load_external_data=False)
    return any(
        external_data_helper.uses_external_data(t)
        for t in external_data_helper._get_all_tensors(model)
    )


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


def _check_is_model(path: Path, model: onnx.ModelProto) -> None:
    """Reject protobufs that parse but are not models (empty, truncated, other types)."""
    if model.ir_version <= 0 or not model.opset_import or not model.HasField("graph"):
        raise ModelLoadError(f"{path}: not an ONNX model (no IR version, opset or graph)")
    if not model.graph.node or not model.graph.output:
        raise ModelLoadError(f"{path}: the model's graph has no nodes or no outputs")


def check_external_locations(model: onnx.ModelProto, base_dir: Path) -> bool:
    """Refuse external-data locations outside `base_dir`; True if any tensor is external."""
    base = base_dir.resolve()
    found = False
    for tensor in external_data_helper._get_all_tensors(model):
        if not external_data_helper.uses_external_data(tensor):
            continue
        found = True
        info = external_data_helper.ExternalDataInfo(tensor)
        target = (base / info.location).resolve()
        if os.path.isabs(info.location) or not target.is_relative_to(base):
            raise ModelLoadError(
                f"external data of tensor '{tensor.name}' points outside the model's "
                f"folder ({info.location}); refusing to read it"
            )
    return found


def default_opset(model: onnx.ModelProto) -> int:
    """The version of the default ONNX domain the model imports."""
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    domains = ", ".join(sorted(e.domain for e in model.opset_import)) or "no domain"
    raise UnsupportedModelError(
        f"the model imports no version of the default ONNX domain (only {domains}); "
        "graphcomp edits default-domain ops only: use the model as it is"
    )


def check_opset(model: onnx.ModelProto, label: str = "model") -> int:
    """Return the default-domain opset, refusing versions this onnx cannot handle."""
    opset = default_opset(model)
    newest = onnx.defs.onnx_opset_version()
    if opset < MIN_OPSET:
        raise UnsupportedModelError(
            f"{label}: opset {opset} is older than {MIN_OPSET}; convert it first "
            "(onnx.version_converter.convert_version)"
        )
    if opset > newest:
        raise UnsupportedModelError(
            f"{label}: opset {opset} is newer than this onnx ({onnx.__version__}) knows "
            f"(up to {newest}); upgrade onnx"
        )
    return opset


def tensor_bytes(model: onnx.ModelProto) -> int:
    """Bytes of all tensor data held in the proto (initializers, Constant attributes)."""
    total = 0
    for t in external_data_helper._get_all_tensors(model):
        if t.raw_data:
            total += len(t.raw_data)
        elif not external_data_helper.uses_external_data(t):
            size = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize if t.data_type else 4
            total += int(np.prod(t.dims)) * size
    return total


def model_size(model: onnx.ModelProto) -> int:
    """Bytes the model takes when serialized, weights kept on disk included.

    Past 2 GB protobuf cannot compute the size, so it is the tensor data's size.
    """
    data = tensor_bytes(model)
    held = data if data > EXTERNAL_DATA_THRESHOLD else model.ByteSize()
    return held + lazy_weights.lazy_bytes(model)


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


def needs_external_data(model: onnx.ModelProto) -> bool:
    """True when one protobuf could not hold the data the model holds in memory."""
    return tensor_bytes(model) > EXTERNAL_DATA_THRESHOLD


def save(
    model: onnx.ModelProto, path: str | os.PathLike[str], external: bool | None = None
) -> list[Path]:
    """Write `model` to `path` atomically; returns the files written.

    With `external` None, weights go to `<name>.data` beside the model only when the
    model is too large for one protobuf. A model that keeps weights on disk always
    goes there, its weights copied from their files in chunks. The files are first written into
    a temporary folder in the target folder and then renamed into place (data first,
    model last).
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise ModelLoadError(f"{path.parent}: output folder does not exist")
    use_external = is_lazy(model) or (needs_external_data(model) if external is None else external)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        data_name = f"{path.name}.data"
        tmp_model = tmp_dir / path.name
        if is_lazy(model):
            model = _copy(model)  # small: the large weights are on disk
            lazy_weights.write_data(model, tmp_dir / data_name, data_name)
            onnx.save_model(model, str(tmp_model))
        elif use_external:
            model = _copy(model)  # save_model rewrites tensors to external references
            onnx.save_model(
                model,
                str(tmp_model),
                save_as_external_data=True,
                all_tensors_to_one_file=True,
                location=data_name,
                size_threshold=0,
            )
        else:
            onnx.save_model(model, str(tmp_model))
        written = []
        if (tmp_dir / data_name).exists():
            os.replace(tmp_dir / data_name, path.parent / data_name)
            written.append(path.parent / data_name)
        os.replace(tmp_model, path)
        written.insert(0, path)
        return written
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


@contextlib.contextmanager
def on_disk(model: onnx.ModelProto) -> Iterator[Path]:
    """A file of `model` for readers that need a path (onnxruntime, onnx.checker).

    A model with weights on disk is written beside them with references to them (a few
    KB); any other model with its data into a temporary folder (external data).
    """
    if is_lazy(model):
        with lazy_weights.view(model) as path:
            yield path
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        save(model, path, external=True)
        yield path


def import_graph(model: onnx.ModelProto) -> gs.Graph:
    """`model` as a gs.Graph; weights kept on disk are read-only memmaps when read.

    A graph input or output keeps the type its own declaration gives: graphsurgeon
    takes a value_info entry of the same name first, and some exporters write one
    without a shape (seen in ddddocr's models), which would erase the output's shape.
    """
    graph = gs.import_onnx(model)
    declared = {v.name: v for v in [*model.graph.input, *model.graph.output]}
    for tensor in [*graph.inputs, *graph.outputs]:
        proto = declared.get(tensor.name)
        if proto is None or not isinstance(tensor, gs.Variable):
            continue
        own = gs.importers.onnx_importer.OnnxImporter.import_tensor(proto)
        tensor.dtype = own.dtype or tensor.dtype
        tensor.shape = own.shape if own.shape is not None else tensor.shape
    return lazy_weights.map_constants(graph)


def ir_version_for(model: onnx.ModelProto, floor: int = 0) -> int:
    """The IR version an exported model gets: the one rule for every export.

    At least `floor` (the original model's, when the caller keeps it), the graph's own,
    what its opsets need and `MIN_IR`; at most what the installed onnx writes.
    """
    needed = onnx.helper.find_min_ir_version_for(list(model.opset_import), True)
    return min(max(floor, model.ir_version, needed, MIN_IR), onnx.IR_VERSION)


def export(graph: gs.Graph, ir_floor: int = 0) -> onnx.ModelProto:
    """`graph` as a ModelProto as it stands (no cleanup), IR version by `ir_version_for`.

    Weights on disk stay there (memmapped constants export as their references, large
    new arrays are written to the open `lazy_weights.folder`).
    """
    lazy_weights.prepare_export(graph)
    model = gs.export_onnx(graph, do_type_check=False)
    model.ir_version = ir_version_for(model, ir_floor)
    return model


def inputs_model(graph: gs.Graph) -> onnx.ModelProto:
    """A model holding only the graph's inputs: what reading input shapes needs, cheaply."""
    exporter = gs.exporters.onnx_exporter.OnnxExporter
    proto = onnx.helper.make_graph(
        [],
        graph.name or "inputs",
        [exporter.export_value_info_proto(t, False) for t in graph.inputs],
        [],
    )
    return onnx.helper.make_model(proto)


def to_model(graph: gs.Graph, ir_floor: int = 0) -> onnx.ModelProto:
    """A runnable ModelProto of the graph as it is now (the graph is not modified).

    A copy is cleaned (graph inputs kept) and sorted, then exported by `export`.
    """
    copy = graph.copy()
    copy.cleanup(remove_unused_graph_inputs=False).toposort()
    return export(copy, ir_floor)
