"""Inputs and the Python API: every dtype, shared dim names, calibration and spec forms."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

import graphcomp
from graphcomp import api
from graphcomp.core.errors import ConfigError
from graphcomp.measure import inputs
from graphcomp.verify import compare_arrays
from tests import graphs

DTYPES = {
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(int16)": np.int16,
    "tensor(uint16)": np.uint16,
    "tensor(uint32)": np.uint32,
    "tensor(uint64)": np.uint64,
    "tensor(float16)": np.float16,
    "tensor(bool)": np.bool_,
    "tensor(string)": np.object_,
}


def test_make_inputs_keeps_every_dtype_and_zero_sized_dims():
    args = [inputs.Arg(f"x{i}", t, [0, 3]) for i, t in enumerate(DTYPES)]
    feeds = inputs.make_inputs(args)
    for i, dtype in enumerate(DTYPES.values()):
        assert feeds[f"x{i}"].dtype == dtype and feeds[f"x{i}"].shape == (0, 3)
    words = inputs.make_inputs([inputs.Arg("s", "tensor(string)", [2, 2])])["s"]
    assert all(isinstance(w, str) for w in words.ravel())
    with pytest.raises(graphcomp.GraphcompError, match="--inputs"):
        inputs.make_inputs([inputs.Arg("b", "tensor(bfloat16)", [2])])


def test_a_dim_name_shared_by_two_inputs_gets_one_value():
    args = [
        inputs.Arg("ids", "tensor(int64)", ["batch", "seq"]),
        inputs.Arg("mask", "tensor(int64)", ["seq", "batch"]),
        inputs.Arg("x", "tensor(float)", [None, 4]),
    ]
    dims = inputs.resolve_dims(args)
    assert dims["ids"] == [8, 64] and dims["mask"] == [64, 8] and dims["x"] == [8, 4]
    fixed = inputs.resolve_dims(args, {"ids": [2, 5]})
    assert fixed["ids"] == [2, 5] and fixed["mask"] == [5, 2]


def test_user_fixed_shapes_are_never_resized_by_statistics():
    model = graphs.build(graphs.CONV_BN_RELU)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[0].dim_param = "N"
    shape = [1] + [d.dim_value for d in list(dims)[1:]]
    src = inputs.Source(samples=5, shapes={"x": shape})
    batches = list(src.batches(model, batch=4))
    assert len(batches) == 5 and all(list(b["x"].shape) == shape for b in batches)


def test_unknown_input_shape_name_and_rank_are_config_errors():
    model = graphs.build(graphs.CONV_BN_RELU)
    with pytest.raises(ConfigError, match="names no input 'nope'"):
        api.run_shapes(model, {"nope": [1, 2]}, None, None)
    with pytest.raises(ConfigError, match="dims given"):
        api.run_shapes(model, {"x": [1, 2]}, None, None)


def test_shapes_come_from_the_inputs_file(tmp_path):
    model = graphs.build(graphs.CONV_BN_RELU)
    value = model.graph.input[0]
    value.type.tensor_type.shape.dim[0].dim_param = "N"
    static = [d.dim_value for d in value.type.tensor_type.shape.dim][1:]
    path = tmp_path / "x.npz"
    np.savez(path, **{value.name: np.zeros([3, *static], np.float32)})
    assert api.run_shapes(model, None, path, None) == {value.name: [3, *static]}
    calib = {value.name: np.zeros([20, *static], np.float32)}
    assert api.run_shapes(model, None, None, calib) == {value.name: [8, *static]}


def test_compare_counts_matching_nan_and_inf_as_equal():
    a = np.array([np.nan, np.inf, -np.inf, 1.0])
    assert compare_arrays("y", a, a.copy()).rel_err == 0.0
    b = np.array([np.nan, np.inf, np.inf, 1.0])
    assert compare_arrays("y", a, b).rel_err == np.inf
    s = np.array(["a", "b"], dtype=object)
    assert compare_arrays("s", s, s.copy()).rel_err == 0.0
    assert compare_arrays("s", s, s[::-1].copy()).rel_err == np.inf


def test_inputs_that_are_not_an_npz_give_one_line(tmp_path):
    text = tmp_path / "README.md"
    text.write_text("# not arrays\n")
    model = graphs.build(graphs.CONV_BN_RELU)
    with pytest.raises(ConfigError) as info:
        graphcomp.compress(model, "cleanup", inputs=text)
    assert "not a numpy .npz file" in str(info.value) and "\n" not in str(info.value)
    assert "allow_pickle" not in str(info.value)


def _bn_model_and_samples():
    model = graphs.build(graphs.CONV_BN_RELU)
    value = model.graph.input[0]
    value.type.tensor_type.shape.dim[0].dim_param = "N"
    dims = [d.dim_value for d in value.type.tensor_type.shape.dim][1:]
    x = np.random.default_rng(0).standard_normal([6, *dims]).astype(np.float32)
    return model, value.name, x


def test_calibration_as_path_dict_or_iterable_of_feeds(tmp_path):
    model, name, x = _bn_model_and_samples()
    path = tmp_path / "c.npz"
    np.savez(path, **{name: x})
    got = [
        graphcomp.compress(model, "qdq", calibration_data=data, verify_output=False)[0]
        for data in (path, {name: x}, [{name: x[:3]}, {name: x[3:]}])
    ]
    assert got[0].SerializeToString() == got[1].SerializeToString()
    assert got[1].SerializeToString() == got[2].SerializeToString()


def test_a_scalar_calibration_array_gives_one_line(tmp_path):
    model, name, _ = _bn_model_and_samples()
    path = tmp_path / "c.npz"
    np.savez(path, **{name: np.float32(1.0)})
    for data in (path, {name: np.float32(1.0)}):
        with pytest.raises(ConfigError, match="is a scalar") as info:
            graphcomp.compress(model, "qdq", calibration_data=data)
        assert "\n" not in str(info.value)


def test_list_of_tables_spec_form():
    model = graphs.build(graphs.CONV_BN_RELU)
    out, report = graphcomp.compress(
        model, ["fold-bn", {"name": "prune", "ratio": 0.25}], verify_output=False
    )
    assert [r.result.name for r in report.passes] == ["fold-bn", "prune"]
    assert report.passes[1].config["ratio"] == 0.25
    onnx.checker.check_model(out)
    with pytest.raises(ConfigError, match="cannot run after 'dfq'"):
        graphcomp.compress(model, ["dfq", {"name": "prune"}])


def test_string_model_verifies_with_generated_and_given_inputs(tmp_path):
    s = onnx.TensorProto.STRING
    graph = helper.make_graph(
        [helper.make_node("Equal", ["a", "b"], ["y"])],
        "g",
        [
            helper.make_tensor_value_info("a", s, ["n"]),
            helper.make_tensor_value_info("b", s, ["n"]),
        ],
        [helper.make_tensor_value_info("y", onnx.TensorProto.BOOL, ["n"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    _, report = graphcomp.compress(model, "cleanup")
    assert report.verification.passed
    path = tmp_path / "in.npz"
    np.savez(path, a=np.array(["x", "y"]), b=np.array(["x", "z"]))
    _, report = graphcomp.compress(model, "cleanup", inputs=path)
    assert report.verification.passed and report.verification.outputs[0].shape == [2]


def test_a_model_that_needs_longer_inputs_gets_them_with_a_warning():
    # a 200-tap Conv (an STFT frame) does not run at the default length of 64 samples
    model = onnx.parser.parse_model(graphs.FRAME_CONV)
    shapes = api.runnable_shapes(inputs.session(model), {})
    assert shapes == {"x": [8, 1, 256]}
    _, report = graphcomp.compress(model, "cleanup")
    assert report.verification is not None and report.verification.passed
    assert any("x: onnxruntime does not run" in w and "8x1x256" in w for w in report.warnings)
    given = {"x": [2, 1, 300]}
    assert api.runnable_shapes(inputs.session(model), given) == given


STATEFUL = """
<ir_version: 8, opset_import: ["" : 17]>
step (float[1, 4] x, float[2, 1, 4] h) => (float[2, 1, 4] y) {
    y = Add(x, h)
}
"""


def test_calibration_of_a_batch_1_model_runs_one_sample_per_call(tmp_path):
    # samples joined on axis 0: 5 samples are 5 rows of x and 10 rows of the [2, 1, 4] state
    model = onnx.parser.parse_model(STATEFUL)
    data = {"x": np.ones((5, 4), np.float32), "h": np.zeros((10, 1, 4), np.float32)}
    src = inputs.Source(data)
    assert src.count(model) == 5
    shapes = [(b["x"].shape, b["h"].shape) for b in src.batches(model, batch=4)]
    assert shapes == [((1, 4), (2, 1, 4))] * 5
    np.savez(tmp_path / "cal.npz", **data)
    _, report = graphcomp.compress(model, "qdq", calibration_data=tmp_path / "cal.npz")
    assert report.verification is not None


STATE_STREAM = """
<ir_version: 8, opset_import: ["" : 17]>
stream (float[N, T] x, float[2, ?, 4] h) => (float[2, ?, 4] z) {
    one = Constant <value = int64[1] {1}> ()
    x3 = Unsqueeze (x, one)
    s = Constant <value = int64[3] {1, 1, 200}> ()
    w = ConstantOfShape <value = float[1] {0.01}> (s)
    y = Conv (x3, w)
    m = ReduceMean <axes = [1, 2], keepdims = 0> (y)
    ends = Constant <value = int64[2] {0, 2}> ()
    m3 = Unsqueeze (m, ends)
    z = Add (h, m3)
}
"""


def test_grown_samples_keep_an_unnamed_batch_axis_of_a_state_at_the_batch():
    # h's unnamed axis 1 must equal x's batch: growing both, or h alone, cannot run
    model = onnx.parser.parse_model(STATE_STREAM)
    shapes = api.runnable_shapes(inputs.session(model), {})
    assert shapes == {"x": [8, 256], "h": [2, 8, 4]}
