"""svd pass: exact full-rank splits for every layer kind, tail-energy bounds, skips."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from graphcomp.core.errors import ConfigError
from graphcomp.passes.svd.svd import SvdConfig, SvdPass
from tests import graphs

REL_EXACT = 1e-4  # full-rank split: float rounding only

MATMUL_BIAS = """
g (float[N, 64] x, float[64, 48] w_a, float[48] b_a) => (float[N, 48] y) {
    h = MatMul (x, w_a)
    y = Add (h, b_a)
}
"""
GEMM_TRANS_B = """
g (float[N, 64] x, float[48, 64] w_a, float[48] b_a) => (float[N, 48] y) {
    y = Gemm <transB = 1, alpha = 0.7, beta = 1.3> (x, w_a, b_a)
}
"""
GEMM_TRANS_A = """
g (float[64, 5] x, float[64, 48] w_a, float[5, 48] b_a) => (float[5, 48] y) {
    y = Gemm <transA = 1, alpha = 1.5, beta = 0.5> (x, w_a, b_a)
}
"""
BATCHED_MATMUL = """
g (float[N, 7, 64] x, float[64, 48] w_a, float[48] b_a) => (float[N, 7, 48] y) {
    h = MatMul (x, w_a)
    y = Add (h, b_a)
}
"""
LEFT_MATMUL = """
g (float[N, 64, 5] x, float[48, 64] w_a) => (float[N, 48, 5] y) {
    y = MatMul (w_a, x)
}
"""
CONV = """
g (float[N, 12, 17, 15] x, float[20, 12, {kh}, {kw}] w_a, float[20] b_a)
  => (float[N, 20, ?, ?] y) {{
    y = Conv <{attrs}> (x, w_a, b_a)
}}
"""
CONV_CASES = {
    "3x3_stride2_asym_pads": (3, 3, "strides = [2, 2], pads = [0, 1, 2, 1]"),
    "5x3_dilation2": (5, 3, "dilations = [2, 2], pads = [2, 1, 3, 0]"),
    "3x3_stride_2x1_dilation_1x2": (
        3,
        3,
        "strides = [2, 1], dilations = [1, 2], pads = [1, 2, 1, 2]",
    ),
    "5x3_same_upper_stride2": (5, 3, 'strides = [2, 2], auto_pad = "SAME_UPPER"'),
    "3x5_valid": (3, 5, 'auto_pad = "VALID"'),
}


def _split(model: onnx.ModelProto, **config: object) -> tuple[onnx.ModelProto, object]:
    out, result = graphs.apply(model, SvdPass(SvdConfig(min_params=0, **config)))
    return out, result.records[0].result


def _rel_err(model: onnx.ModelProto, out: onnx.ModelProto, seed: int = 1) -> float:
    feeds = graphs.feeds_for(model, seed=seed)
    ref, got = graphs.run(model, feeds)[0], graphs.run(out, feeds)[0]
    return float(np.abs(ref - got).max() / np.abs(ref).max())


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(
    "text,op",
    [
        (MATMUL_BIAS, "MatMul"),
        (GEMM_TRANS_B, "Gemm"),
        (GEMM_TRANS_A, "Gemm"),
        (BATCHED_MATMUL, "MatMul"),
        (LEFT_MATMUL, "MatMul"),
    ],
)
def test_linear_split_exact_at_full_rank(text: str, op: str, seed: int) -> None:
    model = graphs.build(text, seed=seed)
    out, result = _split(model, overrides=("*:rank=48",))
    assert len(result.changes) == 1 and "rank 48/48" in result.changes[0].detail
    assert graphs.op_count(out, op) == 2
    assert _rel_err(model, out, seed) <= REL_EXACT
    onnx.checker.check_model(out)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("mode", ["channel", "spatial"])
@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_conv_split_exact_at_full_rank(case: str, mode: str, seed: int) -> None:
    kh, kw, attrs = CONV_CASES[case]
    model = graphs.build(CONV.format(kh=kh, kw=kw, attrs=attrs), seed=seed)
    full = 20 if mode == "channel" else min(12 * kh, 20 * kw)
    out, result = _split(model, mode=mode, overrides=(f"*:rank={full}",))
    assert [c.detail.split()[0] for c in result.changes] == [mode]
    assert graphs.op_count(out, "Conv") == 2
    kernels = sorted(
        tuple(a.ints) for n in out.graph.node for a in n.attribute if a.name == "kernel_shape"
    )
    expected = [(1, 1), (kh, kw)] if mode == "channel" else [(1, kw), (kh, 1)]
    assert kernels == sorted(expected)
    assert _rel_err(model, out, seed) <= REL_EXACT
    onnx.checker.check_model(out)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("rank", [4, 16, 40])
def test_truncated_linear_error_bounded_by_next_singular_value(seed: int, rank: int) -> None:
    # Bound: for each row x, ||x W - x W_r||_2 <= ||x||_2 * s_{r+1} (Eckart-Young, spectral).
    model = graphs.build(MATMUL_BIAS, seed=seed)
    weight = onnx.numpy_helper.to_array(model.graph.initializer[0]).astype(np.float64)
    s = np.linalg.svd(weight, compute_uv=False)
    out, _ = _split(model, overrides=(f"*:rank={rank}",))
    feeds = graphs.feeds_for(model, seed=seed, batch=16)
    err = graphs.run(model, feeds)[0] - graphs.run(out, feeds)[0]
    bound = np.linalg.norm(feeds["x"], axis=1) * s[rank]
    assert np.all(np.linalg.norm(err, axis=1) <= bound * (1 + 1e-4) + 1e-5)
    assert np.linalg.norm(err) > 0


@pytest.mark.parametrize("mode", ["channel", "spatial"])
def test_truncated_conv_weight_error_is_tail_energy(mode: str) -> None:
    # The split equals a dense conv with W_r, and ||W - W_r||_F^2 = tail energy of the form.
    kh, kw, attrs = CONV_CASES["3x3_stride2_asym_pads"]
    model = graphs.build(CONV.format(kh=kh, kw=kw, attrs=attrs), seed=3)
    w = onnx.numpy_helper.to_array(model.graph.initializer[0]).astype(np.float64)
    matrix = (
        w.reshape(20, -1).T
        if mode == "channel"
        else w.transpose(1, 2, 0, 3).reshape(12 * kh, 20 * kw)
    )
    u, s, vt = np.linalg.svd(matrix, full_matrices=False)
    rank = 6
    low = (u[:, :rank] * s[:rank]) @ vt[:rank]
    w_r = (
        low.T.reshape(w.shape)
        if mode == "channel"
        else low.reshape(12, kh, 20, kw).transpose(2, 0, 1, 3)
    )
    assert np.isclose(np.sum((w - w_r) ** 2), np.sum(s[rank:] ** 2))
    bias = onnx.numpy_helper.to_array(model.graph.initializer[1])
    dense_r = graphs.build(
        CONV.format(kh=kh, kw=kw, attrs=attrs), seed=3, w_a=w_r.astype(np.float32), b_a=bias
    )
    out, _ = _split(model, mode=mode, overrides=(f"*:rank={rank}",), whiten="never")
    assert _rel_err(dense_r, out) <= REL_EXACT
    assert _rel_err(model, out) > 1e-3


def test_energy_rule_keeps_requested_energy_and_saves_macs() -> None:
    rng = np.random.default_rng(0)
    low_rank = (rng.standard_normal((256, 12)) @ rng.standard_normal((12, 192))).astype(np.float32)
    text = MATMUL_BIAS.replace("64", "256").replace("48", "192")
    model = graphs.build(
        text, w_a=low_rank + 0.01 * rng.standard_normal((256, 192)).astype(np.float32)
    )
    out, result = _split(model, energy=0.99)
    assert len(result.changes) == 1 and "rank 16/192" in result.changes[0].detail
    assert _rel_err(model, out) < 0.05


def test_energy_rule_keeps_dense_when_no_rank_saves_macs() -> None:
    model = graphs.build(MATMUL_BIAS)  # random weight: 0.99 energy needs nearly full rank
    out, result = _split(model, energy=0.99)
    assert not result.changes and graphs.op_count(out, "MatMul") == 1
    assert "saves enough" in result.skipped[0].reason


DEPTHWISE_AND_SHARED = """
g (float[N, 8, 9, 9] x, float[8, 1, 3, 3] w_dw, float[N, 64] v, float[64, 64] w_s)
  => (float[N, 8, 7, 7] y, float[N, 64] z) {
    y = Conv <group = 8> (x, w_dw)
    a = MatMul (v, w_s)
    z = MatMul (a, w_s)
}
"""


def test_depthwise_and_shared_weights_are_skipped_with_reasons() -> None:
    model = graphs.build(DEPTHWISE_AND_SHARED)
    out, result = _split(model, rank_ratio=0.1)
    reasons = sorted(s.reason for s in result.skipped)
    assert not result.changes
    assert any("depthwise" in r for r in reasons)
    assert sum("shared" in r for r in reasons) == 2
    assert _rel_err(model, out) == 0.0


MLP = """
g (float[N, 8, 96] x, float[96, 256] w_1, float[256] b_1, float[256, 96] w_2, float[96] b_2,
   float[96, 256] w_3, float[256] b_3) => (float[N, 8, 256] y) {
    h1 = MatMul (x, w_1)
    a1 = Add (h1, b_1)
    r1 = Relu (a1)
    h2 = MatMul (r1, w_2)
    a2 = Add (h2, b_2)
    h3 = MatMul (a2, w_3)
    y = Add (h3, b_3)
}
"""


def _mlp_with_low_rank_outer_layers(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)

    def low(rows: int, cols: int) -> np.ndarray:
        w = rng.standard_normal((rows, 16)) @ rng.standard_normal((16, cols)) / 4
        return (w + 0.01 * rng.standard_normal((rows, cols))).astype(np.float32)

    return graphs.build(MLP, seed=seed, w_1=low(96, 256), w_3=low(96, 256))


@pytest.mark.parametrize("allocate", ["energy", "sensitivity"])
def test_macs_budget_is_met_within_five_percent(allocate: str) -> None:
    model = _mlp_with_low_rank_outer_layers()
    out, run = graphs.apply(model, SvdPass(SvdConfig(min_params=0, macs=0.6, allocate=allocate)))
    record = run.records[0]
    assert 0.55 <= record.macs[1] / record.macs[0] <= 0.6
    assert record.result.notes["budget_met"] is True
    # The budget is spent on the two (nearly) rank-16 layers; the full-rank one stays dense.
    assert sorted(c.node for c in record.result.changes) == ["MatMul_0", "MatMul_5"]
    assert _rel_err(model, out) < 0.02


def test_unreachable_budget_is_reported() -> None:
    model = graphs.build(MLP)
    _, result = _split(model, macs=0.01)
    assert result.notes["budget_met"] is False
    assert "out of reach" in result.notes["warning"]


def test_calibration_whitening_lowers_output_error() -> None:
    from graphcomp.core.pass_base import PassContext

    rng = np.random.default_rng(5)
    scales = np.exp(rng.normal(0, 1.5, 96)).astype(np.float32)  # outlier input channels
    model = graphs.build(MLP, seed=4)
    calib = {"x": (rng.standard_normal((64, 8, 96)) * scales).astype(np.float32)}
    plain, _ = _split(model, overrides=("*:rank=24",))
    ctx = PassContext(calibration=calib)
    white, result = graphs.apply(
        model, SvdPass(SvdConfig(min_params=0, overrides=("*:rank=24",))), ctx=ctx
    )
    assert "whitened" in result.records[0].result.changes[0].detail
    feeds = {"x": (rng.standard_normal((16, 8, 96)) * scales).astype(np.float32)}
    ref = graphs.run(model, feeds)[0]

    def err(m: onnx.ModelProto) -> float:
        return float(np.linalg.norm(graphs.run(m, feeds)[0] - ref) / np.linalg.norm(ref))

    assert err(white) < 0.7 * err(plain)


@pytest.mark.parametrize(
    "fields",
    [
        {"energy": 1.5},
        {"energy": 0.9, "macs": 0.5},
        {"mode": "diagonal"},
        {"overrides": ("x:rank=0",)},
        {"overrides": ("nocolon",)},
        {"min_saving": 1.0},
        {"shrink": 1.5},
    ],
)
def test_bad_config_is_rejected(fields: dict) -> None:
    with pytest.raises(ConfigError):
        SvdConfig(**fields)


GEMM_NO_C = """
g (float[N, 64] x, float[64, 48] w_a) => (float[N, 48] y) {
    y = Gemm <alpha = 0.5> (x, w_a)
}
"""
CONV_VALID = CONV.format(kh=3, kw=3, attrs='auto_pad = "VALID"')


@pytest.mark.parametrize(
    "text,mode",
    [
        (MATMUL_BIAS, "auto"),
        (GEMM_NO_C, "auto"),
        (LEFT_MATMUL, "auto"),
        (CONV_VALID, "channel"),
        (CONV_VALID, "spatial"),
    ],
)
def test_mean_shift_keeps_calibration_mean_output(text: str, mode: str) -> None:
    # With calibration data the split's mean output change (M - PQ)^T E[x] goes into the
    # bias. Linear layers: on the calibration set the mean of each output channel (over
    # every other axis) is then unchanged. Convs: exact up to the gap between a window's
    # mean and the channel mean, so the mean error must fall at least 10x.
    from graphcomp.core.pass_base import PassContext

    model = graphs.build(text, seed=2)
    feeds = graphs.feeds_for(model, seed=4, batch=32)
    name = next(iter(feeds))
    calib = {name: feeds[name] + 1.5}  # a large input mean
    ref = graphs.run(model, calib)[0]
    others = tuple(i for i in range(ref.ndim) if i != 1)

    def mean_error(correct: bool) -> float:
        config = SvdConfig(
            min_params=0, mode=mode, samples=32, overrides=("*:rank=4",), correct_mean=correct
        )
        out, run = graphs.apply(model, SvdPass(config), ctx=PassContext(calibration=calib))
        assert ("mean shift in bias" in run.records[0].result.changes[0].detail) == correct
        onnx.checker.check_model(out)
        got = graphs.run(out, calib)[0]
        assert np.abs(ref - got).max() > 1e-2 * np.abs(ref).max()  # truncated, not exact
        return float(np.abs(ref.mean(axis=others) - got.mean(axis=others)).max())

    corrected, plain = mean_error(True), mean_error(False)
    if "Conv" in text:
        assert corrected < plain / 10
    else:
        assert corrected <= 1e-4 * np.abs(ref).max()
