"""Hostile models and arguments: exit 0 with a valid model, or exit 2 with one line.

Through `cleanup`, `qdq` and `dfq`: the input file is never modified and nothing
half-written is left in its folder (only the input, and the output on exit 0).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper
from typer.testing import CliRunner

from graphcomp.cli import app
from tests import graphs

runner = CliRunner()
PASS_LISTS = ["cleanup", "qdq", "dfq"]
SMALL = """
<ir_version: 8, opset_import: ["" : OPSET]>
g (float[1, 3, 8, 8] x) => (float[1, 4] y) {
    c = Conv <pads = [1, 1, 1, 1]> (x, w_c, b_c)
    r = Relu (c)
    p = GlobalAveragePool (r)
    f = Flatten (p)
    y = Gemm (f, w_g, b_g)
}
"""


def _init(model: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
    """Seeded initializers for the w_/b_ inputs of a parsed model."""
    rng = np.random.default_rng(seed)
    shapes = {"w_c": (4, 3, 3, 3), "b_c": (4,), "w_g": (4, 4), "b_g": (4,)}
    keep = [v for v in model.graph.input if v.name not in shapes]
    inits = [
        numpy_helper.from_array(rng.standard_normal(s).astype(np.float32) * 0.5, n)
        for n, s in shapes.items()
        if any(v.name == n for v in model.graph.input)
    ]
    del model.graph.input[:]
    model.graph.input.extend(keep)
    model.graph.initializer.extend(inits)
    return model


def _small(opset: int) -> onnx.ModelProto:
    text = SMALL.replace("OPSET", str(opset))
    text = text.replace(
        "g (float[1, 3, 8, 8] x)",
        "g (float[1, 3, 8, 8] x, float[4, 3, 3, 3] w_c, float[4] b_c, "
        "float[4, 4] w_g, float[4] b_g)",
    )
    return _init(onnx.parser.parse_model(text))


def _float16() -> onnx.ModelProto:
    model = _small(17)
    for tensor in model.graph.initializer:
        arr = numpy_helper.to_array(tensor).astype(np.float16)
        tensor.CopyFrom(numpy_helper.from_array(arr, tensor.name))
    for value in [*model.graph.input, *model.graph.output]:
        value.type.tensor_type.elem_type = onnx.TensorProto.FLOAT16
    return model


def _ir3_weights_as_inputs(opset: int = 8) -> onnx.ModelProto:
    model = _small(opset)
    model.ir_version = 3
    for tensor in model.graph.initializer:
        model.graph.input.append(
            helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims))
        )
    return model


def _if_loop() -> onnx.ModelProto:
    one = helper.make_tensor("one", onnx.TensorProto.FLOAT, [1], [1.0])
    then = helper.make_graph(
        [helper.make_node("Add", ["x", "one"], ["t"])],
        "then",
        [],
        [helper.make_tensor_value_info("t", onnx.TensorProto.FLOAT, [2, 3])],
        [one],
    )
    other = helper.make_graph(
        [helper.make_node("Sub", ["x", "one"], ["e"])],
        "else",
        [],
        [helper.make_tensor_value_info("e", onnx.TensorProto.FLOAT, [2, 3])],
        [one],
    )
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond"], ["cond_out"]),
            helper.make_node("Relu", ["acc"], ["acc_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", onnx.TensorProto.INT64, []),
            helper.make_tensor_value_info("cond", onnx.TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc", onnx.TensorProto.FLOAT, [2, 3]),
        ],
        [
            helper.make_tensor_value_info("cond_out", onnx.TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_out", onnx.TensorProto.FLOAT, [2, 3]),
        ],
    )
    nodes = [
        helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
        helper.make_node("Greater", ["s", "zero"], ["c"]),
        helper.make_node("If", ["c"], ["z"], then_branch=then, else_branch=other),
        helper.make_node("Loop", ["trip", "", "z"], ["y"], body=body),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 3])],
        [
            helper.make_tensor("zero", onnx.TensorProto.FLOAT, [], [0.0]),
            helper.make_tensor("trip", onnx.TensorProto.INT64, [], [2]),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _shared() -> onnx.ModelProto:
    return graphs.build(
        """
        g (float[1, 4, 6, 6] x, float[4, 4, 1, 1] w_s) => (float[1, 4, 6, 6] y) {
            a = Conv (x, w_s)
            r = Relu (a)
            y = Conv (r, w_s)
        }
        """
    )


def _dynamic() -> onnx.ModelProto:
    model = _small(17)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[0].dim_param, dims[2].dim_param, dims[3].dim_param = "N", "H", "W"
    model.graph.output[0].type.tensor_type.shape.dim[0].dim_param = "N"
    return model


def _custom(domain: str, op: str) -> onnx.ModelProto:
    model = _small(17)
    node = helper.make_node(op, ["y_pre"], ["y"], domain=domain)
    model.graph.node[-1].output[0] = "y_pre"
    model.graph.node.append(node)
    model.opset_import.append(helper.make_opsetid(domain, 1))
    return model


def _names(duplicate: bool) -> onnx.ModelProto:
    model = _small(17)
    renames = {"c": "çonv·出力", "r": "relu ✓"}
    for i, node in enumerate(model.graph.node):
        node.name = "same" if duplicate else f"节点 {i}"
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
    return model


def _output_is_input() -> onnx.ModelProto:
    model = _small(17)
    model.graph.output.append(model.graph.input[0])
    return model


def _no_nodes() -> onnx.ModelProto:
    value = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])
    graph = helper.make_graph([], "g", [value], [value])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _quantized(tmp_path) -> onnx.ModelProto:
    import graphcomp

    model, _ = graphcomp.compress(_small(17), "qdq", verify_output=False)
    return model


def _ort_dynamic(tmp_path) -> onnx.ModelProto:
    """onnxruntime's quantize_dynamic output: ConvInteger/MatMulInteger, no QDQ pairs."""
    from onnxruntime.quantization import quantize_dynamic

    source, target = tmp_path / "float.onnx", tmp_path / "dynamic.onnx"
    onnx.save(_small(17), source)
    quantize_dynamic(source, target, op_types_to_quantize=["Conv", "MatMul", "Gemm"])
    return onnx.load(target)


