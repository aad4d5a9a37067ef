import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from typer.testing import CliRunner

from graphcomp.cli import app
from graphcomp.core.errors import ConfigError
from graphcomp.passes.qdq.config import RuleBook
from graphcomp.passes.qdq.qdq import QdqConfig, QdqPass
from graphcomp.passes.qdq.table import resolve
from tests import graphs

RULES = """
[default]
bits = 8
[default.weight]
per_channel = true
[ops.Gemm.weight]
per_channel = false
[layers."Conv_0"]
weight = { bits = 4 }
[layers."Conv_2"]
weight = { bits = 16 }
input = { bits = 16 }
[layers."Conv_4"]
method = "none"
[layers."Gemm_9"]
input = { method = "fixed", frac_bits = 4 }
"""
DTYPES = {4: onnx.TensorProto.INT4, 8: onnx.TensorProto.INT8, 16: onnx.TensorProto.INT16}
ACT_DTYPES = {
    ("uint", 8): onnx.TensorProto.UINT8,
    ("uint", 16): onnx.TensorProto.UINT16,
    ("int", 8): onnx.TensorProto.INT8,
    ("int", 16): onnx.TensorProto.INT16,
    ("uint", 4): onnx.TensorProto.UINT4,
    ("int", 4): onnx.TensorProto.INT4,
}


