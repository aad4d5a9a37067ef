import numpy as np
import onnx_graphsurgeon as gs
import pytest

from graphcomp.core import graph_utils
from tests import graphs

CONV_BN_RELU_GEMM = """
g (float[N, 3, 8, 8] x, float[4, 3, 3, 3] w_a, float[4] bn_s, float[4] bn_b, float[4] bn_m,
   float[4] bn_var, float[4, 2] w_g) => (float[N, 2] y, float[N, 4, 8, 8] side) {
    a = Conv <pads = [1, 1, 1, 1]> (x, w_a)
    side = BatchNormalization (a, bn_s, bn_b, bn_m, bn_var)
    r = Relu (side)
    p = GlobalAveragePool (r)
    f = Flatten (p)
    y = Gemm (f, w_g)
}
"""


def _graph() -> gs.Graph:
    graph = gs.import_onnx(graphs.build(CONV_BN_RELU_GEMM))
    for i, node in enumerate(graph.nodes):
        node.name = f"node{i}"
    # an input nobody reads, an omitted optional input and an unnamed node
    graph.inputs.append(gs.Variable("spare", dtype=np.float32, shape=[1]))
    graph.nodes[0].inputs.append(gs.Variable.empty())
    graph.nodes.append(
        gs.Node("Identity", "", inputs=[graph.outputs[0]], outputs=[gs.Variable("y_copy")])
    )
    return graph


def test_used_names_are_the_tensor_map_and_node_names():
    graph = _graph()
    expected = set(graph.tensors()) | {n.name for n in graph.nodes}
    assert graph_utils.used_names(graph) == expected
    assert "" in expected  # the unnamed node; the empty tensor name alone would not be


@pytest.mark.parametrize("base", ["x", "w_a", "side", "y", "spare", "y_copy", "node0", "node5"])
def test_fresh_name_avoids_every_kind_of_used_name(base):
    graph = _graph()
    name = graph_utils.fresh_name(graph, base)
    assert name != base and name.startswith(f"{base}_")
    assert name not in graph_utils.used_names(graph)


def test_fresh_name_keeps_a_free_base():
    assert graph_utils.fresh_name(_graph(), "y_quantized") == "y_quantized"


def test_naming_scope_hands_out_the_same_kind_of_names_once():
    graph = _graph()
    with graph_utils.naming(graph):
        names = [graph_utils.fresh_name(graph, base) for base in ["x", "x", "new", "new", "y"]]
        with graph_utils.naming(graph):  # nested: same scope
            names.append(graph_utils.fresh_name(graph, "new"))
        names.append(graph_utils.fresh_name(graph, "new"))
    assert len(set(names)) == len(names)
    assert names[2] == "new" and all(
        n.startswith(("x_", "new_", "y_")) for n in names if n != "new"
    )
    assert not graph_utils.used_names(graph) & set(names)  # nothing was attached
    assert graph_utils.fresh_name(graph, "new") == "new"  # outside: the graph decides again


def _attr_node() -> gs.Node:
    attrs = {"group": np.int64(2), "alpha": 0.5, "pads": [1, 0], "scales": (1.0, 2.0)}
    return gs.Node("Conv", "n", attrs={**attrs, "auto_pad": b"SAME_UPPER", "mode": "edge"})


def test_typed_attrs_convert_set_values():
    node = _attr_node()
    assert graph_utils.attr_int(node, "group", 1) == 2
    assert type(graph_utils.attr_int(node, "group", 1)) is int
    assert graph_utils.attr_float(node, "alpha", 1.0) == 0.5
    assert graph_utils.attr_ints(node, "pads") == [1, 0]
    assert graph_utils.attr_floats(node, "scales") == [1.0, 2.0]
    assert graph_utils.attr_str(node, "auto_pad", "NOTSET") == "SAME_UPPER"  # bytes decoded
    assert graph_utils.attr_str(node, "mode", "constant") == "edge"


def test_typed_attrs_give_the_default_when_unset():
    node = _attr_node()
    assert graph_utils.attr_int(node, "transB", 0) == 0
    assert graph_utils.attr_int(node, "end") is None
    assert graph_utils.attr_float(node, "beta", 1.0) == 1.0
    default = (1, 1)
    strides = graph_utils.attr_ints(node, "strides", default)
    assert strides == [1, 1] and isinstance(strides, list)  # a list copy of the default
    assert graph_utils.attr_ints(node, "dilations") is None
    assert graph_utils.attr_floats(node, "weights") is None
    assert graph_utils.attr_str(node, "direction", "forward") == "forward"


def test_checked_const_input_returns_a_constant_and_raises_on_a_variable():
    w = gs.Constant("w", np.ones((2, 2), np.float32))
    node = gs.Node("MatMul", "m", inputs=[gs.Variable("x"), w], outputs=[gs.Variable("y")])
    np.testing.assert_array_equal(graph_utils.checked_const_input(node, 1), np.ones((2, 2)))
    with pytest.raises(LookupError, match="input 0 of m"):
        graph_utils.checked_const_input(node, 0)


def test_fresh_name_is_the_first_free_suffix_and_depends_only_on_the_graph():
    graph = _graph()
    graph.inputs.append(gs.Variable("x_1", dtype=np.float32, shape=[1]))
    assert graph_utils.fresh_name(graph, "x") == "x_2"  # x and x_1 are taken
    assert graph_utils.fresh_name(_graph(), "x") == "x_1"  # a fresh graph: the same rule
    names = []
    for _ in range(2):  # the same graph and calls give the same names, run after run
        g = _graph()
        with graph_utils.naming(g):
            names.append([graph_utils.fresh_name(g, b) for b in ["x", "x", "y", "x", "q"]])
    assert names[0] == names[1] == ["x_1", "x_2", "y_1", "x_3", "q"]
