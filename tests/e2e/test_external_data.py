"""Models with external data load, pass through cleanup, verify and save externally."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, external_data_helper, helper

import graphcomp
from tests import graphs


def test_external_data_model_round_trips_through_cleanup(tmp_path):
    model = graphs.build(graphs.IDENTITY_DROPOUT)
    external_data_helper.convert_model_to_external_data(
        model, all_tensors_to_one_file=True, location="weights.bin", size_threshold=0
    )
    onnx.save(model, tmp_path / "ext.onnx")
    out = tmp_path / "out.onnx"
    _, report = graphcomp.compress(tmp_path / "ext.onnx", "cleanup", output=out)
    assert report.verification.passed and report.verification.needed_rtol == 0.0
    assert (tmp_path / "out.onnx.data").stat().st_size == 16 * 4
    saved = onnx.load(out, load_external_data=False)
    assert all(external_data_helper.uses_external_data(t) for t in saved.graph.initializer)
    assert graphs.op_count(onnx.load(out), "Identity") == 1


ROWS = 1024  # rows of a huge weight written at a time


def _write_huge_model(folder, side: int = 16384, layers: int = 2):
    """A MatMul chain whose weights (side x side float32 each) are written straight to
    an external file in blocks of rows, so the >2 GB model is never built in memory by
    the test. Entries are k / (8 sqrt(side)) for k in -8..8, varying along both axes:
    every output column differs, so verification compares real numbers."""
    nodes, inits, name = [], [], "x"
    cols = np.arange(side)
    with open(folder / "huge.bin", "wb") as f:
        for i in range(layers):
            offset = f.tell()
            for start in range(0, side, ROWS):
                rows = np.arange(start, min(start + ROWS, side))[:, None]
                k = (rows * 7 + cols[None, :] * (13 + i)) % 17 - 8
                (k / (8 * np.sqrt(side))).astype(np.float32).tofile(f)
            init = TensorProto(
                name=f"w{i}",
                data_type=TensorProto.FLOAT,
                dims=[side, side],
                data_location=TensorProto.EXTERNAL,
            )
            for key, value in (
                ("location", "huge.bin"),
                ("offset", str(offset)),
                ("length", str(side * side * 4)),
            ):
                init.external_data.add(key=key, value=value)
            inits.append(init)
            nodes.append(helper.make_node("MatMul", [name, f"w{i}"], [f"h{i}"], name=f"mm{i}"))
            nodes.append(helper.make_node("Identity", [f"h{i}"], [f"i{i}"], name=f"id{i}"))
            name = f"i{i}"
    graph = helper.make_graph(
        nodes,
        "huge",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", side])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", side])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (folder / "huge.onnx").write_bytes(model.SerializeToString())


@pytest.mark.slow
def test_model_over_2gb_goes_through_cleanup_with_external_data(tmp_path):
    _write_huge_model(tmp_path)
    out = tmp_path / "out.onnx"
    _, report = graphcomp.compress(
        tmp_path / "huge.onnx", "cleanup", output=out, input_shapes={"x": [1, 16384]}
    )
    assert report.verification.passed
    assert (tmp_path / "out.onnx.data").stat().st_size == 2 * 16384 * 16384 * 4
    assert out.stat().st_size < 10_000_000
    onnx.checker.check_model(str(out))
