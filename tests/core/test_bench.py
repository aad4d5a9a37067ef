"""bench: rows, sizes, latency, accuracy, verification, baselines and bad options."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from graphcomp.bench import baselines
from graphcomp.bench import run as bench
from graphcomp.bench import table as bench_table
from graphcomp.bench import timing as bench_measure
from graphcomp.bench.compile import run_child
from graphcomp.core.errors import ConfigError, UnsupportedModelError
from graphcomp.verify import Thresholds
from tests import graphs

CLASSIFIER = """
g (float[{batch}, 1, 8, 8] input, float[8, 1, 3, 3] w_c1, float[8] b_c1, float[8] bn_scale,
   float[8] bn_bias, float[8] bn_mean, float[8] bn_var, float[16, 8, 3, 3] w_c2,
   float[16] b_c2, float[10, 16] w_fc, float[10] b_fc) => (float[{batch}, 10] logits) {{
    c1 = Conv <pads = [1, 1, 1, 1]> (input, w_c1, b_c1)
    n1 = BatchNormalization <epsilon = 0.001> (c1, bn_scale, bn_bias, bn_mean, bn_var)
    r1 = Relu (n1)
    c2 = Conv <pads = [1, 1, 1, 1], strides = [2, 2]> (r1, w_c2, b_c2)
    r2 = Relu (c2)
    p = GlobalAveragePool (r2)
    f = Flatten (p)
    logits = Gemm <transB = 1> (f, w_fc, b_fc)
}}
"""
# Conv1 8*9+8, BN 4*8, conv2 16*72+16, fc 160+10; MACs per sample: 8*64*9 + 16*16*72 + 160
PARAMS, BN_PARAMS, MACS = 80 + 32 + 1168 + 170, 32, 4608 + 18432 + 160


def classifier(tmp_path: Path, batch: str = "N", name: str = "m.onnx") -> Path:
    path = tmp_path / name
    onnx.save(graphs.build(CLASSIFIER.format(batch=batch), seed=3), path)
    return path


def npz(tmp_path: Path, name: str, count: int, labels: bool = True, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    arrays = {"input": rng.standard_normal((count, 1, 8, 8)).astype(np.float16)}
    if labels:
        arrays["label"] = rng.integers(0, 10, count)
    np.savez(tmp_path / name, **arrays)
    return tmp_path / name


@pytest.fixture(scope="module")
def folded(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    model, eval_set = classifier(tmp), npz(tmp, "eval.npz", 300)
    options = bench.BenchOptions(
        configs=("none", "fold-bn,cleanup"), eval_data=eval_set, batches=(1, 4), runs=3, warmup=1
    )
    return model, eval_set, bench.bench(model, options)


def test_rows_are_original_then_each_pass_list(folded):
    _, _, result = folded
    assert [(r.config, r.kind) for r in result.rows] == [
        ("original", "original"),
        ("fold-bn,cleanup", "passes"),
    ]
    assert not result.failed and all(r.error is None for r in result.rows)
    assert result.rows[1].note == (
        "no calibration data; fold-bn: 1 changed, 0 skipped; cleanup: 0 changed, 0 skipped"
    )


def test_sizes_count_params_macs_and_bytes(folded):
    model, _, result = folded
    orig, done = result.rows
    assert (orig.params, orig.macs) == (PARAMS, MACS)
    assert (done.params, done.macs) == (PARAMS - BN_PARAMS, MACS)
    assert orig.disk_bytes == model.stat().st_size
    assert (orig.weight_bytes, done.weight_bytes) == (4 * PARAMS, 4 * (PARAMS - BN_PARAMS))


def test_latency_has_every_batch_and_thread_setting(folded):
    _, _, result = folded
    for row in result.rows:
        assert [(t.batch, t.threads) for t in row.latency] == [(1, 1), (1, 0), (4, 1), (4, 0)]
        for t in row.latency:
            assert t.runs == 3 and t.skipped is None
            assert 0 < t.min_ms <= t.p10_ms <= t.median_ms <= t.p90_ms


def test_top1_agreement_and_verification(folded):
    model, eval_set, result = folded
    data = np.load(eval_set)
    logits = graphs.run(onnx.load(model), {"input": data["input"].astype(np.float32)})[0]
    expected = float(np.mean(np.argmax(logits, axis=1) == data["label"]))
    orig, done = result.rows
    assert orig.top1 == pytest.approx(expected) and done.top1 == pytest.approx(expected)
    assert orig.agreement == 1.0 and done.agreement == 1.0
    assert orig.verification is None
    check = done.verification
    assert check["verdict"] == "passed" and check["thresholds"]["max_rel_err"] == 1e-4
    assert check["rel_err"] < 1e-5 and check["cosine"] > 0.999999


def test_compile_is_timed_and_its_memory_measured_in_a_child(folded):
    orig, done = folded[2].rows
    assert orig.compile_s is None and orig.compile_peak_mb is None
    assert done.compile_s > 0 and done.compile_peak_mb >= done.compile_base_mb > 10


def test_json_and_markdown_carry_every_row(folded):
    _, _, result = folded
    data = json.loads(json.dumps(result.to_dict()))
    assert data["machine"]["cpu_count"] >= 1 and data["settings"]["runs"] == 3
    row = data["rows"][1]
    for key in (
        "params",
        "macs",
        "disk_bytes",
        "weight_bytes",
        "latency",
        "compile_s",
        "compile_peak_mb",
        "top1",
        "agreement",
        "verification",
    ):
        assert row[key] is not None, key
    assert row["path"] is None  # compiled models live in a temporary folder unless kept
    assert data["settings"]["fidelity_inputs"].startswith("300 samples of ")
    text = bench_table.markdown(result)
    table = [line for line in text.splitlines() if line.startswith("|")]
    assert len(table) == 4 and len({line.count("|") for line in table}) == 1
    assert "| original (float) |" in text and "ms b=4 t=1" in text and "ms b=4 t=def(" in text
    assert "fold-bn: 1 changed" in text


def test_fixed_batch_model_skips_other_batch_sizes(tmp_path):
    model = classifier(tmp_path, batch="1")
    options = bench.BenchOptions(
        configs=("cleanup",),
        eval_data=npz(tmp_path, "e.npz", 7),
        batches=(1, 4),
        runs=2,
        warmup=0,
        out_dir=tmp_path,
    )
    result = bench.bench(model, options)
    orig, done = result.rows
    assert [t.skipped is None for t in done.latency] == [True, True, False, False]
    assert "fixed batch dim 1" in done.latency[2].skipped
    assert orig.agreement == 1.0 and done.agreement == 1.0
    assert done.path is not None and done.path.parent == tmp_path.resolve()
    assert result.to_dict()["rows"][1]["path"] == str(done.path)


def test_static_baseline_quantizes_weights_to_int8(tmp_path):
    model, calib = classifier(tmp_path), npz(tmp_path, "c.npz", 40, labels=False, seed=5)
    options = bench.BenchOptions(
        configs=("cleanup",),
        baselines=("ort-static-pc",),
        calibration_data=calib,
        runs=2,
        warmup=0,
        out_dir=tmp_path,
        pass_calibration=False,
    )
    orig, clean, base = bench.bench(model, options).rows
    assert clean.note.startswith("no calibration data; cleanup:")
    assert base.kind == "baseline" and base.error is None
    assert "per-channel" in base.note and "calibrated on 40 samples" in base.note
    assert "after quant_pre_process" in base.note
    quantized = onnx.load(base.path)
    assert graphs.op_count(quantized, "QuantizeLinear") >= 3
    assert base.weight_bytes < 0.4 * orig.weight_bytes
    assert base.verification["verdict"] == "unchecked"
    assert base.verification["sqnr_db"] > 15 and base.agreement > 0.8


def test_reader_batches_calibration_samples(tmp_path):
    calib = npz(tmp_path, "c.npz", 70, labels=False)
    reader = baselines.NpzReader(onnx.load(classifier(tmp_path)), calib)
    sizes = [len(b["input"]) for b in iter(reader.get_next, None)]
    assert sizes == [32, 32, 6] and reader.count == 70
    fixed = baselines.NpzReader(onnx.load(classifier(tmp_path, "1", "f.onnx")), calib)
    batches = list(iter(fixed.get_next, None))
    assert len(batches) == 70 and batches[0]["input"].dtype == np.float32


def test_weight_bytes_count_storage_type():
    weight = numpy_helper.from_array(np.ones((16, 9), np.int8), "w")
    scale = numpy_helper.from_array(np.float32(0.1), "s")
    zero = numpy_helper.from_array(np.int8(0), "z")
    int4 = helper.make_tensor("q4", onnx.TensorProto.INT4, [5], [1, 2, 3, 4, 5])
    const = helper.make_node(
        "Constant", [], ["k"], value=numpy_helper.from_array(np.zeros(3, np.float16))
    )
    graph = helper.make_graph(
        [const, helper.make_node("DequantizeLinear", ["w", "s", "z"], ["y"])],
        "g",
        [],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        [weight, scale, zero, int4],
    )
    assert bench_measure.weight_bytes(helper.make_model(graph)) == 144 + 4 + 1 + 3 + 6


def test_failed_compile_returns_the_error(tmp_path):
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    result = run_child(
        {
            "passes": "cleanup",
            "model": str(tmp_path / "bad.onnx"),
            "output": str(tmp_path / "o.onnx"),
        },
        tmp_path,
    )
    assert result["ok"] is False and "not an ONNX model" in result["error"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"configs": ("none",)}, "nothing to compare"),
        ({"baselines": ("ort-static-pt",)}, "give --calibration-data"),
        ({"baselines": ("ort-magic",)}, "unknown baseline"),
        ({"configs": ("cleanup",), "runs": 0}, "runs >= 1"),
        ({"configs": ("cleanup",), "batches": (0,)}, "positive"),
        ({"configs": ("cleanup",), "eval_data": Path("nope.npz")}, "no such file"),
    ],
)
def test_bad_options_are_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        bench.BenchOptions(**kwargs)


def test_bad_eval_set_and_bad_pass_fail_before_compiling(tmp_path):
    model = classifier(tmp_path)
    no_labels = npz(tmp_path, "x.npz", 4, labels=False)
    with pytest.raises(ConfigError, match="'input' and 'label'"):
        bench.bench(model, bench.BenchOptions(configs=("cleanup",), eval_data=no_labels))
    with pytest.raises(ConfigError, match="unknown pass 'nope'"):
        bench.bench(model, bench.BenchOptions(configs=("nope",)))
    with pytest.raises(ConfigError, match="bad --batch"):
        bench.parse_batches("1,x")
    assert bench.parse_batches("1,32") == (1, 32)


def test_user_thresholds_decide_the_verdict_and_passes_get_calibration(tmp_path):
    calib = npz(tmp_path, "c.npz", 8, labels=False)
    options = bench.BenchOptions(
        configs=("cleanup",),
        runs=1,
        warmup=0,
        calibration_data=calib,
        thresholds=Thresholds(min_cosine=1.5),
    )
    result = bench.bench(classifier(tmp_path), options)
    assert result.rows[1].verification["verdict"] == "failed" and result.failed
    assert result.rows[1].note.startswith(f"calibration data {calib}; cleanup:")


CUSTOM_OP = """
g (float[N, 4] x) => (float[N, 4] y) {
    y = my.domain.Magic (x)
}
"""


def test_model_onnxruntime_cannot_run_is_an_error_not_a_crash(tmp_path):
    model = onnx.parser.parse_model(
        '<ir_version: 8, opset_import: ["" : 17, "my.domain" : 1]>\n' + CUSTOM_OP
    )
    onnx.save(model, tmp_path / "custom.onnx")
    row = bench.Row("x", "passes", path=tmp_path / "custom.onnx")
    assert bench._runs(row, {}) is False and "onnxruntime cannot run it" in row.error
    with pytest.raises(UnsupportedModelError, match="onnxruntime cannot run it"):
        bench.bench(tmp_path / "custom.onnx", bench.BenchOptions(configs=("cleanup",)))


def test_verdict_compares_every_output_and_flags_missing_ones():
    ref = {"a": np.ones((4, 3), np.float32), "b": np.arange(8, dtype=np.float32)}
    same = bench._verdict(ref, dict(ref), Thresholds(max_rel_err=1e-4))
    assert same["verdict"] == "passed" and same["rel_err"] == 0.0
    noisy = {"a": ref["a"], "b": ref["b"] + 0.7}
    worse = bench._verdict(ref, noisy, Thresholds())
    assert worse["verdict"] == "unchecked" and worse["rel_err"] == pytest.approx(0.1)
    assert bench._verdict(ref, noisy, Thresholds(max_rel_err=0.05))["verdict"] == "failed"
    missing = bench._verdict(ref, {"a": ref["a"]}, Thresholds())
    assert missing["verdict"] == "failed" and "missing" in missing["failures"][0]


def test_large_images_get_fewer_seeded_samples_run_in_bounded_chunks(tmp_path, monkeypatch):
    path = tmp_path / "big.onnx"
    onnx.save(graphs.build(CLASSIFIER.format(batch="N").replace("8, 8]", "320, 320]"), 3), path)
    sess = bench_measure.inputs.session(path)
    feeds, _ = bench_measure.sample_inputs(sess, None, 256, {})
    assert len(feeds["input"]) == 32  # 256 // 8 at 320x320 (inputs.plan_synthetic)
    seen: list[int] = []
    real = bench_measure.inputs.session

    def spy(*args, **kwargs):
        sess = real(*args, **kwargs)
        run = sess.run
        sess.run = lambda names, feed, *a: seen.append(len(feed["input"])) or run(names, feed, *a)
        return sess

    monkeypatch.setattr(bench_measure.inputs, "session", spy)
    assert len(bench_measure.outputs(path, feeds)["logits"]) == 32
    assert max(seen) * 320 * 320 * 4 <= bench_measure.inputs.BLOCK_BYTES


def test_a_model_that_needs_longer_inputs_is_benched_at_the_grown_length(tmp_path):
    # a 200-tap Conv does not run at the default 64 samples; bench grows it like `run`
    path = tmp_path / "frames.onnx"
    onnx.save(onnx.parser.parse_model(graphs.FRAME_CONV), path)
    options = bench.BenchOptions(configs=("cleanup",), batches=(1,), runs=2, warmup=0)
    orig, done = bench.bench(path, options).rows
    assert orig.error is None and done.error is None
    assert done.latency and done.latency[0].skipped is None
