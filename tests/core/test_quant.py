import numpy as np
import onnx
import pytest
from onnx import helper

from graphcomp.core import quant
from graphcomp.core.errors import ConfigError
from graphcomp.core.quant import QuantSpec

SPECS = [
    QuantSpec(8, True, True),
    QuantSpec(8, False, False),
    QuantSpec(8, True, False),
    QuantSpec(8, False, True),
    QuantSpec(4, True, True),
    QuantSpec(16, True, True),
    QuantSpec(8, True, True, pow2=True),
    QuantSpec(8, True, True, reduced=True),
    QuantSpec(8, True, True, True, 1, pairs=(1, 0)),
    QuantSpec(8, False, False, pow2=True),
]


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_in_range_error_at_most_half_scale(seed, spec):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(4000) * rng.uniform(0.1, 10) + rng.uniform(-2, 2)).astype(np.float32)
    scale, zp = quant.compute_scale_zero_point(x.min(), x.max(), spec)
    lo, hi = quant.representable_range(scale, zp, spec)
    inside = x[(x >= lo) & (x <= hi)]
    x_hat = quant.dequantize(quant.quantize(inside, scale, zp, spec), scale, zp, spec)
    float_eps = 2 * np.finfo(np.float32).eps * np.abs(inside)  # x / scale rounding in float32
    assert np.all(np.abs(x_hat - inside) <= scale / 2 * (1 + 1e-6) + float_eps)
    # the representable range covers the data up to half a step
    assert lo <= x.min() + scale / 2 and hi >= x.max() - scale / 2
    assert inside.size >= x.size - 2


@pytest.mark.parametrize("seed", range(4))
def test_per_channel_error_bound_and_shapes(seed):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((6, 3, 3, 3)).astype(np.float32) * rng.uniform(0.01, 3, (6, 1, 1, 1))
    spec = QuantSpec(8, True, True, per_channel=True, axis=0)
    q, scale, zp = quant.quantize_weight(w, spec)
    assert q.dtype == np.int8 and scale.shape == (6,) and zp.shape == (6,)
    assert np.all(zp == 0) and q.min() >= -127
    err = np.abs(quant.dequantize(q, scale, zp, spec) - w)
    assert np.all(err <= scale.reshape(6, 1, 1, 1) / 2 * (1 + 1e-5))


def test_zero_is_exact_and_symmetric_unsigned_zero_point():
    spec = QuantSpec(8, signed=False, symmetric=False)
    scale, zp = quant.compute_scale_zero_point(0.3, 5.0, spec)  # lo widened to 0
    assert zp == 0
    assert quant.dequantize(quant.quantize(np.zeros(1), scale, zp, spec), scale, zp, spec)[0] == 0
    scale, zp = quant.compute_scale_zero_point(-1.0, 2.0, QuantSpec(8, False, True))
    assert zp == 128 and np.isclose(scale, 2.0 / 127)


@pytest.mark.parametrize("asym", [False, True])
def test_pow2_scales_are_exact_powers_of_two_and_cover_range(asym):
    spec = QuantSpec(8, True, not asym, per_channel=True, pow2=True)
    lo, hi = np.array([-0.3, -7.0, 0.0]), np.array([0.2, 3.0, 0.01])
    scale, zp = quant.compute_scale_zero_point(lo, hi, spec)
    mant, _ = np.frexp(scale)
    assert np.all(mant == 0.5)
    rlo, rhi = quant.representable_range(scale, zp, spec)
    assert np.all(rlo <= lo + scale / 2) and np.all(rhi >= hi - scale / 2)


def test_quantize_matches_onnx_reference_rounding():
    from onnx.reference import ReferenceEvaluator

    x = np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 300.0, -300.0], dtype=np.float32)
    node = helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [8])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.INT8, [8])],
        [
            helper.make_tensor("s", onnx.TensorProto.FLOAT, [], [1.0]),
            helper.make_tensor("z", onnx.TensorProto.INT8, [], [0]),
        ],
    )
    ref = ReferenceEvaluator(helper.make_model(graph))
    expected = ref.run(None, {"x": x})[0]
    spec = QuantSpec(8, True, False)  # full int8 range, like ONNX
    assert np.array_equal(quant.quantize(x, np.float32(1.0), np.int64(0), spec), expected)


def test_bias_quantized_with_product_scale_and_overflow_guard():
    b = np.array([0.5, -1.0, 2.0])
    codes, scale = quant.quantize_bias(b, 0.1, np.array([0.01, 0.02, 0.04]))
    assert codes.dtype == np.int32 and np.allclose(scale, [0.001, 0.002, 0.004])
    assert np.allclose(codes * scale, b, atol=scale / 2)
    assert quant.quantize_bias(np.array([1e6]), 1e-4, np.array([1e-5])) is None


