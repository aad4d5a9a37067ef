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
