"""Tiny seeded test graphs in ONNX text syntax, and helpers to run them.

Weights are declared as graph inputs in the text and then filled with seeded random
values as initializers, so a builder reads like the graph it makes.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from graphcomp import pipeline
from graphcomp.pass_base import Pass, PassContext


def build(text: str, seed: int = 0, opset: int = 17, **fixed: np.ndarray) -> onnx.ModelProto:
    """Parse `text` (graph body with signature); every `w_*`/`b_*`/`bn_*` input becomes
    a seeded initializer (BN variances positive), `fixed` overrides by name."""
    model = onnx.parser.parse_model(
        f'<ir_version: 8, opset_import: ["" : {opset}]>\n{text}')
    rng = np.random.default_rng(seed)
    keep, inits = [], []
    for value in model.graph.input:
        dims = [d.dim_value for d in value.type.tensor_type.shape.dim]
        if value.name in fixed:
            inits.append(numpy_helper.from_array(np.asarray(fixed[value.name]), value.name))
        elif value.name.startswith(("w_", "b_", "bn_")):
            data = rng.standard_normal(dims).astype(np.float32) * 0.5
            if value.name.startswith("bn_var"):
                data = np.abs(data) + 0.5
            inits.append(numpy_helper.from_array(data, value.name))
        else:
            keep.append(value)
    del model.graph.input[:]
    model.graph.input.extend(keep)
    model.graph.initializer.extend(inits)
    onnx.checker.check_model(model)
    return model


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Outputs of `model` in onnxruntime (CPU, all optimizations)."""
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def feeds_for(model: onnx.ModelProto, seed: int = 1, batch: int = 2) -> dict[str, np.ndarray]:
    """Seeded float inputs for every graph input (dynamic dims -> batch)."""
    rng = np.random.default_rng(seed)
    out = {}
    for value in model.graph.input:
        dims = [d.dim_value if d.dim_value > 0 else batch
                for d in value.type.tensor_type.shape.dim]
        out[value.name] = rng.standard_normal(dims).astype(np.float32)
    return out


def apply(model: onnx.ModelProto, *passes: Pass, ctx: PassContext | None = None
          ) -> tuple[onnx.ModelProto, pipeline.PipelineResult]:
    """Run `passes` through the real pipeline (cleanup, shapes, checker)."""
    result = pipeline.run(model, list(passes), ctx)
    return result.model, result


def op_count(model: onnx.ModelProto, op: str) -> int:
    """How many nodes of type `op` the model has."""
    return sum(n.op_type == op for n in model.graph.node)


CONV_BN_RELU = """
g (float[N, 3, 8, 8] x, float[4, 3, 3, 3] w_conv, float[4] b_conv, float[4] bn_scale,
   float[4] bn_bias, float[4] bn_mean, float[4] bn_var) => (float[N, 4, 8, 8] y) {
    c = Conv <pads = [1, 1, 1, 1]> (x, w_conv, b_conv)
    n = BatchNormalization <epsilon = 0.001> (c, bn_scale, bn_bias, bn_mean, bn_var)
    y = Relu (n)
}
"""


CONVT_BN = """
g (float[N, 4, 5, 5] x, float[4, 3, 3, 3] w_convt, float[6] bn_scale, float[6] bn_bias,
   float[6] bn_mean, float[6] bn_var) => (float[N, 6, 11, 11] y) {
    c = ConvTranspose <strides = [2, 2], group = 2> (x, w_convt)
    y = BatchNormalization (c, bn_scale, bn_bias, bn_mean, bn_var)
}
"""

GEMM_BN = """
g (float[N, 8] x, float[5, 8] w_fc, float[5] b_fc, float[5] bn_scale, float[5] bn_bias,
   float[5] bn_mean, float[5] bn_var) => (float[N, 5] y) {
    h = Gemm <transB = 1, alpha = 0.7, beta = 1.3> (x, w_fc, b_fc)
    y = BatchNormalization (h, bn_scale, bn_bias, bn_mean, bn_var)
}
"""

