"""analysis: params, MACs, BN state, sharing, dynamic dims on known graphs."""

from __future__ import annotations

from graphcomp.core import analysis
from tests import graphs


def test_conv_bn_facts():
    facts = analysis.analyze(graphs.build(graphs.CONV_BN_RELU))
    assert facts.params == 108 + 4 + 16
    assert facts.macs == 4 * 8 * 8 * 3 * 3 * 3  # out elements x (C_in * kh * kw)
    assert facts.batchnorm_nodes == 1 and facts.batchnorm_state == "kept"
    assert facts.inputs == [
        {"name": "x", "dtype": "FLOAT", "shape": ["N", 3, 8, 8], "dynamic": [0]}
    ]
    assert facts.op_counts == {"BatchNormalization": 1, "Conv": 1, "Relu": 1}


def test_gemm_matmul_and_convtranspose_macs():
    assert analysis.analyze(graphs.build(graphs.GEMM_BN)).macs == 5 * 8
    assert analysis.analyze(graphs.build(graphs.CONVT_BN)).macs == 4 * 5 * 5 * 3 * 3 * 3
    text = """
    g (float[B, 7, 16] x, float[16, 32] w_fc) => (float[B, 7, 32] y) {
        y = MatMul (x, w_fc)
    }
    """
    model = graphs.build(text)
    assert analysis.analyze(model).macs == 7 * 32 * 16
    assert analysis.analyze(model, {"x": [4, 7, 16]}).macs == 4 * 7 * 32 * 16


def test_shared_initializers_and_custom_ops_are_listed():
    text = """
    g (float[N, 4] x, float[4, 4] w_fc) => (float[N, 4] y) {
        a = MatMul (x, w_fc)
        y = MatMul (a, w_fc)
    }
    """
    model = graphs.build(text)
    model.graph.node[1].domain = "my.ops"
    facts = analysis.analyze(model)
    assert facts.shared_initializers == ["w_fc"]
    assert facts.custom_ops == ["my.ops::MatMul"]


def test_params_inside_if_subgraphs_are_counted():
    text = """
    g (bool c, float[2] x) => (float[2] y) {
        y = If (c) <then_branch = t () => (float[2] a) {
                        w = Constant <value = float[2] {1, 2}> ()
                        a = Identity (w)
                    },
                    else_branch = e () => (float[2] b) {
                        v = Constant <value = float[2] {3, 4}> ()
                        b = Identity (v)
                    }>
    }
    """
    assert analysis.count_params(graphs.build(text)) == 4


def test_macs_see_through_padding_computed_at_run_time(monkeypatch):
    model = graphs.build(graphs.COMPUTED_SAME_PAD)
    assert analysis.analyze(model).macs == 4 * 3 * 9 * 9 * 9  # folded: 9x9 output
    monkeypatch.setattr(analysis, "_fold", lambda m: None)
    assert analysis.analyze(model).macs < 4 * 3 * 9 * 9 * 9  # shape inference alone