def test_range_methods_order_and_mse_clips_outliers():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(100_000).astype(np.float32)
    x[:3] = [60.0, -55.0, 40.0]
    lo_m, hi_m = quant.minmax(x)
    lo_p, hi_p = quant.percentile(x, 99.9)
    spec = QuantSpec(4, True, True)
    lo_e, hi_e = quant.mse(x, spec)
    assert (lo_m, hi_m) == (-55.0, 60.0)
    assert 2.5 < hi_p < 4.0 and -4.0 < lo_p < -2.5
    assert hi_e < hi_m / 4  # at 4 bits the outliers are clipped

    def err(lo, hi):
        s, z = quant.compute_scale_zero_point(lo, hi, spec)
        return np.mean((quant.dequantize(quant.quantize(x, s, z, spec), s, z, spec) - x) ** 2)

    assert err(lo_e, hi_e) < err(lo_m, hi_m)


def test_fake_quant_is_idempotent_and_preserves_dtype():
    w = np.random.default_rng(3).standard_normal((8, 4)).astype(np.float32)
    spec = QuantSpec(8, True, True, per_channel=True, axis=1)
    once = quant.fake_quant(w, spec)
    assert once.dtype == np.float32
    assert np.allclose(quant.fake_quant(once, spec), once, atol=1e-6)


def test_bad_spec_rejected():
    with pytest.raises(ConfigError):
        QuantSpec(bits=3)
    with pytest.raises(ConfigError):
        quant.percentile(np.ones(3), 10.0)


@pytest.mark.parametrize(("axis", "per_channel"), [(0, True), (1, True), (-1, True), (0, False)])
def test_large_weights_in_slices_give_the_same_ranges_and_codes(monkeypatch, axis, per_channel):
    w = np.random.default_rng(3).standard_normal((96, 40)).astype(np.float32)
    spec = QuantSpec(per_channel=per_channel, axis=axis)
    lo, hi = quant.weight_range(w, spec)
    scale, zp = quant.compute_scale_zero_point(lo, hi, spec)
    codes = quant.quantize(w, scale, zp, spec)
    monkeypatch.setattr(quant, "CHUNK_BYTES", 9 * 40 * 4)  # 12 slices of 8 rows (even)
    assert len(quant.row_slices(w)) == 12
    sliced = quant.weight_range(w, spec)
    np.testing.assert_array_equal(sliced[0], lo)
    np.testing.assert_array_equal(sliced[1], hi)
    np.testing.assert_array_equal(quant.quantize(w, scale, zp, spec), codes)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("per_channel", [True, False])
def test_kernel_pairs_never_leave_int16(seed, per_channel):
    """Same-sign code pairs along the reduction sum to <= 128 (255 * 128 < 32768), and
    the scale is no coarser than a 7-bit range."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((10, 6, 3, 3)) * rng.uniform(0.1, 3, (10, 1, 1, 1))).astype(np.float32)
    spec = QuantSpec(8, True, True, per_channel, 0, pairs=(0, 2, 3, 1))
    q, scale, _ = quant.quantize_weight(w, spec)
    flat = np.transpose(q.astype(int), (0, 2, 3, 1)).reshape(10, -1)
    a, b = flat[:, 0::2], flat[:, 1::2]
    assert np.where(np.sign(a) == np.sign(b), np.abs(a) + np.abs(b), 0).max() <= 128
    _, reduced_scale, _ = quant.quantize_weight(
        w, QuantSpec(8, True, True, per_channel, 0, reduced=True)
    )
    assert np.all(scale <= reduced_scale * (1 + 1e-6))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(("shape", "axis"), [((10, 6, 3, 3), 0), ((6, 10, 3, 3), 1), ((40, 12), 1)])
def test_balanced_rounding_bounds_the_summed_error_of_each_kernel_and_channel(seed, shape, axis):
    """Each code is nearest rounding or one step from it, inside the range; the errors of
    an output channel sum to at most half a code, of one kernel (its taps) to one."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(shape).astype(np.float32)
    nearest = QuantSpec(8, True, True, True, axis)
    balanced = QuantSpec(8, True, True, True, axis, balanced=True)
    scale, zp = quant.compute_scale_zero_point(*quant.weight_range(w, nearest), nearest)
    near = quant.quantize(w, scale, zp, nearest).astype(int)
    q = quant.quantize(w, scale, zp, balanced).astype(int)
    assert np.abs(q - near).max() <= 1 and np.abs(q).max() <= 127
    err = np.moveaxis(q - w / quant._along(scale, w.ndim, nearest), axis, 0)
    assert np.abs(err.reshape(shape[axis], -1).sum(axis=1)).max() <= 0.5 + 1e-4
    if w.ndim == 4:
        assert np.abs(err.sum(axis=(2, 3))).max() <= 1.0 + 1e-4
        near_err = np.moveaxis(near - w / quant._along(scale, w.ndim, nearest), axis, 0)
        assert np.abs(err.sum(axis=(2, 3))).mean() < np.abs(near_err.sum(axis=(2, 3))).mean()