MODELS = {
    "opset 7": lambda _: _ir3_weights_as_inputs(7),
    "opset 13": lambda _: _small(13),
    "opset 21": lambda _: _small(21),
    "newest opset": lambda _: _small(onnx.defs.onnx_opset_version()),
    "float16": lambda _: _float16(),
    "IR-3 weights as inputs": lambda _: _ir3_weights_as_inputs(),
    "If/Loop subgraphs": lambda _: _if_loop(),
    "shared initializer": lambda _: _shared(),
    "dynamic dims": lambda _: _dynamic(),
    "already quantized": _quantized,
    "ort dynamic int8": _ort_dynamic,
    "custom domain op": lambda _: _custom("my.domain", "Frobnicate"),
    "com.microsoft op": lambda _: _custom("com.microsoft", "Gelu"),
    "unicode names": lambda _: _names(duplicate=False),
    "duplicate node names": lambda _: _names(duplicate=True),  # onnxruntime refuses it
    "output is an input": lambda _: _output_is_input(),
    "no nodes": lambda _: _no_nodes(),
}


# quantized models and the first op the refusal names
QUANTIZED = {"already quantized": "DequantizeLinear", "ort dynamic int8": "ConvInteger"}
# models every pass list must compress (the others may be refused in one line)
MUST_WORK = ("opset 13", "opset 21", "dynamic dims", "shared initializer", "If/Loop subgraphs")


def _check_run(folder, model_path, out, args):
    before = model_path.read_bytes()
    result = runner.invoke(app, ["run", str(model_path), "-o", str(out), *args])
    assert "Traceback" not in result.output, result.output
    assert result.exit_code in (0, 2), result.output
    assert model_path.read_bytes() == before
    left = sorted(p.name for p in folder.iterdir())
    if result.exit_code == 0:
        onnx.checker.check_model(str(out), full_check=True)
        assert left == sorted([model_path.name, out.name]), left
    else:
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
        assert left == [model_path.name], left
    return result


@pytest.mark.parametrize("passes", PASS_LISTS)
@pytest.mark.parametrize("label", list(MODELS))
def test_hostile_model_gives_a_valid_model_or_one_line(tmp_path, label, passes):
    folder = tmp_path / "m"
    folder.mkdir()
    path = folder / "model.onnx"
    path.write_bytes(MODELS[label](tmp_path).SerializeToString())
    result = _check_run(folder, path, folder / "out.onnx", ["-p", passes])
    if label in QUANTIZED and passes != "cleanup":
        assert result.exit_code == 2, result.output
        assert f"quantized already ({QUANTIZED[label]}" in result.stderr
    refused = ("no nodes", "custom domain op", "duplicate node names")
    if label not in refused and (passes == "cleanup" or label in MUST_WORK):
        assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    "args",
    [
        ["-p", "dfq,qdq"],
        ["-p", "dfq,prune"],
        ["-p", "shrink"],
        ["-p", "cleanup", "--input-shape", "nope:1x3x8x8"],
        ["-p", "cleanup", "--input-shape", "x:1x3x8"],
        ["-p", "cleanup", "--inputs", "README.md"],
    ],
)
def test_bad_arguments_one_line_before_anything_runs(tmp_path, args):
    folder = tmp_path / "m"
    folder.mkdir()
    path = folder / "model.onnx"
    path.write_bytes(_small(17).SerializeToString())
    result = _check_run(folder, path, folder / "out.onnx", args)
    assert result.exit_code == 2


def test_missing_output_folder_is_one_line(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    path = folder / "model.onnx"
    path.write_bytes(_small(17).SerializeToString())
    result = _check_run(folder, path, tmp_path / "nope" / "out.onnx", ["-p", "cleanup"])
    assert result.exit_code == 2 and "does not exist" in result.stderr
