"""The MAC budget a prune or svd report states is the output model's own count."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

import graphcomp

ZOO = Path(__file__).resolve().parents[2] / "models"


@pytest.mark.parametrize("model", ["resnet_s_bn", "mobilenetv2_s", "vit_s"])
def test_svd_reported_mac_fraction_is_the_output_models(model):
    _, report = graphcomp.compress(ZOO / f"{model}.onnx", "svd(macs=0.8)", verify_output=False)
    (record,) = report.passes
    before, after = record.macs
    assert record.result.notes["macs_after_fraction"] == pytest.approx(after / before, abs=1e-3)


@pytest.mark.parametrize("model", ["resnet_s_bn", "mobilenetv2_s"])
def test_prune_expected_macs_are_the_output_models(model):
    _, report = graphcomp.compress(ZOO / f"{model}.onnx", "prune(macs=0.7)", verify_output=False)
    (record,) = report.passes
    assert record.result.notes["macs_before"] == record.macs[0]
    assert record.result.notes["macs_expected"] == record.macs[1]


def test_a_step_fidelity_warning_reaches_the_top_level_warnings():
    _, report = graphcomp.compress(ZOO / "resnet_s.onnx", "svd(macs=0.3)", verify_output=False)
    (record,) = report.passes
    assert "fidelity_warning" in record.result.notes
    assert any(w.startswith("svd: predicted relative") for w in report.warnings)


NO_MACS = """
<ir_version: 8, opset_import: ["" : 17]>
gate (float[N, 4] x) => (float[N, 4] y) {
    y = Relu(x)
}
"""


@pytest.mark.parametrize("spec", ["svd(macs=0.8)", "svd(params=0.8)", "prune(macs=0.9)"])
def test_a_budget_on_a_model_without_macs_is_a_no_op(spec):
    # a model whose layers all sit in If subgraphs counts no MACs in its main graph
    model = onnx.parser.parse_model(NO_MACS)
    _, report = graphcomp.compress(model, spec)
    (record,) = report.passes
    assert record.macs == (0, 0) and not record.result.changes
