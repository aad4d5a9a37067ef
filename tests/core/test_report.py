"""report: JSON carries every skip; the terminal groups skip reasons."""

from __future__ import annotations

import json

from rich.console import Console

from graphcomp import pipeline
from graphcomp.passes.dfq.dfq import DfqConfig, DfqPass
from graphcomp.passes.fold_bn import FoldBnPass
from graphcomp.report import Report, _reason_kind, pass_table
from tests import graphs


def _report():
    model = graphs.build(graphs.UNFOLDABLE_BN)
    result = pipeline.run(model, [FoldBnPass()])
    return Report(
        "m.onnx",
        "out.onnx",
        result.records,
        {"params": 10, "macs": 5, "bytes": 9},
        {"params": 5, "macs": 5, "bytes": 4},
    )


def test_json_report_lists_every_skip_reason(tmp_path):
    path = tmp_path / "r.json"
    _report().write_json(path)
    data = json.loads(path.read_text())
    reasons = [s["reason"] for s in data["passes"][0]["skipped"]]
    assert sorted(reasons) == [
        "input comes from Add, not Conv/ConvTranspose/Gemm",
        "output of Conv_2 is also read elsewhere",
    ]
    assert data["verification"] is None and data["graphcomp_version"]


def test_terminal_summary_groups_reasons_and_shows_ratios():
    console = Console(record=True, width=160)
    _report().render(console)
    text = console.export_text()
    assert "skipped: output of * is also read elsewhere" in text
    assert "params 10 -> 5 (0.500x)" in text


def test_reason_kind_blanks_names_and_numbers():
    assert _reason_kind("weight of /layer1/conv.0 is shared") == "weight of * is shared"


def test_a_composite_shows_one_row_per_step_in_table_and_json():
    model = graphs.build(graphs.CONV_BN_RELU_CONV)
    result = pipeline.run(model, [DfqPass(DfqConfig(prior="normal", equalize=True, correct=True))])
    report = Report("m.onnx", None, result.records, {}, {})
    console = Console(record=True, width=80)
    console.print(pass_table(report.passes))
    lines = console.export_text().splitlines()
    steps = ["simplify", "fold-bn", "stats", "equalize", "bias-correct", "ranges"]
    steps += ["measure-ranges", "qdq-core"]
    for step in steps:
        assert sum(line.startswith(f"│ dfq/{step} ") for line in lines) == 1, step
    data = report.to_dict()
    assert [p["name"] for p in data["passes"]] == [f"dfq/{s}" for s in steps]
    ranges = next(p for p in data["passes"] if p["name"] == "dfq/ranges")
    assert set(ranges["notes"]["weight_sqnr_db"]) == {"Conv_0", "Conv_3"}
    assert all(len(v) == 2 for v in ranges["notes"]["weight_sqnr_db"].values())