def _write(tmp_path, text, name="q.toml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _quantize(model, **fields):
    out, res = graphs.apply(model, QdqPass(QdqConfig(**fields)))
    return out, res.record("qdq/qdq-core").result


def _producers(model):
    return {o: n for n in model.graph.node for o in n.output}


def _observed(model, layer, tensor, role):
    """What the output graph does to `tensor` of `layer`: (method, format, per_channel)."""
    inits = {t.name: t for t in model.graph.initializer}
    prod = _producers(model)
    node = next(n for n in model.graph.node if n.name == layer)
    if role == "output":
        readers = [n for n in model.graph.node if tensor in n.input]
        q = next(
            (n for n in readers if n.op_type in ("QuantizeLinear", "DynamicQuantizeLinear")), None
        )
        return _describe(q, inits) if q else ("none", "float", False)
    if role == "input":
        for name in node.input:
            dq = prod.get(name)
            src = (
                prod.get(dq.input[0])
                if dq is not None and dq.op_type == "DequantizeLinear"
                else None
            )
            if src is not None and src.input[0] == tensor:
                return _describe(src, inits)
        assert tensor in node.input, (layer, tensor)
        return "none", "float", False
    dq = prod.get(node.input[{"weight": 1, "bias": 2}[role]])
    if dq is None or dq.op_type != "DequantizeLinear":
        return "none", "float", False
    codes = inits[dq.input[0]]
    scale = inits.get(dq.input[1])
    if scale is None:  # a bias scale: Mul(input scale, weight scale)
        scale = inits[prod[dq.input[1]].input[1]]
    return "quantized", codes.data_type, numpy_helper.to_array(scale).ndim > 0


def _describe(q, inits):
    if q.op_type == "DynamicQuantizeLinear":
        return "dynamic", onnx.TensorProto.UINT8, False
    zp = inits[q.input[2]]
    return "quantized", zp.data_type, numpy_helper.to_array(inits[q.input[1]]).ndim > 0


def _expected(row):
    if row.method == "none":
        return "none", "float", False
    if row.method == "dynamic":
        return "dynamic", onnx.TensorProto.UINT8, False
    if row.format == "int32":
        return "quantized", onnx.TensorProto.INT32, row.granularity != "per-tensor"
    kind, bits = (
        row.format.split()[0].rstrip("0123456789"),
        int("".join(c for c in row.format.split()[0] if c.isdigit())),
    )
    return "quantized", ACT_DTYPES[(kind, bits)], row.granularity.startswith("per-channel")


BN_NET = graphs.CONV_BN_POOL_FC


@pytest.mark.parametrize("case", ["rules", "trt", "encoder", "pow2", "bn"])
def test_config_table_matches_the_output_graph_tensor_by_tensor(tmp_path, case):
    model = {"encoder": graphs.qdq_encoder, "bn": lambda: graphs.build(BN_NET)}.get(
        case, lambda: graphs.build(graphs.QDQ_CNN)
    )()
    fields = {
        "rules": {"qconfig": _write(tmp_path, RULES)},
        "trt": {"profile": "trt"},
        "encoder": {},
        "pow2": {"pow2": True},
        "bn": {},
    }[case]
    rows = [r for r in resolve(model, QdqConfig(**fields)) if r.role != "-"]
    out, _ = _quantize(model, **fields)
    assert len(rows) >= (8 if case == "bn" else 10)
    for row in rows:
        got = _observed(out, row.layer, row.tensor, row.role)
        assert got == _expected(row), row


def test_int4_int16_none_and_fixed_rules_take_effect(tmp_path):
    model = graphs.build(graphs.QDQ_CNN)
    out, result = _quantize(model, qconfig=_write(tmp_path, RULES))
    inits = {t.name: t for t in out.graph.initializer}
    prod = _producers(out)
    assert out.opset_import[0].version == 21 and result.notes["opset"] == "converted 17 -> 21"

    def weight_type(layer):
        node = next(n for n in out.graph.node if n.name == layer)
        dq = prod.get(node.input[1])
        return inits[dq.input[0]].data_type if dq is not None else None

    assert weight_type("Conv_0") == onnx.TensorProto.INT4
    assert weight_type("Conv_2") == onnx.TensorProto.INT16
    assert weight_type("Conv_4") is None  # method none: stays float
    assert weight_type("Gemm_9") == onnx.TensorProto.INT8
    conv2 = next(n for n in out.graph.node if n.name == "Conv_2")
    zp = inits[prod[prod[conv2.input[0]].input[0]].input[2]]
    assert zp.data_type == onnx.TensorProto.UINT16
    gemm = next(n for n in out.graph.node if n.name == "Gemm_9")
    assert numpy_helper.to_array(inits[prod[gemm.input[0]].input[1]]) == np.float32(2**-4)
    assert numpy_helper.to_array(inits[prod[gemm.input[1]].input[1]]).ndim == 0
    feeds = graphs.feeds_for(model)
    ref, got = graphs.run(model, feeds)[0], graphs.run(out, feeds)[0]
    assert np.corrcoef(ref.ravel(), got.ravel())[0, 1] > 0.95


def test_rule_precedence_and_json_file(tmp_path):
    path = _write(
        tmp_path,
        json.dumps(
            {
                "default": {"pow2": True, "input": {"bits": 16}},
                "ops": {"Conv": {"weight": {"per_channel": False}}},
                "layers": {"Conv_*": {"weight": {"bits": 4}}, "Conv_2": {"method": "none"}},
            }
        ),
        "q.json",
    )
    book = RuleBook(QdqConfig(qconfig=path))
    w0, w2 = book.rule("Conv_0", "Conv", "weight"), book.rule("Conv_2", "Conv", "weight")
    assert (w0.bits, w0.per_channel, w0.pow2) == (4, False, True)
    assert not w2.enabled and book.rule("Gemm_9", "Gemm", "input").bits == 16
    assert book.rule("Gemm_9", "Gemm", "weight").per_channel


@pytest.mark.parametrize(
    "text",
    [
        '[layers."x"]\nweight = { bits = 5 }',
        '[layers."x"]\nmethod = "fixed"',
        "[default]\ncolour = 1",
        "[weights]\nbits = 8",
        '[layers."x"]\nbias = { method = "fixed", scale = 1.0 }',
        "not toml [",
    ],
)
def test_bad_rule_files_are_config_errors(tmp_path, text):
    model = graphs.build(graphs.QDQ_CNN)
    with pytest.raises(ConfigError):
        book = RuleBook(QdqConfig(qconfig=_write(tmp_path, text)))
        for role in ("input", "weight", "bias", "output"):
            book.rule("x", "Conv", role)
        resolve(model, QdqConfig(qconfig=_write(tmp_path, text)))


def test_cli_config_prints_every_tensor(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(graphs.build(graphs.QDQ_CNN), path)
    rules = _write(tmp_path, RULES)
    res = CliRunner().invoke(app, ["config", str(path), "--qconfig", rules, "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.output)
    assert {(r["layer"], r["role"]) for r in rows} >= {("Conv_0", "weight"), ("Gemm_9", "bias")}
    conv0 = next(r for r in rows if r["layer"] == "Conv_0" and r["role"] == "weight")
    assert conv0["format"] == "int4 sym" and conv0["granularity"] == "per-channel(axis=0)"
    bad = CliRunner().invoke(app, ["config", str(path), "--profile", "gpu"])
    assert bad.exit_code == 2