UNFOLDABLE_BN = """
g (float[N, 3, 6, 6] x, float[3, 3, 1, 1] w_conv, float[3] bn_scale, float[3] bn_bias,
   float[3] bn_mean, float[3] bn_var, float[3] bn_scale2, float[3] bn_bias2,
   float[3] bn_mean2, float[3] bn_var2) => (float[N, 3, 6, 6] y, float[N, 3, 6, 6] z) {
    a = Add (x, x)
    y = BatchNormalization (a, bn_scale, bn_bias, bn_mean, bn_var)
    c = Conv (x, w_conv)
    z0 = BatchNormalization (c, bn_scale2, bn_bias2, bn_mean2, bn_var2)
    z = Add (z0, c)
}
"""

IDENTITY_DROPOUT = """
g (float[N, 4] x, float[4, 4] w_fc) => (float[N, 4] y, float[N, 4] z) {
    a = Identity (x)
    b = MatMul (a, w_fc)
    c = Dropout (b)
    d = Relu (c)
    y = Identity (d)
    dead = Sigmoid (b)
    z = Identity (x)
}
"""


# dfq chains: conv -> relu6 (Clip with inputs) -> depthwise -> relu6 -> conv, with a
# per-channel weight-range spread like a BN-folded MobileNet.
CONV_DW_CONV = """
g (float[N, 3, 8, 8] x, float[8, 3, 1, 1] w_a, float[8] b_a, float[8, 1, 3, 3] w_dw,
   float[8] b_dw, float[4, 8, 1, 1] w_b, float[4] b_b) => (float[N, 4, 8, 8] y) {
    lo = Constant <value = float {0.0}> ()
    hi = Constant <value = float {6.0}> ()
    a = Conv (x, w_a, b_a)
    ra = Clip (a, lo, hi)
    d = Conv <group = 8, pads = [1, 1, 1, 1]> (ra, w_dw, b_dw)
    rd = Clip (d, lo, hi)
    y = Conv (rd, w_b, b_b)
}
"""

GEMM_RELU_GEMM = """
g (float[N, 6] x, float[10, 6] w_a, float[10] b_a, float[10, 3] w_b, float[3] b_b)
  => (float[N, 3] y) {
    a = Gemm <transB = 1> (x, w_a, b_a)
    r = Relu (a)
    y = Gemm (r, w_b, b_b)
}
"""

CONV_PRELU_POOL_FC = """
g (float[N, 3, 8, 8] x, float[6, 3, 3, 3] w_a, float[6] b_a, float[6, 1, 1] w_slope,
   float[6, 6, 3, 3] w_b, float[6] b_b, float[5, 24] w_fc, float[5] b_fc)
  => (float[N, 5] y) {
    a = Conv <pads = [1, 1, 1, 1]> (x, w_a, b_a)
    p = PRelu (a, w_slope)
    m = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (p)
    b = Conv <pads = [1, 1, 1, 1]> (m, w_b, b_b)
    l = LeakyRelu <alpha = 0.1> (b)
    q = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (l)
    f = Flatten (q)
    y = Gemm <transB = 1> (f, w_fc, b_fc)
}
"""


def spread_channels(model: onnx.ModelProto, seed: int = 0, decades: float = 2.0
                    ) -> onnx.ModelProto:
    """Scale each output channel of every Conv/Gemm weight by 10^U(-decades/2, decades/2),
    the per-channel range spread BN folding leaves (bias scaled alike)."""
    rng = np.random.default_rng(seed)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = {i.name: i for i in out.graph.initializer}
    for node in out.graph.node:
        if node.op_type not in ("Conv", "Gemm") or node.input[1] not in inits:
            continue
        w = numpy_helper.to_array(inits[node.input[1]])
        trans = node.op_type == "Conv" or any(a.name == "transB" and a.i for a in node.attribute)
        count = w.shape[0] if trans else w.shape[1]
        f = 10.0 ** rng.uniform(-decades / 2, decades / 2, count)
        w = w * (f.reshape(-1, *[1] * (w.ndim - 1)) if trans else f[None, :])
        inits[node.input[1]].CopyFrom(numpy_helper.from_array(w.astype(np.float32),
                                                               node.input[1]))
        if len(node.input) > 2 and node.input[2] in inits:
            b = numpy_helper.to_array(inits[node.input[2]]) * f
            inits[node.input[2]].CopyFrom(numpy_helper.from_array(b.astype(np.float32),
                                                                   node.input[2]))
    return out
