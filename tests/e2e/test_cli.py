"""CLI end to end with typer's runner: exit codes, one-line errors, outputs, reports."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import external_data_helper, numpy_helper
from typer.testing import CliRunner

from graphcomp.cli import app
from tests import graphs

runner = CliRunner()


@pytest.fixture
def bn_model(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(graphs.build(graphs.CONV_BN_RELU), path)
    return path


def test_run_folds_bn_verifies_and_writes_report(tmp_path, bn_model):
    out, rep = tmp_path / "out.onnx", tmp_path / "r.json"
    result = runner.invoke(
        app,
        ["run", str(bn_model), "--passes", "fold-bn,cleanup", "-o", str(out), "--report", str(rep)],
    )
    assert result.exit_code == 0, result.output
    assert graphs.op_count(onnx.load(out), "BatchNormalization") == 0
    report = json.loads(rep.read_text())
    assert report["verification"]["passed"] is True
    assert report["verification"]["thresholds"]["max_rel_err"] == 1e-4
    assert report["verification"]["needed_rtol"] < 1e-5
    fold = report["passes"][0]
    assert fold["name"] == "fold-bn" and fold["changes"][0]["detail"].startswith("folded")
    assert report["before"]["params"] == 128 and report["after"]["params"] == 112


def test_run_json_output_and_default_output_path(bn_model):
    result = runner.invoke(app, ["run", str(bn_model), "-p", "cleanup", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["verification"]["passed"] is True
    assert (bn_model.parent / "m.compressed.onnx").exists()


def _bad_cases(tmp_path, bn_model):
    (tmp_path / "empty.onnx").write_bytes(b"")
    (tmp_path / "random.onnx").write_bytes(np.random.default_rng(1).bytes(200))
    data = bn_model.read_bytes()
    (tmp_path / "trunc.onnx").write_bytes(data[: len(data) // 3])
    (tmp_path / "tensor.onnx").write_bytes(
        numpy_helper.from_array(np.ones(3, np.float32), "t").SerializeToString()
    )
    _escaping_external_data(tmp_path)
    m = str(bn_model)
    return {
        "missing": ["run", str(tmp_path / "nope.onnx"), "-p", "cleanup"],
        "directory": ["run", str(tmp_path), "-p", "cleanup"],
        "empty": ["run", str(tmp_path / "empty.onnx"), "-p", "cleanup"],
        "random": ["run", str(tmp_path / "random.onnx"), "-p", "cleanup"],
        "truncated": ["run", str(tmp_path / "trunc.onnx"), "-p", "cleanup"],
        "non-model": ["run", str(tmp_path / "tensor.onnx"), "-p", "cleanup"],
        "unknown pass": ["run", m, "-p", "fold-bn,shrink"],
        "bad field": ["run", m, "-p", "cleanup(level=3)"],
        "output is input": ["run", m, "-p", "cleanup", "-o", m],
        "external escape": ["run", str(tmp_path / "sub" / "ext.onnx"), "-p", "cleanup"],
        "bad shape": ["run", m, "-p", "cleanup", "--input-shape", "x:1xz"],
        "passes and config": ["run", m, "-p", "cleanup", "-c", str(tmp_path / "c.toml")],
        "report folder missing": [
            "run",
            m,
            "-p",
            "cleanup",
            "--report",
            str(tmp_path / "no/r.json"),
        ],
        "report is a folder": ["run", m, "-p", "cleanup", "--report", str(tmp_path)],
        "unknown pass name": ["passes", "shrink"],
        "inputs not an npz": ["run", m, "-p", "cleanup", "--inputs", m],
        "unknown input-shape name": ["run", m, "-p", "cleanup", "--input-shape", "nope:1x3"],
        "pass after a quantizing one": ["run", m, "-p", "dfq,qdq"],
        "output folder missing": ["run", m, "-p", "cleanup", "-o", str(tmp_path / "no/o.onnx")],
    }


def _escaping_external_data(tmp_path):
    sub = tmp_path / "sub"
    sub.mkdir()
    model = graphs.build(graphs.CONV_BN_RELU)
    external_data_helper.convert_model_to_external_data(model, location="w.bin", size_threshold=0)
    for tensor in model.graph.initializer:  # onnx itself refuses to write '..' locations
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../w.bin"
    (tmp_path / "w.bin").write_bytes(b"\0" * 4096)
    (sub / "ext.onnx").write_bytes(model.SerializeToString())


def test_bad_input_is_one_line_exit_2_no_output_input_untouched(tmp_path, bn_model):
    cases = _bad_cases(tmp_path, bn_model)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    for label, args in cases.items():
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (label, result.output)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (label, result.stderr)
        assert "Traceback" not in result.output
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before  # nothing written, nothing modified


def test_failed_verification_exits_1_and_writes_no_output(tmp_path, bn_model):
    out = tmp_path / "out.onnx"
    result = runner.invoke(
        app,
        [
            "run",
            str(bn_model),
            "-p",
            "fold-bn",
            "-o",
            str(out),
            "--max-rel-err",
            "1e-12",
            "--keep-failed",
        ],
    )
    assert result.exit_code == 1
    assert "verification failed" in result.stderr
    assert f"kept the model as {tmp_path / 'out.failed.onnx'}" in result.stderr
    assert not out.exists() and (tmp_path / "out.failed.onnx").exists()


def test_version_and_one_pass_described_field_by_field():
    version = runner.invoke(app, ["--version"])
    assert version.exit_code == 0 and version.stdout.startswith("graphcomp 0.")
    described = runner.invoke(app, ["passes", "prune"])
    assert described.exit_code == 0
    assert "ratio" in described.stdout and "what it does" in described.stdout


def test_passes_inspect_and_verify_commands(tmp_path, bn_model):
    listed = runner.invoke(app, ["passes"])
    assert listed.exit_code == 0 and "fold-bn" in listed.stdout and "cleanup" in listed.stdout
    inspected = runner.invoke(app, ["inspect", str(bn_model), "--json"])
    assert json.loads(inspected.stdout)["macs"] == 6912
    same = runner.invoke(app, ["verify", str(bn_model), str(bn_model), "--max-rel-err", "0"])
    assert same.exit_code == 0
    other = tmp_path / "other.onnx"
    onnx.save(graphs.build(graphs.CONV_BN_RELU, seed=5), other)
    differs = runner.invoke(app, ["verify", str(bn_model), str(other), "--min-cosine", "0.999"])
    assert differs.exit_code == 1


@pytest.mark.parametrize("command", ["run", "passes", "inspect", "verify"])
def test_every_command_help_has_an_example(command):
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0 and "Example: graphcomp" in result.stdout


def test_model_that_cannot_run_on_default_shapes_gets_a_hint(tmp_path):
    text = """
    g (float[N, K] x) => (float[8, 4] y) {
        s = Constant <value = int64[2] {8, 4}> ()
        y = Reshape (x, s)
    }
    """
    path = tmp_path / "r.onnx"
    onnx.save(graphs.build(text), path)
    failed = runner.invoke(app, ["run", str(path), "-p", "cleanup"])
    assert failed.exit_code == 2
    assert failed.stderr.startswith("error: onnxruntime cannot run the original model on x:8x64")
    assert "--input-shape" in failed.stderr and len(failed.stderr.strip().splitlines()) == 1
    fixed = runner.invoke(app, ["run", str(path), "-p", "cleanup", "--input-shape", "x:2x16"])
    assert fixed.exit_code == 0, fixed.output
