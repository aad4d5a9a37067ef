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
from graphcomp.core.pass_base import Pass, PassContext


def build(text: str, seed: int = 0, opset: int = 17, **fixed: np.ndarray) -> onnx.ModelProto:
    """Parse `text` (graph body with signature); every `w_*`/`b_*`/`bn_*` input becomes
    a seeded initializer (BN variances positive), `fixed` overrides by name."""
    model = onnx.parser.parse_model(f'<ir_version: 8, opset_import: ["" : {opset}]>\n{text}')
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


def run_unfused(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Outputs of onnxruntime running `model` op by op: a QDQ graph without integer kernels."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def feeds_for(model: onnx.ModelProto, seed: int = 1, batch: int = 2) -> dict[str, np.ndarray]:
    """Seeded float inputs for every graph input (dynamic dims -> batch)."""
    rng = np.random.default_rng(seed)
    out = {}
    for value in model.graph.input:
        dims = [d.dim_value if d.dim_value > 0 else batch for d in value.type.tensor_type.shape.dim]
        out[value.name] = rng.standard_normal(dims).astype(np.float32)
    return out


def apply(
    model: onnx.ModelProto, *passes: Pass, ctx: PassContext | None = None
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


def spread_channels(model: onnx.ModelProto, seed: int = 0, decades: float = 2.0) -> onnx.ModelProto:
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
        inits[node.input[1]].CopyFrom(numpy_helper.from_array(w.astype(np.float32), node.input[1]))
        if len(node.input) > 2 and node.input[2] in inits:
            b = numpy_helper.to_array(inits[node.input[2]]) * f
            inits[node.input[2]].CopyFrom(
                numpy_helper.from_array(b.astype(np.float32), node.input[2])
            )
    return out


# -- prune: graphs whose channel groups cover residual Add, depthwise, Concat, Flatten->Gemm,
# squeeze-excitation Mul, Split, Resize, Reshape->MatMul, and ops that must block a group.
PRUNE_RESIDUAL = """
g (float[N, 3, 8, 8] x, float[8, 3, 3, 3] w_c1, float[8] b_c1, float[8, 8, 3, 3] w_c2,
   float[8] b_c2, float[8, 8, 1, 1] w_c3, float[8] b_c3, float[4, 8] w_fc, float[4] b_fc)
   => (float[N, 4] y) {
    a = Conv <pads = [1, 1, 1, 1]> (x, w_c1, b_c1)
    r = Relu (a)
    b = Conv <pads = [1, 1, 1, 1]> (r, w_c2, b_c2)
    rb = Relu (b)
    c = Conv (rb, w_c3, b_c3)
    s = Add (c, r)
    t = Relu (s)
    p = GlobalAveragePool (t)
    f = Flatten (p)
    y = Gemm <transB = 1> (f, w_fc, b_fc)
}
"""

PRUNE_DEPTHWISE = """
g (float[N, 3, 8, 8] x, float[16, 3, 1, 1] w_exp, float[16] b_exp, float[16, 1, 3, 3] w_dw,
   float[16] b_dw, float[8, 16, 1, 1] w_proj, float[8] b_proj, float[6, 8, 1, 1] w_out)
   => (float[N, 6, 8, 8] y) {
    e = Conv (x, w_exp, b_exp)
    lo = Constant <value = float {0.0}> ()
    hi = Constant <value = float {6.0}> ()
    ce = Clip (e, lo, hi)
    d = Conv <group = 16, pads = [1, 1, 1, 1]> (ce, w_dw, b_dw)
    cd = Clip (d, lo, hi)
    p = Conv (cd, w_proj, b_proj)
    y = Conv (p, w_out)
}
"""

PRUNE_CONCAT_FLATTEN = """
g (float[N, 3, 8, 8] x, float[4, 3, 3, 3] w_a, float[4] b_a, float[6, 3, 1, 1] w_b,
   float[6] b_b, float[10, 10, 3, 3] w_c, float[10] b_c, float[5, 40] w_fc, float[5] b_fc)
   => (float[N, 5] y) {
    a = Conv <pads = [1, 1, 1, 1]> (x, w_a, b_a)
    ra = Relu (a)
    b = Conv (x, w_b, b_b)
    rb = Relu (b)
    k = Concat <axis = 1> (ra, rb)
    c = Conv <pads = [1, 1, 1, 1], strides = [2, 2]> (k, w_c, b_c)
    rc = Relu (c)
    q = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (rc)
    f = Flatten (q)
    y = Gemm <transB = 1> (f, w_fc, b_fc)
}
"""

PRUNE_SE_SPLIT = """
g (float[N, 3, 8, 8] x, float[8, 3, 3, 3] w_c1, float[8] b_c1, float[4, 8, 1, 1] w_se1,
   float[4] b_se1, float[8, 4, 1, 1] w_se2, float[8] b_se2, float[8] bn_scale, float[8] bn_bias,
   float[8] bn_mean, float[8] bn_var, float[6, 4, 1, 1] w_l, float[6, 4, 3, 3] w_r,
   float[6] b_r, float[3, 12, 1, 1] w_out) => (float[N, 3, 16, 16] y) {
    a = Conv <pads = [1, 1, 1, 1]> (x, w_c1, b_c1)
    r = Relu (a)
    p = GlobalAveragePool (r)
    s1 = Conv (p, w_se1, b_se1)
    s1r = Relu (s1)
    s2 = Conv (s1r, w_se2, b_se2)
    gate = Sigmoid (s2)
    m = Mul (r, gate)
    n = BatchNormalization (m, bn_scale, bn_bias, bn_mean, bn_var)
    sp = Constant <value = int64[2] {4, 4}> ()
    h1, h2 = Split <axis = 1> (n, sp)
    l = Conv (h1, w_l)
    rr = Conv <pads = [1, 1, 1, 1]> (h2, w_r, b_r)
    k = Concat <axis = 1> (l, rr)
    roi = Constant <value = float[0] {}> ()
    sc = Constant <value = float[4] {1.0, 1.0, 2.0, 2.0}> ()
    u = Resize <mode = "nearest"> (k, roi, sc)
    y = Conv (u, w_out)
}
"""

PRUNE_MLP_RESHAPE = """
g (float[N, 4, 6] x, float[6, 12] w_up, float[12] b_up, float[12, 6] w_down, float[6] b_down,
   float[24, 5] w_head) => (float[N, 5] y) {
    u = MatMul (x, w_up)
    ub = Add (u, b_up)
    g = Relu (ub)
    d = MatMul (g, w_down)
    db = Add (d, b_down)
    t = Transpose <perm = [0, 2, 1]> (db)
    sh = Constant <value = int64[2] {-1, 24}> ()
    f = Reshape (t, sh)
    y = MatMul (f, w_head)
}
"""

PRUNE_BLOCKED = """
g (float[N, 4, 8, 8] x, float[8, 2, 3, 3] w_g, float[8, 4, 1, 1] w_a, float[8, 8, 1, 1] w_b,
   float[4, 8, 1, 1] w_o) => (float[N, 8, 8, 8] side, float[N, 4, 8, 8] y) {
    g1 = Conv <group = 2, pads = [1, 1, 1, 1]> (x, w_g)
    a = Conv (x, w_a)
    side = Relu (a)
    b = Conv (g1, w_b)
    d = DepthToSpace <blocksize = 2> (b)
    sh = Constant <value = int64[4] {0, 8, 8, 8}> ()
    e = Reshape (d, sh)
    y = Conv (e, w_o)
}
"""


# --- qdq: a small CNN (conv-relu, depthwise, residual Add, pools, Gemm head) and a
# transformer encoder block with LayerNorm outlier channels.
QDQ_CNN = """
g (float[N, 3, 16, 16] x, float[8, 3, 3, 3] w_c1, float[8] b_c1, float[8, 1, 3, 3] w_dw,
   float[8] b_dw, float[8, 8, 1, 1] w_pw, float[8] b_pw, float[8, 10] w_fc, float[10] b_fc
   ) => (float[N, 10] y) {
    c1 = Conv <pads = [1, 1, 1, 1]> (x, w_c1, b_c1)
    r1 = Relu (c1)
    dw = Conv <pads = [1, 1, 1, 1], group = 8> (r1, w_dw, b_dw)
    r2 = Relu (dw)
    pw = Conv (r2, w_pw, b_pw)
    s = Add (pw, r1)
    mp = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (s)
    gap = GlobalAveragePool (mp)
    f = Flatten (gap)
    y = Gemm (f, w_fc, b_fc)
}
"""

QDQ_ENCODER = """
g (float[N, 16, 32] x, float[32] w_ln1g, float[32] b_ln1, float[32, 32] w_q, float[32, 32] w_k,
   float[32, 32] w_v, float[32] b_q, float[32] b_k, float[32] b_v, float[32, 32] w_o,
   float[32] b_o, float[32] w_ln2g, float[32] b_ln2, float[32, 64] w_1, float[64] b_1,
   float[64, 32] w_2, float[32] b_2) => (float[N, 16, 32] y) {
    h = LayerNormalization <axis = -1> (x, w_ln1g, b_ln1)
    q0 = MatMul (h, w_q)
    q = Add (q0, b_q)
    k0 = MatMul (h, w_k)
    k = Add (k0, b_k)
    v0 = MatMul (h, w_v)
    v = Add (v0, b_v)
    kt = Transpose <perm = [0, 2, 1]> (k)
    s0 = MatMul (q, kt)
    sc = Constant <value = float {0.17677}> ()
    s = Mul (s0, sc)
    a = Softmax <axis = -1> (s)
    c = MatMul (a, v)
    o0 = MatMul (c, w_o)
    o = Add (o0, b_o)
    r1 = Add (x, o)
    h2 = LayerNormalization <axis = -1> (r1, w_ln2g, b_ln2)
    f0 = MatMul (h2, w_1)
    f1 = Add (f0, b_1)
    hc = Constant <value = float {0.70710678}> ()
    e0 = Mul (f1, hc)
    e1 = Erf (e0)
    one = Constant <value = float {1.0}> ()
    e2 = Add (e1, one)
    half = Constant <value = float {0.5}> ()
    e3 = Mul (f1, e2)
    g1 = Mul (e3, half)
    f2 = MatMul (g1, w_2)
    f3 = Add (f2, b_2)
    y = Add (r1, f3)
}
"""


# a CNN with a MatMul + bias Add head (as older exporters write Linear layers, MTCNN's
# O-Net): onnxruntime fuses each pair into a Gemm
MATMUL_BIAS_HEAD = """
g (float[N, 3, 8, 8] x, float[8, 3, 3, 3] w_c, float[8] b_c, float[512, 64] w_1, float[64] b_1,
   float[64, 10] w_2, float[10] b_2) => (float[N, 10] y) {
    c = Conv <pads = [1, 1, 1, 1]> (x, w_c, b_c)
    r = Relu (c)
    f = Flatten (r)
    m1 = MatMul (f, w_1)
    a1 = Add (m1, b_1)
    h = Relu (a1)
    m2 = MatMul (h, w_2)
    y = Add (m2, b_2)
}
"""

# a Conv then a stride-2 ConvTranspose (a DBNet head's upsampling)
CONV_CONVT = """
g (float[N, 4, 6, 6] x, float[8, 4, 3, 3] w_c, float[8] b_c, float[8, 4, 2, 2] w_t,
   float[4] b_t) => (float[N, 4, 12, 12] y) {
    c = Conv <pads = [1, 1, 1, 1]> (x, w_c, b_c)
    r = Relu (c)
    t = ConvTranspose <strides = [2, 2]> (r, w_t, b_t)
    y = Relu (t)
}
"""


def qdq_encoder(seed: int = 0, outlier: float = 40.0) -> onnx.ModelProto:
    """QDQ_ENCODER whose LayerNorm gains blow two channels up by `outlier` (as in BERT)."""
    gamma = np.ones(32, np.float32)
    gamma[3], gamma[17] = outlier, -0.6 * outlier
    return build(QDQ_ENCODER, seed=seed, w_ln1g=gamma, w_ln2g=gamma)


def optimized_ops(model: onnx.ModelProto, path: str) -> list[str]:
    """Op types of onnxruntime's optimized graph of `model` (saved to `path`)."""
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = path
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(path).graph.node]


CONV_BN_RELU_CONV = """
g (float[N, 3, 8, 8] x, float[4, 3, 3, 3] w_conv, float[4] b_conv, float[4] bn_scale,
   float[4] bn_bias, float[4] bn_mean, float[4] bn_var, float[2, 4, 1, 1] w_b)
   => (float[N, 2, 8, 8] z) {
    c = Conv <pads = [1, 1, 1, 1]> (x, w_conv, b_conv)
    n = BatchNormalization <epsilon = 0.001> (c, bn_scale, bn_bias, bn_mean, bn_var)
    y = Relu (n)
    z = Conv (y, w_b)
}
"""


CONV_BN_POOL_FC = """
g (float[N, 3, 8, 8] x, float[4, 3, 3, 3] w_conv, float[4] b_conv, float[4] bn_scale,
   float[4] bn_bias, float[4] bn_mean, float[4] bn_var, float[4, 4] w_fc) => (float[N, 4] y) {
    c = Conv <pads = [1, 1, 1, 1]> (x, w_conv, b_conv)
    n = BatchNormalization <epsilon = 0.001> (c, bn_scale, bn_bias, bn_mean, bn_var)
    r = Relu (n)
    p = GlobalAveragePool (r)
    f = Flatten (p)
    y = MatMul (f, w_fc)
}
"""


# "same" padding computed at run time from the input's static H, W (dynamic batch)
COMPUTED_SAME_PAD = """
g (float[N, 3, 9, 9] x, float[4, 3, 3, 3] w_a) => (float[N, 4, H, W] y) {
    s = Shape (x)
    st = Constant <value = int64[1] {2}> ()
    en = Constant <value = int64[1] {4}> ()
    hw = Slice (s, st, en)
    one = Div (hw, hw)
    z = Constant <value = int64[2] {0, 0}> ()
    pads = Concat <axis = 0> (z, one, z, one)
    p = Pad (x, pads)
    y = Conv (p, w_a)
}
"""

# a 200-tap Conv over samples (an STFT frame): onnxruntime cannot run it at 64 samples
FRAME_CONV = """
<ir_version: 8, opset_import: ["" : 17]>
frames (float[N, 1, T] x) => (float[N, 1, F] y) {
    s = Constant <value = int64[3] {1, 1, 200}> ()
    w = ConstantOfShape <value = float[1] {0.01}> (s)
    y = Conv(x, w)
}
"""
