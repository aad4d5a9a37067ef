"""Uniform affine quantization math, pure numpy (shared by qdq and dfq).

A real value x maps to q = clip(round(x / scale) + zero_point, qmin, qmax) and back to
x_hat = (q - zero_point) * scale, with round-half-to-even (what ONNX QuantizeLinear
does). For a range [lo, hi] (always widened to contain 0, so 0 is exact):

- symmetric: scale = max(|lo|, |hi|) / half, zero_point = 0 for signed (narrow
  range [-(2^(b-1)-1), 2^(b-1)-1], as TensorRT and onnxruntime use for weights) or
  2^(b-1) for unsigned;
- asymmetric: scale = (hi - lo) / (qmax - qmin), zero_point = round(qmin - lo / scale);
- power of two: scale rounded UP to 2^ceil(log2(scale)), so the range still fits.

Inside the representable range [scale (qmin - zp), scale (qmax - zp)] the error is at
most scale / 2. Per-channel specs take arrays `lo`, `hi` (one entry per channel along
`axis`) and return arrays. Range estimators for activation samples: `minmax`,
`percentile` and `mse` (the clipping range that minimises the fake-quant MSE).
Ref: Jacob et al., CVPR 2018 (arXiv 1712.05877); Nagel et al., "A White Paper on
Neural Network Quantization", 2021 (arXiv 2106.08295).

Not here: anything about graphs (see passes/qdq*.py).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from graphcomp.core import lazy_weights
from graphcomp.core.errors import ConfigError

BITS = (4, 8, 16)
MIN_SCALE = 1e-12  # a zero range (constant tensor) still gets a usable scale
INT32_LIMIT = 2**31 - 1
MSE_GRID = 64  # clipping ratios tried by `mse`
MSE_MAX_SAMPLES = 1 << 18  # values used by `mse` (a seeded subsample beyond that)
CHUNK_BYTES = 64 << 20  # a larger weight is ranged and quantized in slices of axis 0


@dataclasses.dataclass(frozen=True)
class QuantSpec:
    """How one tensor is quantized."""

    bits: int = 8
    signed: bool = True
    symmetric: bool = True
    per_channel: bool = False
    axis: int = 0  # channel axis when per_channel
    pow2: bool = False  # scales are exact powers of two (fixed point)
    reduced: bool = False  # codes in +-2^(bits-2): no int16 saturation in u8s8 kernels
    # weight axes in a u8s8 kernel's order (output, then the reduction slowest to
    # fastest): same-sign code pairs along it keep |a| + |b| <= PAIR_LIMIT
    pairs: tuple[int, ...] = ()
    # weights: flip the roundings that keep each kernel's and channel's summed error
    # within half a code (`balance_rounding`); activations round to nearest
    balanced: bool = False

    def __post_init__(self) -> None:
        if self.bits not in BITS:
            raise ConfigError(f"bits must be one of {BITS}, got {self.bits}")
        if (self.reduced or self.pairs) and not (self.signed and self.symmetric):
            raise ConfigError("a reduced range or code pairs need signed symmetric codes")

    @property
    def qmin(self) -> int:
        """Smallest integer code used."""
        if self.reduced:
            return -(2 ** (self.bits - 2))
        if self.signed:
            return -(2 ** (self.bits - 1)) + (1 if self.symmetric else 0)
        return 1 if self.symmetric else 0

    @property
    def qmax(self) -> int:
        """Largest integer code used."""
        if self.reduced:
            return 2 ** (self.bits - 2)
        return 2 ** (self.bits - 1) - 1 if self.signed else 2**self.bits - 1

    @property
    def storage_dtype(self) -> type[np.integer]:
        """The numpy dtype that holds the codes (int4/uint4 are held in int8/uint8)."""
        size = {4: 8, 8: 8, 16: 16}[self.bits]
        return np.dtype(f"{'int' if self.signed else 'uint'}{size}").type


def pow2_ceil(scale: np.ndarray | float) -> np.ndarray:
    """The smallest power of two >= `scale` (elementwise)."""
    s = np.maximum(np.asarray(scale, dtype=np.float64), MIN_SCALE)
    return np.exp2(np.ceil(np.log2(s)))


def scale_from_fraction_bits(frac_bits: int) -> float:
    """Fixed-point scale 2^-frac_bits."""
    return float(2.0 ** (-frac_bits))


def compute_scale_zero_point(
    lo: np.ndarray | float, hi: np.ndarray | float, spec: QuantSpec
) -> tuple[np.ndarray, np.ndarray]:
    """(scale float32, zero_point int64) covering [lo, hi]; arrays keep lo's shape."""
    lo = np.minimum(np.asarray(lo, dtype=np.float64), 0.0)
    hi = np.maximum(np.asarray(hi, dtype=np.float64), 0.0)
    if spec.symmetric:
        half = (spec.qmax - spec.qmin) / 2.0
        scale = np.maximum(np.maximum(-lo, hi) / half, MIN_SCALE)
        if spec.pow2:
            scale = pow2_ceil(scale)
        zp = np.full(scale.shape, 0 if spec.signed else 2 ** (spec.bits - 1), dtype=np.int64)
        return scale.astype(np.float32), zp
    scale = np.maximum((hi - lo) / (spec.qmax - spec.qmin), MIN_SCALE)
    if spec.pow2:
        scale = pow2_ceil(scale)
        # centre the (possibly wider) range on [lo, hi]
        zp = np.rint((spec.qmin + spec.qmax - (lo + hi) / scale) / 2.0)
    else:
        zp = np.rint(spec.qmin - lo / scale)
    zp = np.clip(zp, spec.qmin, spec.qmax).astype(np.int64)
    return scale.astype(np.float32), zp


