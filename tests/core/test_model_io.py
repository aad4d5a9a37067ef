"""model_io: loading refuses bad files with one sentence; saving is atomic and safe."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import external_data_helper, numpy_helper

from graphcomp.core import model_io
from graphcomp.core.errors import ModelLoadError, UnsupportedModelError
from tests import graphs


@pytest.fixture
def model_path(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(graphs.build(graphs.CONV_BN_RELU), path)
    return path


def _bad_files(tmp_path, model_path):
    data = model_path.read_bytes()
    (tmp_path / "empty.onnx").write_bytes(b"")
    (tmp_path / "random.onnx").write_bytes(np.random.default_rng(0).bytes(300))
    (tmp_path / "truncated.onnx").write_bytes(data[: len(data) // 2])
    tensor = numpy_helper.from_array(np.ones(4, np.float32), "t")
    (tmp_path / "tensor.onnx").write_bytes(tensor.SerializeToString())
    return ["missing.onnx", ".", "empty.onnx", "random.onnx", "truncated.onnx", "tensor.onnx"]


def test_load_refuses_every_kind_of_bad_file(tmp_path, model_path):
    for name in _bad_files(tmp_path, model_path):
        with pytest.raises(ModelLoadError) as info:
            model_io.load(tmp_path / name)
        assert "\n" not in str(info.value)


def test_load_returns_the_model_and_leaves_the_file_alone(model_path):
    before = model_path.read_bytes()
    model = model_io.load(model_path)
    assert [n.op_type for n in model.graph.node] == ["Conv", "BatchNormalization", "Relu"]
    assert model_path.read_bytes() == before


def _save_external(model, path, location):
    model = onnx.ModelProto.FromString(model.SerializeToString())
    external_data_helper.convert_model_to_external_data(
        model, all_tensors_to_one_file=True, location=location, size_threshold=0
    )
    onnx.save(model, path)


def test_external_data_outside_the_folder_is_refused(tmp_path):
    inner = tmp_path / "inner"
    inner.mkdir()
    model = graphs.build(graphs.CONV_BN_RELU)
    _save_external(model, inner / "m.onnx", "w.bin")
    os.replace(inner / "w.bin", tmp_path / "w.bin")
    proto = onnx.load(inner / "m.onnx", load_external_data=False)
    for t in proto.graph.initializer:
        for entry in t.external_data:
            if entry.key == "location":
                entry.value = "../w.bin"
    onnx.save(proto, inner / "m.onnx")
    with pytest.raises(ModelLoadError, match="outside the model's folder"):
        model_io.load(inner / "m.onnx")


def test_external_data_inside_the_folder_loads(tmp_path):
    model = graphs.build(graphs.CONV_BN_RELU)
    _save_external(model, tmp_path / "m.onnx", "m.onnx.data")
    assert (tmp_path / "m.onnx.data").stat().st_size > 0
    loaded = model_io.load(tmp_path / "m.onnx")
    feeds = graphs.feeds_for(model)
    np.testing.assert_array_equal(graphs.run(model, feeds)[0], graphs.run(loaded, feeds)[0])


def test_save_is_atomic_and_leaves_no_temporary_files(tmp_path):
    model = graphs.build(graphs.CONV_BN_RELU)
    written = model_io.save(model, tmp_path / "out.onnx")
    assert written == [tmp_path / "out.onnx"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx"]
    assert onnx.load(tmp_path / "out.onnx") == model


def test_save_with_external_data_round_trips_without_touching_the_model(tmp_path):
    model = graphs.build(graphs.CONV_BN_RELU)
    before = model.SerializeToString()
    written = model_io.save(model, tmp_path / "out.onnx", external=True)
    assert [p.name for p in written] == ["out.onnx", "out.onnx.data"]
    assert model.SerializeToString() == before
    loaded = model_io.load(tmp_path / "out.onnx")
    feeds = graphs.feeds_for(model)
    np.testing.assert_array_equal(graphs.run(model, feeds)[0], graphs.run(loaded, feeds)[0])


def test_save_into_a_missing_folder_is_a_user_error(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        model_io.save(graphs.build(graphs.CONV_BN_RELU), tmp_path / "no" / "out.onnx")


def test_opset_outside_the_supported_range_is_refused():
    model = graphs.build(graphs.CONV_BN_RELU)
    model.opset_import[0].version = onnx.defs.onnx_opset_version() + 5
    with pytest.raises(UnsupportedModelError, match="newer than"):
        model_io.check_opset(model)
    model.opset_import[0].version = 6
    with pytest.raises(UnsupportedModelError, match="older than"):
        model_io.check_opset(model)


def test_a_shapeless_value_info_for_an_output_keeps_the_outputs_declared_shape():
    # some exporters (ddddocr's models) repeat a graph output in value_info without a
    # shape; graphsurgeon takes that entry first, which erased the output's shape
    model = graphs.build(graphs.CONV_BN_RELU)
    model.graph.value_info.append(
        onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)
    )
    graph = model_io.import_graph(model)
    assert graph.outputs[0].shape == ["N", 4, 8, 8]
    assert graph.outputs[0].dtype == np.float32
