"""`graphcomp bench` through typer's runner: JSON fields, Markdown, exit codes, a zoo model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from graphcomp.cli import app
from tests import graphs

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]
ZOO = ["mobilenetv2_s", "resnet_s", "vgg_s", "densecat_s", "vit_s"]
ROW_KEYS = {
    "config",
    "kind",
    "note",
    "path",
    "params",
    "macs",
    "disk_bytes",
    "weight_bytes",
    "latency",
    "compile_s",
    "compile_peak_mb",
    "compile_base_mb",
    "top1",
    "agreement",
    "verification",
    "error",
    "traceback",
}


@pytest.fixture
def bn_model(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(graphs.build(graphs.CONV_BN_RELU), path)
    return path


def _check_json(
    data: dict, configs: list[str], batches: list[int], runs: int, scores: bool
) -> None:
    assert [r["config"] for r in data["rows"]] == configs
    assert data["machine"]["cpu_count"] >= 1 and data["settings"]["batches"] == batches
    for row in data["rows"]:
        assert set(row) == ROW_KEYS and row["error"] is None
        assert row["params"] > 0 and row["disk_bytes"] > 0 and row["weight_bytes"] > 0
        assert [(t["batch"], t["threads"]) for t in row["latency"]] == [
            (b, t) for b in batches for t in (1, 0)
        ]
        assert all(t["median_ms"] > 0 and t["runs"] == runs for t in row["latency"])
        assert (row["agreement"] is not None) == scores  # top-1 needs [N, C] class scores
    for row in data["rows"][1:]:
        assert row["compile_s"] > 0 and row["compile_peak_mb"] >= row["compile_base_mb"]
        assert row["verification"]["verdict"] == "passed"


def test_bench_json_on_a_small_model(bn_model):
    result = runner.invoke(
        app,
        [
            "bench",
            str(bn_model),
            "--passes",
            "none",
            "--passes",
            "fold-bn,cleanup",
            "--runs",
            "3",
            "--warmup",
            "1",
            "--batch",
            "1,2",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    _check_json(data, ["original", "fold-bn,cleanup"], [1, 2], 3, scores=False)
    assert data["rows"][1]["params"] == data["rows"][0]["params"] - 16  # 4 BN params x 4
    assert data["rows"][0]["top1"] is None  # no eval set given


def test_bench_markdown_and_terminal_table(bn_model):
    md = runner.invoke(app, ["bench", str(bn_model), "-p", "cleanup", "--runs", "2", "--markdown"])
    assert md.exit_code == 0, md.output
    table = [line for line in md.stdout.splitlines() if line.startswith("| ")]
    assert len(table) == 3 and table[1].startswith("| original (float) |")
    assert "median (min) ms of 2 timed runs" in md.stdout
    plain = runner.invoke(app, ["bench", str(bn_model), "-p", "cleanup", "--runs", "2"])
    assert plain.exit_code == 0 and "cleanup" in plain.stdout and "SQNR" in plain.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--baseline", "ort-static-pt"], "give --calibration-data"),
        (["--passes", "none"], "nothing to compare"),
        (["--passes", "nope"], "unknown pass 'nope'"),
        (["-p", "cleanup", "--batch", "one"], "bad --batch"),
    ],
)
def test_bench_user_errors_exit_2_with_one_line(bn_model, args, message):
    result = runner.invoke(app, ["bench", str(bn_model), *args])
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output


def test_bench_missing_model_exits_2(tmp_path):
    result = runner.invoke(app, ["bench", str(tmp_path / "none.onnx"), "-p", "cleanup"])
    assert result.exit_code == 2 and "no such file" in result.output


def _zoo_model() -> Path:
    present = [p for p in (ROOT / "models" / f"{n}.onnx" for n in ZOO) if p.exists()]
    if not present or not (ROOT / "models" / "data" / "glyphs_eval.npz").exists():
        pytest.skip("the model zoo (models/*.onnx, models/data/glyphs_eval.npz) is not built")
    return min(present, key=lambda p: p.stat().st_size)


def test_bench_json_fields_on_a_zoo_model(tmp_path):
    model = _zoo_model()
    data = np.load(ROOT / "models" / "data" / "glyphs_eval.npz")
    small = tmp_path / "eval.npz"  # 256 labelled samples keep the test fast
    np.savez(small, input=data["input"][:256], label=data["label"][:256])
    result = runner.invoke(
        app,
        [
            "bench",
            str(model),
            "-p",
            "none",
            "-p",
            "fold-bn,cleanup",
            "--eval",
            str(small),
            "--runs",
            "3",
            "--warmup",
            "1",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    _check_json(out, ["original", "fold-bn,cleanup"], [1], 3, scores=True)
    orig, done = out["rows"]
    assert orig["top1"] > 0.5  # trained weights, far above 1/classes
    assert done["top1"] == orig["top1"] and done["agreement"] == 1.0
    assert orig["macs"] > 1e5 and done["macs"] == orig["macs"]
