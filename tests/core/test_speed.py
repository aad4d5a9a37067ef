"""The quick latency check: a ratio in the report, a warning only for a slower output."""

from __future__ import annotations

from pathlib import Path

import graphcomp
from graphcomp.measure import speed

MODEL = Path(__file__).resolve().parents[2] / "models" / "resnet_s.onnx"


def test_the_report_carries_the_latency_ratio():
    _, report = graphcomp.compress(MODEL, "cleanup")
    assert report.latency_ratio is not None and report.latency_ratio > 0
    assert report.to_dict()["latency_ratio"] == round(report.latency_ratio, 3)


def test_a_slower_output_is_a_warning(monkeypatch):
    monkeypatch.setattr(speed, "latency_ratio", lambda *args, **kwargs: 1.8)
    _, report = graphcomp.compress(MODEL, "cleanup")
    assert any("1.80x the original's latency" in w for w in report.warnings)
    monkeypatch.setattr(speed, "latency_ratio", lambda *args, **kwargs: 0.6)
    _, report = graphcomp.compress(MODEL, "cleanup")
    assert not any("latency" in w for w in report.warnings)


def test_no_check_without_a_measurement():
    assert speed.warning(None) is None and speed.warning(1.0) is None


def test_a_slower_first_reading_is_measured_again_and_the_second_counts(monkeypatch):
    # scripted run times (s): the budget probe, warm-up pairs, then the timed pairs
    head = [0.01] + [0.01, 0.01] * speed.WARMUP
    times = iter(head + [0.01, 0.02] * speed.RUNS + [0.01, 0.01] * speed.CONFIRM_RUNS)
    monkeypatch.setattr(speed, "_once", lambda sess, feeds: next(times))
    assert speed.latency_ratio(MODEL, MODEL) == 1.0
    times = iter(head + [0.01, 0.02] * (speed.RUNS + speed.CONFIRM_RUNS))
    monkeypatch.setattr(speed, "_once", lambda sess, feeds: next(times))
    assert speed.latency_ratio(MODEL, MODEL) == 2.0
