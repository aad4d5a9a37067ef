"""Weights that stay on disk: a big external-data model in about one copy of memory.

Inside `with lazy_weights.folder(parent):` (the run driver opens one beside the output)
`model_io.load` keeps every external initializer of at least LAZY_BYTES on disk: its
file is copied into a temporary folder (onnxruntime reads external data only from the
model's own folder, and onnx.checker refuses hard links and symbolic links), and the
TensorProto keeps an external reference whose location is the *absolute* path of the
copy. The absolute location is what marks a lazy tensor; onnx
and onnxruntime refuse it, so such a proto is always converted before it leaves
graphcomp:

- `map_constants` (model_io.import_graph): gs Constants over lazy tensors get
  `MappedValues`, whose values are a read-only np.memmap of the file; pages are read
  only where a pass reads the weight;
- `prepare_export` (model_io.export): a constant still holding its memmap exports as its
  reference again, and a new array of at least LAZY_BYTES that a pass made is written
  to a file in the folder (`spill`), so no proto ever holds a large weight;
- `view`: the proto with relative references, written into the folder, for onnxruntime
  (which memory-maps the data; with prepacking off it makes no heap copy) and for
  `onnx.checker` by path;
- `write_data` (model_io.save): every initializer goes to the output's data file in
  onnx's own layout (`onnx.save_model` with size_threshold=0), lazy ones copied from
  their file in chunks, so the output equals what the in-memory path writes.

Only the main graph's initializers become lazy; Constant nodes and subgraphs load as
they always did.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import external_data_helper
from onnx_graphsurgeon.ir.tensor import LazyValues

LAZY_BYTES = 64 << 20  # an external initializer this large stays on disk
COPY_CHUNK = 16 << 20  # bytes read at a time when copying a lazy tensor
_FOLDER: ContextVar[Path | None] = ContextVar("graphcomp_lazy_folder", default=None)
_SOURCE = "_graphcomp_source"  # attribute of a memmap: the TensorProto it maps


@contextlib.contextmanager
def folder(parent: str | os.PathLike[str]) -> Iterator[Path]:
    """Keep large weights on disk in a temporary folder under `parent` while open."""
    with tempfile.TemporaryDirectory(prefix=".graphcomp-weights.", dir=parent) as tmp:
        token = _FOLDER.set(Path(tmp).resolve())
        try:
            yield Path(tmp)
        finally:
            _FOLDER.reset(token)


def active() -> Path | None:
    """The open folder, None outside `folder()` (everything then loads into memory)."""
    return _FOLDER.get()


def location(tensor: onnx.TensorProto) -> tuple[Path, int, int] | None:
    """(file, offset, length) of a lazy tensor, None for any other tensor."""
    if not external_data_helper.uses_external_data(tensor):
        return None
    info = external_data_helper.ExternalDataInfo(tensor)
    if not os.path.isabs(info.location):
        return None
    return Path(info.location), int(info.offset or 0), int(info.length or 0)


def is_lazy(model: onnx.ModelProto) -> bool:
    """True when some initializer of the model stays on disk."""
    return any(location(t) is not None for t in model.graph.initializer)


def lazy_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the model's weights that stay on disk."""
    return sum(where[2] for t in model.graph.initializer if (where := location(t)))


def keep_on_disk(tensor: onnx.TensorProto, base_dir: Path) -> bool:
    """Make an external `tensor` of `base_dir` lazy when a folder is open and it is large.

    Its file is copied into the folder (once per file) and the reference rewritten to
    the copy's absolute path. False (nothing changed) when the tensor should load.
    """
    target = active()
    dtype = _np_dtype(tensor.data_type)
    if target is None or dtype is None:
        return False
    info = external_data_helper.ExternalDataInfo(tensor)
    length = int(np.prod(tensor.dims, dtype=np.int64)) * dtype.itemsize
    if length < max(LAZY_BYTES, 1) or (info.length is not None and int(info.length) != length):
        return False
    source = (base_dir / info.location).resolve()
    offset = int(info.offset or 0)
    if not source.is_file() or source.stat().st_size < offset + length:
        return False  # loading it reports the problem
    copy = target / f"input-{_digest(source)}.bin"
    if not copy.exists():
        shutil.copyfile(source, copy)  # in the kernel: the bytes never enter this process
    _set_reference(tensor, copy, offset, length)
    return True


def _digest(path: Path) -> str:
    return uuid.uuid5(uuid.NAMESPACE_URL, str(path)).hex[:16]


def _np_dtype(data_type: int) -> np.dtype | None:
    """The numpy dtype of an ONNX element type, None when numpy cannot map it as is."""
    try:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(data_type))
    except (KeyError, TypeError, ValueError):
        return None
    return dtype if dtype.kind in "biuf" and data_type != onnx.TensorProto.BFLOAT16 else None


def _set_reference(tensor: onnx.TensorProto, path: Path | str, offset: int, length: int) -> None:
    """Point `tensor` at `length` bytes of `path` from `offset` (keys in onnx's order)."""
    tensor.ClearField("raw_data")
    del tensor.external_data[:]
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", str(path)), ("offset", str(offset)), ("length", str(length))):
        tensor.external_data.add(key=key, value=value)


class MappedValues(LazyValues):
    """gs values of a lazy tensor: a read-only memmap of its file, made when first read."""

    def load(self) -> np.ndarray:
        """The weight as np.memmap (mode "r"); it remembers its TensorProto."""
        where = location(self.tensor)
        dtype = _np_dtype(self.tensor.data_type)
        if where is None or dtype is None:
            raise ValueError(f"tensor '{self.tensor.name}' is not a lazy tensor")
        path, offset, _ = where
        shape = tuple(int(d) for d in self.tensor.dims)
        array = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)
        setattr(array, _SOURCE, self.tensor)
        return array


