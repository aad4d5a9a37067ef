"""verify: fidelity statistics are right, thresholds decide, inputs are reproducible."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from graphcomp import verify
from graphcomp.core.errors import ConfigError
from graphcomp.measure import inputs
from tests import graphs


def test_compare_arrays_on_known_numbers():
    ref = np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    new = ref + np.array([[0.0, 0.0, 0.5], [0.0, 0.0, 0.0]])
    s = verify.compare_arrays("y", ref, new)
    assert s.max_abs_err == 0.5 and s.mean_abs_err == pytest.approx(0.5 / 6)
    assert s.rel_err == pytest.approx(0.5 / 3)
    assert s.sqnr_db == pytest.approx(10 * math.log10(28 / 0.25))
    assert s.cosine == pytest.approx(
        float(ref.ravel() @ new.ravel()) / (np.linalg.norm(ref) * np.linalg.norm(new))
    )
    assert s.top1_agreement == 1.0
    flipped = verify.compare_arrays("y", ref, ref[:, ::-1].copy())
    assert flipped.top1_agreement == 0.0


def test_relative_error_of_all_tiny_outputs_is_taken_against_the_floor():
    ref = np.full((2, 3), 1e-6)
    s = verify.compare_arrays("p", ref, ref + 1e-8)
    assert s.rel_err == pytest.approx(1e-8 / verify.REL_FLOOR)


def test_identical_outputs_have_infinite_sqnr_and_shape_mismatch_fails():
    ref = np.ones((2, 3), np.float32)
    assert verify.compare_arrays("y", ref, ref).sqnr_db == math.inf
    bad = verify.compare_arrays("y", ref, np.ones((2, 4), np.float32))
    assert bad.rel_err == math.inf
    assert verify.verdict([bad], verify.Thresholds(max_rel_err=1.0))


def test_verdict_lists_every_missed_threshold():
    s = verify.compare_arrays("y", np.eye(3), np.eye(3)[::-1].copy())
    failures = verify.verdict([s], verify.Thresholds(1e-4, 0.99, 0.5))
    assert [f.split(":")[1].split()[0] for f in failures] == ["relative", "cosine", "top-1"]
    assert verify.verdict([s], verify.Thresholds()) == []


def test_verify_same_model_passes_with_zero_error_and_reports_inputs():
    model = graphs.build(graphs.CONV_BN_RELU)
    result = verify.verify(model, model, verify.Thresholds(max_rel_err=1e-6))
    assert result.passed and result.needed_rtol == 0.0
    assert result.outputs[0].shape == [8, 4, 8, 8]
    assert result.to_dict()["input_source"] == "seeded N(0,1), seed 0"


def test_user_inputs_and_shapes(tmp_path):
    model = graphs.build(graphs.CONV_BN_RELU)
    np.savez(tmp_path / "x.npz", x=np.zeros((3, 3, 8, 8), np.float64))
    result = verify.verify(model, model, inputs=tmp_path / "x.npz")
    assert result.outputs[0].shape == [3, 4, 8, 8]
    shaped = verify.verify(model, model, input_shapes={"x": [5, 3, 8, 8]})
    assert shaped.outputs[0].shape == [5, 4, 8, 8]
    np.savez(tmp_path / "bad.npz", other=np.zeros(3))
    with pytest.raises(ConfigError, match="no array named 'x'"):
        verify.verify(model, model, inputs=tmp_path / "bad.npz")


@pytest.mark.parametrize("text", ["x", "x:1xa", ":1x3", "x:0x3"])
def test_bad_input_shapes_are_config_errors(text):
    with pytest.raises(ConfigError, match="bad --input-shape"):
        inputs.parse_shapes([text])


def test_parse_shapes():
    assert inputs.parse_shapes(["input:1x3x224x224", "ids:2x16"]) == {
        "input": [1, 3, 224, 224],
        "ids": [2, 16],
    }


ZOO = Path(__file__).resolve().parents[2] / "models"


def test_three_verdicts_on_a_zoo_model():
    import graphcomp
    from graphcomp import api

    model = ZOO / "resnet_s.onnx"
    _, lossless = graphcomp.compress(model, "cleanup")
    assert lossless.verification.verdict == "passed"  # held to 1e-4 automatically
    _, lossy = graphcomp.compress(model, "prune(ratio=0.3)")
    assert lossy.verification.verdict == "unchecked" and not lossy.verification.passed
    assert lossy.to_dict()["verification"]["verdict"] == "unchecked"
    with pytest.raises(api.VerificationFailedError) as failed:
        graphcomp.compress(model, "prune(ratio=0.9)", thresholds=verify.Thresholds(min_cosine=0.99))
    assert failed.value.report.verification.verdict == "failed"


def test_a_wrecked_model_is_never_passed_and_the_summary_names_its_inputs():
    import io

    from rich.console import Console

    import graphcomp

    _, rep = graphcomp.compress(ZOO / "vgg_s.onnx", "prune(ratio=0.9)")
    assert rep.verification.verdict != "passed"
    console = Console(file=io.StringIO(), width=200)
    rep.render(console)
    text = console.file.getvalue()
    assert "verification on seeded" in text and "unchecked" in text
    assert "synthetic inputs estimate" in text
