"""lazy_weights: weights kept on disk give the same output files as the in-memory path.

LAZY_BYTES is forced to 0 so every external weight of a tiny model stays on disk and
every new array a pass makes is spilled: the whole streamed path runs on models that
take milliseconds.
"""

from __future__ import annotations

import filecmp

import numpy as np
import onnx
import pytest
from onnx import external_data_helper

import graphcomp
from graphcomp.core import lazy_weights, model_io
from graphcomp.core.errors import ModelLoadError
from graphcomp.verify import Thresholds
from tests import graphs


def _external_model(folder, text=graphs.CONV_BN_RELU, location="w.bin"):
    model = graphs.build(text)
    external_data_helper.convert_model_to_external_data(
        model, all_tensors_to_one_file=True, location=location, size_threshold=0
    )
    onnx.save(model, folder / "m.onnx")
    return folder / "m.onnx"


@pytest.mark.parametrize(
    ("text", "spec"),
    [
        (graphs.IDENTITY_DROPOUT, "cleanup"),
        (graphs.CONV_BN_RELU, "fold-bn,cleanup"),
        (graphs.QDQ_CNN, "qdq"),
    ],
)
def test_lazy_run_writes_the_files_the_in_memory_run_writes(tmp_path, monkeypatch, text, spec):
    path = _external_model(tmp_path, text)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    _, in_memory = graphcomp.compress(path, spec, output=tmp_path / "a.onnx")
    monkeypatch.setattr(lazy_weights, "LAZY_BYTES", 0)
    returned, lazy = graphcomp.compress(path, spec, output=tmp_path / "b.onnx")
    assert lazy.verification.needed_rtol == in_memory.verification.needed_rtol
    names = (b"a.onnx.data", b"b.onnx.data")
    a, b = (tmp_path / "a.onnx").read_bytes(), (tmp_path / "b.onnx").read_bytes()
    assert a.replace(*names) == b
    assert filecmp.cmp(tmp_path / "a.onnx.data", tmp_path / "b.onnx.data", shallow=False)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name in before} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [*before, "a.onnx", "a.onnx.data", "b.onnx", "b.onnx.data"]
    )  # no temporary folder left
    assert returned.SerializeToString() == b  # the saved model, referencing b.onnx.data
    onnx.checker.check_model(str(tmp_path / "b.onnx"))


def test_lazy_load_maps_weights_read_only(tmp_path, monkeypatch):
    monkeypatch.setattr(lazy_weights, "LAZY_BYTES", 0)
    path = _external_model(tmp_path)
    with lazy_weights.folder(tmp_path):
        model = model_io.load(path)
        assert model_io.is_lazy(model)
        assert lazy_weights.lazy_bytes(model) == model_io.model_size(model) - model.ByteSize()
        graph = model_io.import_graph(model)
        weight = next(t for name, t in graph.tensors().items() if name == "w_conv")
        assert isinstance(weight.values, np.memmap)
        with pytest.raises(ValueError, match="read-only"):
            weight.values[0] = 1.0
        original = graphs.build(graphs.CONV_BN_RELU).graph.initializer[0]
        np.testing.assert_array_equal(weight.values, onnx.numpy_helper.to_array(original))
        exported = model_io.export(graph)
        assert model_io.is_lazy(exported)  # the read weight exports as its reference


def test_lazy_load_still_refuses_data_outside_the_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(lazy_weights, "LAZY_BYTES", 0)
    inner = tmp_path / "inner"
    inner.mkdir()
    (tmp_path / "w.bin").write_bytes(b"")
    model = graphs.build(graphs.CONV_BN_RELU)
    external_data_helper.convert_model_to_external_data(
        model, all_tensors_to_one_file=True, location="../w.bin", size_threshold=0
    )
    (inner / "m.onnx").write_bytes(model.SerializeToString())
    with lazy_weights.folder(tmp_path), pytest.raises(ModelLoadError, match="outside"):
        model_io.load(inner / "m.onnx")


def test_outside_a_folder_nothing_stays_on_disk(tmp_path, monkeypatch):
    monkeypatch.setattr(lazy_weights, "LAZY_BYTES", 0)
    model = model_io.load(_external_model(tmp_path))
    assert not model_io.is_lazy(model)
    assert all(t.HasField("raw_data") for t in model.graph.initializer)


def test_drop_pages_keeps_a_memmapped_weight_readable(tmp_path):
    w = np.random.default_rng(4).standard_normal((64, 1024)).astype(np.float32)
    w.tofile(tmp_path / "w.bin")
    mapped = np.memmap(tmp_path / "w.bin", dtype=np.float32, mode="r", offset=0, shape=w.shape)
    lazy_weights.drop_pages(np.asarray(mapped)[3:9])
    np.testing.assert_array_equal(mapped, w)  # the pages come back from the file


def test_a_failed_lazy_run_keeps_the_result_only_where_asked(tmp_path, monkeypatch):
    monkeypatch.setattr(lazy_weights, "LAZY_BYTES", 0)
    path = _external_model(tmp_path, graphs.QDQ_CNN)
    out, failed = tmp_path / "out.onnx", tmp_path / "out.failed.onnx"
    with pytest.raises(graphcomp.VerificationError):
        graphcomp.compress(
            path, "qdq", output=out, thresholds=Thresholds(min_cosine=1.5), failed_output=failed
        )
    assert not out.exists()
    onnx.checker.check_model(str(failed))
    assert graphs.op_count(onnx.load(failed), "DequantizeLinear") > 0