def drop_pages(array: np.ndarray) -> None:
    """Hand the pages of `array`, a contiguous slice of a memmapped weight, back to the kernel.

    The mapping is read-only, so this only forgets them (a later read maps the file
    again, from the page cache); a pass that reads a large weight in slices calls it
    after each slice, so the weight it has read does not stay in its memory. Any other
    array: nothing happens.
    """
    owner: Any = array  # up the views to the memmap made on the mmap itself
    while isinstance(owner, np.ndarray) and not isinstance(owner.base, mmap.mmap):
        owner = owner.base
    if not isinstance(owner, np.memmap) or not array.flags.c_contiguous:
        return
    data: mmap.mmap = owner.base  # type: ignore[assignment]  # numpy types base as an array
    head = owner.offset % mmap.ALLOCATIONGRANULARITY  # where the memmap starts in the map
    start = array.__array_interface__["data"][0] - owner.__array_interface__["data"][0] + head
    first = start - start % mmap.PAGESIZE
    length = min(start + array.nbytes, len(data)) - first
    if length > 0:
        data.madvise(mmap.MADV_DONTNEED, first, length)


def map_constants(graph: gs.Graph) -> gs.Graph:
    """Give every Constant over a lazy tensor `MappedValues` (in place); returns `graph`."""
    for tensor in graph.tensors().values():
        values = getattr(tensor, "_values", None)
        if isinstance(values, LazyValues) and location(values.tensor) is not None:
            tensor._values = MappedValues(values.tensor)
            tensor.data_location = None  # the exporter copies the reference as it is
    return graph


def prepare_export(graph: gs.Graph) -> None:
    """Turn memmapped constants back into references; spill large new arrays (in place).

    Values are only re-held: every constant keeps its dtype, shape and numbers.
    """
    spill_to = active()
    for tensor in graph.tensors().values():
        if not isinstance(tensor, gs.Constant) or isinstance(tensor._values, LazyValues):
            continue
        values = tensor._values
        source = getattr(values, _SOURCE, None) if isinstance(values, np.memmap) else None
        if source is not None:
            tensor._values = MappedValues(source)
        elif spill_to is not None and _spillable(tensor, values):
            tensor._values = MappedValues(spill(values, tensor.name, spill_to))
            tensor.data_location = None


def _spillable(tensor: gs.Constant, values: object) -> bool:
    if not isinstance(values, np.ndarray) or values.nbytes < max(LAZY_BYTES, 1):
        return False
    data_type = onnx.helper.np_dtype_to_tensor_dtype(values.dtype)
    if _np_dtype(data_type) is None:
        return False
    export = tensor._export_dtype  # None: exported as it is held
    if export is None:
        return True
    return export == data_type if isinstance(export, int) else np.dtype(export) == values.dtype


def spill(values: np.ndarray, name: str, target: Path) -> onnx.TensorProto:
    """Write `values` to a new file in `target`; the lazy TensorProto that references it."""
    fd, path = tempfile.mkstemp(prefix="spill-", suffix=".bin", dir=target)
    with os.fdopen(fd, "wb") as f:
        np.ascontiguousarray(values).tofile(f)
    tensor = onnx.TensorProto(
        name=name,
        data_type=onnx.helper.np_dtype_to_tensor_dtype(values.dtype),
        dims=values.shape,
    )
    _set_reference(tensor, Path(path).resolve(), 0, values.nbytes)
    return tensor


@contextlib.contextmanager
def view(model: onnx.ModelProto) -> Iterator[Path]:
    """A lazy `model` written into its folder with relative references, for a reader.

    The file (a few KB: the weights stay where they are) is removed on exit.
    """
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    folders = set()
    for tensor in copy.graph.initializer:
        where = location(tensor)
        if where is not None:
            folders.add(where[0].parent)
            _set_reference(tensor, where[0].name, where[1], where[2])
    if len(folders) != 1:
        raise ValueError(f"a lazy model's weights must share one folder, got {sorted(folders)}")
    path = folders.pop() / f"view-{uuid.uuid4().hex}.onnx"
    path.write_bytes(copy.SerializeToString())
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def write_data(model: onnx.ModelProto, data_path: Path, data_name: str) -> None:
    """Move every initializer's data of `model` (edited in place) into `data_path`.

    Layout as onnx.save_model(save_as_external_data=True, size_threshold=0) writes it:
    initializers with raw data in order, each at the end of the file, referenced by
    `data_name`; lazy ones are copied from their file COPY_CHUNK bytes at a time.
    """
    with open(data_path, "ab") as out:
        for tensor in external_data_helper._get_initializer_tensors(model):
            where = location(tensor)
            if where is None and not tensor.HasField("raw_data"):
                continue
            offset = out.tell()
            if where is None:
                out.write(tensor.raw_data)
            else:
                _copy_range(where[0], where[1], where[2], out)
            _set_reference(tensor, data_name, offset, out.tell() - offset)


def _copy_range(path: Path, offset: int, length: int, out: BinaryIO) -> None:
    with open(path, "rb") as src:
        src.seek(offset)
        left = length
        while left > 0:
            chunk = src.read(min(COPY_CHUNK, left))
            if not chunk:
                raise OSError(f"{path}: ends {left} bytes before the tensor does")
            out.write(chunk)
            left -= len(chunk)