def _along(values: np.ndarray, ndim: int, spec: QuantSpec) -> np.ndarray:
    """Reshape per-channel `values` to broadcast along `spec.axis` of an ndim array."""
    values = np.asarray(values)
    if values.ndim == 0 or not spec.per_channel:
        return values
    shape = [1] * ndim
    shape[spec.axis % ndim] = values.size
    return values.reshape(shape)


def row_slices(x: np.ndarray) -> list[slice]:
    """Slices of axis 0 that cover `x` in pieces of about CHUNK_BYTES (one when small).

    Each has an even number of rows, so code pairs along axis 0 stay in one slice.
    """
    if x.ndim == 0 or x.nbytes <= CHUNK_BYTES or x.shape[0] <= 1:
        return [slice(None)]
    rows = max(2, CHUNK_BYTES * x.shape[0] // x.nbytes // 2 * 2)
    return [slice(i, i + rows) for i in range(0, x.shape[0], rows)]


def quantize(
    x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, spec: QuantSpec
) -> np.ndarray:
    """Integer codes of `x` (dtype `spec.storage_dtype`), computed like QuantizeLinear.

    A large `x` is quantized CHUNK_BYTES at a time along axis 0 (same codes: the math
    is elementwise), so its temporaries stay small; the pages of a weight on disk are
    handed back after each slice (graphcomp/core/lazy_weights.py).
    """
    x = np.asarray(x)
    slices = row_slices(x)
    if len(slices) == 1:
        return _quantize(x, scale, zero_point, spec)
    codes = np.empty(x.shape, spec.storage_dtype)
    scale, zero_point = np.asarray(scale), np.asarray(zero_point)
    along_rows = spec.per_channel and scale.ndim > 0 and spec.axis % x.ndim == 0
    for rows in slices:
        s, z = (
            (scale.reshape(-1)[rows], zero_point.reshape(-1)[rows])
            if along_rows
            else (
                scale,
                zero_point,
            )
        )
        codes[rows] = _quantize(x[rows], s, z, spec)
        lazy_weights.drop_pages(x[rows])
    return codes


def _quantize(
    x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, spec: QuantSpec
) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    s = _along(np.asarray(scale, dtype=np.float32), x.ndim, spec)
    z = _along(np.asarray(zero_point, dtype=np.int64), x.ndim, spec)
    real = x / s
    q = np.clip(np.rint(real).astype(np.int64) + z, spec.qmin, spec.qmax)
    if spec.balanced and q.ndim >= 2:
        q = balance_rounding(q, real + z, spec.axis % q.ndim, spec.qmin, spec.qmax)
    if spec.pairs and q.ndim == len(spec.pairs):
        q = limit_pairs(q, real, spec.pairs)
    return q.astype(spec.storage_dtype)


def balance_rounding(
    q: np.ndarray, real: np.ndarray, axis: int, qmin: int, qmax: int
) -> np.ndarray:
    """Codes `q` of `real` whose rounding errors sum to at most half a code per kernel.

    A layer's output error on an input with a steady part (an image's mean level, the
    positive mean after SiLU or ReLU) is the sum of the weight's rounding errors over
    each kernel times that level: rounding to nearest leaves it a random walk (about
    0.87 codes over a 3x3 kernel). SQuant's CASE (Guo et al., ICLR 2022, data-free)
    flips the roundings closest to a half (the cheapest: |e - 1| vs |e| for e near 0.5)
    until each kernel's sum (output channel x input channel, over the taps) lies in
    [-0.5, 0.5], then, at most one flip per kernel, each output channel's sum. A
    weight without taps (MatMul, Gemm) has only the channel level. `axis`: the
    output channels.
    """
    out = np.moveaxis(q, axis, 0)
    taps = out.ndim >= 3
    groups: tuple[int, ...] = (out.shape[0], out.shape[1], -1) if taps else (out.shape[0], -1)
    kernels = out.reshape(groups)
    fine = np.moveaxis(real, axis, 0).reshape(kernels.shape)
    kernels = kernels - _flips(kernels - fine, kernels, qmin, qmax)
    if taps:
        kernels = kernels - _kernel_flips(kernels - fine, kernels, qmin, qmax)
    return np.moveaxis(kernels.reshape(out.shape), 0, axis)


def _flips(err: np.ndarray, q: np.ndarray, qmin: int, qmax: int) -> np.ndarray:
    """+-1 per element that brings each group's (last axis) summed error within 0.5.

    The flips go to the elements whose error `err` is nearest a half, the cheapest.
    """
    need = np.rint(err.sum(axis=-1, keepdims=True))  # signed number of flips
    sign = np.sign(need)
    key = sign * err  # flipping turns e into e - sign: the largest sign * e cost least
    ok = (key > 0) & (q - sign >= qmin) & (q - sign <= qmax)
    top = _largest(np.where(ok, key, -np.inf), np.abs(need).astype(np.int64))
    return (sign * (top & ok)).astype(q.dtype)


def _kernel_flips(err: np.ndarray, q: np.ndarray, qmin: int, qmax: int) -> np.ndarray:
    """+-1 at one element of the kernels that bring each channel's summed error within 0.5.

    The kernels are those whose own sum leans most the same way (`err`: [O, C, K]).
    """
    kernel_err = err.sum(axis=-1)  # [O, C]
    need = np.rint(kernel_err.sum(axis=-1, keepdims=True))  # [O, 1]
    sign = np.sign(need)[..., None]  # [O, 1, 1]
    key = sign * err
    ok = (key > 0) & (q - sign >= qmin) & (q - sign <= qmax)
    key = np.where(ok, key, -np.inf)
    best = np.argmax(key, axis=-1)  # [O, C]: each kernel's cheapest flip
    usable = np.take_along_axis(ok, best[..., None], axis=-1)[..., 0]
    lean = np.where(usable, sign[..., 0] * kernel_err, -np.inf)
    chosen = _largest(lean, np.abs(need).astype(np.int64)) & usable  # [O, C]
    flips = np.zeros_like(q)
    step = (sign[..., 0] * chosen)[..., None].astype(q.dtype)
    np.put_along_axis(flips, best[..., None], step, -1)
    return flips


def _largest(key: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Mask of the `count` (shape [..., 1]) largest keys along the last axis.

    Ties go to the lower index, as a stable sort would give them: the threshold is each
    row's count-th largest key (a partition, then a sort of the few largest only).
    """
    n = key.shape[-1]
    most = min(int(count.max(initial=0)), n)
    if most == 0:
        return np.zeros(key.shape, bool)
    largest = -np.sort(np.partition(-key, most - 1, axis=-1)[..., :most], axis=-1)
    take = np.clip(count, 1, most)
    threshold = np.take_along_axis(largest, take - 1, axis=-1)
    above = key > threshold
    tied = key == threshold
    room = take - above.sum(axis=-1, keepdims=True)
    return (above | (tied & (np.cumsum(tied, axis=-1) <= room))) & (count > 0)


PAIR_LIMIT = 128  # 255 * 128 < 32768: a uint8 pair times these never leaves int16


def limit_pairs(q: np.ndarray, real: np.ndarray, order: tuple[int, ...]) -> np.ndarray:
    """Codes whose same-sign neighbours along the kernel's reduction sum to <= PAIR_LIMIT.

    onnxruntime's u8s8 GEMM on x86 without VNNI (VPMADDUBSW) adds the products of
    reduction elements 2j and 2j+1 in int16, saturating at 32767; it reads a Conv weight
    as [out, kh, kw, in] (in fastest), a MatMul weight along K. The min/max scale already
    keeps pairs in bounds (`_range`); where a given scale does not (method `fixed`), a
    pair over the limit moves to the nearest point of |a| + |b| = 128.
    """
    flat_q, flat_r = _kernel_rows(q, order), _kernel_rows(real, order)
    over = _same_sign_sums(flat_q) > PAIR_LIMIT
    if not over.any():
        return q
    n = 2 * over.shape[1]
    ra, rb = np.abs(flat_r[:, 0:n:2][over]), np.abs(flat_r[:, 1:n:2][over])
    half = (ra + rb - PAIR_LIMIT) / 2.0
    ma = np.clip(np.rint(ra - half), PAIR_LIMIT - 127, 127).astype(np.int64)
    out = flat_q.copy()
    pa, pb = out[:, 0:n:2], out[:, 1:n:2]  # views into out
    sign = np.sign(pa[over])
    pa[over], pb[over] = sign * ma, sign * (PAIR_LIMIT - ma)
    perm = [a % q.ndim for a in order]
    return np.transpose(out.reshape([q.shape[i] for i in perm]), np.argsort(perm))


def _kernel_rows(x: np.ndarray, order: tuple[int, ...]) -> np.ndarray:
    """`x` as [out, reduction] in the kernel's order (`order`: output axis first)."""
    perm = [a % x.ndim for a in order]
    return np.transpose(x, perm).reshape(x.shape[perm[0]], -1)


def _same_sign_sums(rows: np.ndarray) -> np.ndarray:
    """|a + b| of each kernel pair (columns 2j, 2j+1).

    That is |a| + |b| for a same-sign pair; a pair of opposite signs gives at most
    max(|a|, |b|), within the range of the values themselves, so it binds nothing.
    """
    n = rows.shape[1] // 2 * 2
    return np.abs(rows[:, 0:n:2] + rows[:, 1:n:2])


def dequantize(
    q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, spec: QuantSpec
) -> np.ndarray:
    """Float32 values of codes `q`, computed like DequantizeLinear."""
    q = np.asarray(q, dtype=np.int64)
    s = _along(np.asarray(scale, dtype=np.float32), q.ndim, spec)
    z = _along(np.asarray(zero_point, dtype=np.int64), q.ndim, spec)
    return ((q - z).astype(np.float32) * s).astype(np.float32)


def weight_range(w: np.ndarray, spec: QuantSpec) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) of `w`: whole tensor, or per channel along `spec.axis`.

    Read in `row_slices` (min and max are exact in any order), as float64.
    """
    w = np.asarray(w)
    parts = []
    for rows in row_slices(w):
        parts.append(_range(w[rows], spec))
        lazy_weights.drop_pages(w[rows])
    if len(parts) == 1:
        return parts[0]
    if spec.per_channel and spec.axis % w.ndim == 0:
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    lo = np.asarray(np.minimum.reduce([p[0] for p in parts]))
    return lo, np.asarray(np.maximum.reduce([p[1] for p in parts]))


def _range(w: np.ndarray, spec: QuantSpec) -> tuple[np.ndarray, np.ndarray]:
    w = np.asarray(w, dtype=np.float64)
    if not spec.per_channel:
        lo, hi = np.asarray(w.min()), np.asarray(w.max())
    else:
        axis = spec.axis % w.ndim
        other = tuple(i for i in range(w.ndim) if i != axis)
        lo, hi = w.min(axis=other), w.max(axis=other)
    if spec.pairs and w.ndim == len(spec.pairs):
        # the scale that keeps every same-sign pair within qmax after rounding (<= 128)
        pair = _pair_sums(w, spec.pairs)
        hi = np.maximum(hi, pair if spec.per_channel else pair.max())
    return lo, hi


def _pair_sums(w: np.ndarray, order: tuple[int, ...]) -> np.ndarray:
    """Per output row (order[0]): the largest |a| + |b| of same-sign kernel pairs."""
    sums = _same_sign_sums(_kernel_rows(w, order))
    return sums.max(axis=1) if sums.shape[1] else np.zeros(sums.shape[0])


def quantize_weight(w: np.ndarray, spec: QuantSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(codes, scale, zero_point) of a weight with min/max ranges."""
    scale, zp = compute_scale_zero_point(*weight_range(w, spec), spec)
    return quantize(w, scale, zp, spec), scale, zp


def fake_quant(x: np.ndarray, spec: QuantSpec) -> np.ndarray:
    """Weight `x` quantized and dequantized with min/max ranges (the exact weight quantizer)."""
    q, scale, zp = quantize_weight(x, spec)
    return dequantize(q, scale, zp, spec).astype(np.asarray(x).dtype)


def quantize_bias(
    bias: np.ndarray, input_scale: float, weight_scale: np.ndarray
) -> tuple[np.ndarray, np.ndarray] | None:
    """(int32 codes, scale) with scale = s_input * s_weight, or None if it overflows int32."""
    scale = np.float32(input_scale) * np.asarray(weight_scale, dtype=np.float32)
    scale = np.broadcast_to(scale, np.shape(bias)).astype(np.float32)
    codes = np.rint(np.asarray(bias, dtype=np.float64) / np.maximum(scale, MIN_SCALE))
    if np.any(np.abs(codes) > INT32_LIMIT):
        return None
    return codes.astype(np.int32), scale


def minmax(samples: np.ndarray) -> tuple[float, float]:
    """(min, max) of the samples."""
    x = np.asarray(samples)
    return float(x.min()), float(x.max())


def percentile(samples: np.ndarray, p: float = 99.99) -> tuple[float, float]:
    """(lo, hi) = the (100 - p)th and p-th percentiles of the samples."""
    if not 50.0 < p <= 100.0:
        raise ConfigError(f"percentile must be in (50, 100], got {p}")
    x = np.asarray(samples, dtype=np.float64).ravel()
    lo, hi = np.percentile(x, [100.0 - p, p])
    return float(lo), float(hi)


def mse(samples: np.ndarray, spec: QuantSpec) -> tuple[float, float]:
    """The clipped range (a * min, a * max), a in (0, 1], minimising fake-quant MSE."""
    x = np.asarray(samples, dtype=np.float32).ravel()
    if x.size > MSE_MAX_SAMPLES:
        x = np.random.default_rng(0).choice(x, MSE_MAX_SAMPLES, replace=False)
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    per_tensor = dataclasses.replace(spec, per_channel=False)
    best, best_err = (lo, hi), np.inf
    for ratio in np.linspace(1.0, 1.0 / MSE_GRID, MSE_GRID):
        scale, zp = compute_scale_zero_point(lo * ratio, hi * ratio, per_tensor)
        err = float(
            np.mean(
                (dequantize(quantize(x, scale, zp, per_tensor), scale, zp, per_tensor) - x) ** 2
            )
        )
        if err < best_err:
            best, best_err = (lo * ratio, hi * ratio), err
    return best


def representable_range(
    scale: np.ndarray, zero_point: np.ndarray, spec: QuantSpec
) -> tuple[np.ndarray, np.ndarray]:
    """[scale (qmin - zp), scale (qmax - zp)]: where the error is at most scale / 2."""
    s = np.asarray(scale, dtype=np.float64)
    z = np.asarray(zero_point, dtype=np.float64)
    return s * (spec.qmin - z), s * (spec.qmax - z)
