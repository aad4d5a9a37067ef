"""Where the qdq pass puts QuantizeLinear/DequantizeLinear: the plan, before any edit.

Profiles:
- `ort` (onnxruntime CPU fusion): every input of a quantized layer and its output get
  Q->DQ, and then every reader of a quantized tensor reads the DQ (onnxruntime fuses
  DQ->Conv->Q into QLinearConv only when the Q is the Conv's sole reader). A Relu or
  Clip right after a layer is folded into it: the Q goes after the activation, where
  onnxruntime removes the activation. A graph output gets its Q->DQ too (the DQ then
  produces the output under its old name), as onnxruntime's quantizer does, so the
  last Conv runs as QLinearConv. MatMul/Gemm outputs get a Q only when a
  quantized layer reads them, through its own input request (MatMulIntegerToFloat /
  QGemm have float outputs), except a MatMul whose 2-D output alone feeds a constant
  bias Add: onnxruntime fuses the pair into a Gemm whose float bias no integer kernel
  takes, so the Add is part of the layer and its output gets the Q (then it runs as
  QGemm; MTCNN's O-Net, whose last layer ran as a float Gemm with its weight
  dequantized on every run: dfq 1.27 ms -> 0.65 ms, float 0.69, docs/qdq.md).
- `trt` (TensorRT explicit quantization): Q->DQ only on the inputs of quantized
  layers (residual Add inputs included); TensorRT fuses the output side itself, so no
  Q/DQ on outputs that feed nothing quantized.
Shape-only ops (MaxPool, Reshape, Flatten, Transpose, Resize, ...) share one scale with
their input (onnxruntime drops their Q/DQ and runs them on integers); the need for a
quantized tensor propagates up through them. So do clamps, Min/Max by a constant (the
per-channel ReLU6 bound equalize writes), under `ort`: qdq_clamp runs them on the
integer codes, exact because quantization is monotone. Concat inputs share the output's scale
(decided later against the ranges, see qdq.py). In transformer graphs (`dynamic`),
MatMul inputs are quantized at run time (DynamicQuantizeLinear, per batch; `ort` only,
TensorRT has no dynamic quantization) and the residual stream (Add/Mul/Concat) stays
float: static int8 of every activation destroys outlier channels. Static MatMul/Gemm
inputs of transformer graphs are guarded: left float when outlier-prone (qdq.py).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_graphsurgeon as gs

from graphcomp.core import graph_utils
from graphcomp.passes.qdq.config import QdqConfig, RuleBook, TensorRule

COMPUTE = ("Conv", "ConvTranspose", "Gemm", "MatMul")
BINARY = ("Add", "Mul")
POOL = ("AveragePool", "GlobalAveragePool")
SHAPE = (
    "MaxPool",
    "Reshape",
    "Flatten",
    "Transpose",
    "Squeeze",
    "Unsqueeze",
    "Resize",
    "Slice",
    "Expand",
    "Tile",
    "Gather",
)
FUSED = ("Relu", "Clip")
QUANTIZABLE = frozenset(COMPUTE + BINARY + POOL + SHAPE + ("Concat",))
MAX_PROPAGATION = 10_000
# onnxruntime's CPU provider runs a quantized ConvTranspose as DequantizeLinear of its
# input and weight on every run, then the float kernel: slower than float, no gain
NO_CONVT_KERNEL = "onnxruntime has no integer ConvTranspose kernel (it would dequantize per run)"


@dataclasses.dataclass
class Layer:
    """A node the pass quantizes, with its roles' rules."""

    node: gs.Node
    kind: str  # compute, binary, concat, pool
    acts: list[int]  # indices of activation inputs
    rules: dict[str, TensorRule]
    out: gs.Tensor  # the tensor that carries the output quantization (after Relu/Clip)
    weight_axis: int = 0
    weight_note: str = ""  # why the weight stays float although its rule says otherwise
    bias_add: gs.Node | None = None  # a MatMul's constant bias Add, part of the layer


@dataclasses.dataclass
class Act:
    """One activation tensor that gets a quantizer."""

    tensor: gs.Tensor
    rule: TensorRule
    owner: str  # "<layer> <role>" whose rule it uses
    dynamic: bool = False
    guard: bool = False  # a transformer MatMul input: left float if outlier-prone
    readers: list[gs.Node] = dataclasses.field(default_factory=list)
    group: str = ""  # tensors with the same group share one scale (Concat, shape ops)
    hard_group: str = ""  # the part of the group that must share (through shape ops)

    def __post_init__(self) -> None:
        self.group = self.group or self.tensor.name
        self.hard_group = self.hard_group or self.tensor.name


@dataclasses.dataclass
class Plan:
    """Everything the pass will do, and every node it will not touch."""

    layers: list[Layer]
    acts: dict[str, Act]
    skips: list[tuple[gs.Node, str]]
    transformer: bool


def build_plan(graph: gs.Graph, config: QdqConfig, book: RuleBook | None = None) -> Plan:
    """Decide the quantized layers and activation tensors (no edits)."""
    book = book or RuleBook(config)
    transformer = graph_utils.is_transformer(graph, SHAPE)
    layers: list[Layer] = []
    skips: list[tuple[gs.Node, str]] = []
    produced: set[str] = set()
    absorbed: set[int] = set()  # ids of bias Adds that are part of their MatMul's layer
    for node in graph.nodes:
        if node.op not in QUANTIZABLE or node.op in SHAPE or id(node) in absorbed:
            continue
        kind, reason = _classify(graph, node, transformer, config.profile)
        if not reason and kind != "compute" and not _fed_by(node, produced):
            reason = "no quantized neighbour (nothing to gain from integer kernels here)"
        if reason:
            skips.append((node, reason))
            continue
        layer = _layer(graph, node, kind, book)
        if not any(layer.rules[r].enabled for r in ("input", "weight")):
            skips.append((node, "rule says method 'none' for input and weight"))
            continue
        layers.append(layer)
        produced.update({node.outputs[0].name, layer.out.name})
        if layer.bias_add is not None:
            absorbed.add(id(layer.bias_add))
    _share_weights(layers)
    acts: dict[str, Act] = {}
    for layer in layers:
        _request(graph, layer, acts, config, transformer)
    _propagate_shapes(graph, acts, config)
    _set_readers(graph, acts, layers, config)
    return Plan(layers, acts, skips, transformer)


def _share_weights(layers: list[Layer]) -> None:
    """A weight read by several layers is quantized once; a second rule for it loses."""
    owners: dict[str, Layer] = {}
    for layer in layers:
        rule = layer.rules["weight"]
        if not rule.enabled:
            continue
        first = owners.setdefault(layer.node.inputs[1].name, layer)
        if first is not layer and first.rules["weight"].spec(first.weight_axis) != rule.spec(
            layer.weight_axis
        ):
            layer.rules["weight"] = dataclasses.replace(rule, method="none")
            layer.rules["bias"] = TensorRule(method="none")
            layer.weight_note = f"shared with {first.node.name} under another rule"


def _fed_by(node: gs.Node, produced: set[str]) -> bool:
    """True when an input comes from a quantized layer, possibly through shape ops."""
    for tensor in node.inputs:
        for _ in range(MAX_PROPAGATION):
            if tensor.name in produced:
                return True
            src = graph_utils.producer(tensor)
            if src is None or not (src.op in SHAPE or graph_utils.is_clamp(src)) or not src.inputs:
                break
            tensor = src.inputs[0]
    return False


def _classify(
    graph: gs.Graph, node: gs.Node, transformer: bool, profile: str
) -> tuple[str, str | None]:
    inputs = [t for t in node.inputs if t.name]
    other = _non_float32(node)
    if other is not None:
        return "", f"a {other} tensor (only float32 tensors are quantized)"
    consts = [graph_utils.const_value(t) is not None for t in inputs]
    if node.op in COMPUTE:
        if consts[0]:
            return "", "first input is a constant"
        if node.op != "MatMul" and not consts[1]:
            return "", "weight is not a constant"
        if node.op == "Gemm" and graph_utils.attr_int(node, "transA", 0):
            return "", "Gemm with transA"
        if node.op == "ConvTranspose" and profile == "ort":
            return "", NO_CONVT_KERNEL
        return "compute", None
    if transformer:
        return "", "transformer graph: residual stream and elementwise ops stay float"
    if any(consts):
        return "", "an input is a constant (only activation operands are quantized)"
    if node.op in BINARY:
        return "binary", None
    return ("concat" if node.op == "Concat" else "pool"), None


def _non_float32(node: gs.Node) -> str | None:
    """The dtype of the first data input or output when known and not float32."""
    for tensor in (node.inputs[:1] if node.inputs else []) + node.outputs[:1]:
        dtype = tensor.values.dtype if isinstance(tensor, gs.Constant) else tensor.dtype
        if dtype is None:
            continue
        try:
            np_dtype = np.dtype(dtype)
        except TypeError:
            return str(dtype)
        if np_dtype != np.float32:
            return str(np_dtype)
    return None


def _layer(graph: gs.Graph, node: gs.Node, kind: str, book: RuleBook) -> Layer:
    rules = {
        role: book.rule(node.name, node.op, role) for role in ("input", "weight", "bias", "output")
    }
    weighted = kind == "compute" and graph_utils.const_value(node.inputs[1]) is not None
    if weighted:
        acts = [0]
    else:
        acts = [i for i, t in enumerate(node.inputs) if t.name]
        rules["weight"] = dataclasses.replace(rules["weight"], method="none")
    axis = _weight_axis(node)
    weight = graph_utils.const_value(node.inputs[1]) if weighted else None
    if weight is not None:
        rules["weight"] = _weight_rule(node, weight, rules, book.config)
    if weight is not None and node.op in ("MatMul", "Gemm") and weight.ndim != 2:
        rules["weight"] = dataclasses.replace(rules["weight"], per_channel=False)
    bias = graph_utils.const_input(node, 2) if weight is not None else None
    if (
        bias is None
        or weight is None
        or node.op == "ConvTranspose"
        or bias.size != weight.shape[axis]
    ):
        rules["bias"] = TensorRule(method="none")  # ConvTranspose: no fused kernel
    add = bias_add(graph, node)
    return Layer(node, kind, acts, rules, _fused_out(graph, add or node), axis, bias_add=add)


def kernel_order(node: gs.Node, weight: np.ndarray) -> tuple[int, ...]:
    """The weight's axes as onnxruntime's u8s8 GEMM walks them, () where it does not.

    MLAS's u8s8 GEMM (QLinearConv, QLinearMatMul, MatMulInteger, QGemm) on x86 without
    VNNI uses VPMADDUBSW, which adds the products of reduction elements 2j and 2j+1 in
    int16 and saturates at 32767. It reads a Conv weight as [out, kh, kw, in] (measured:
    input channels 0 and 1 of one tap form a pair), a MatMul/Gemm weight along K.
    Depthwise convolutions run another kernel that accumulates in int32.
    """
    if node.op == "Conv":
        group = graph_utils.attr_int(node, "group", 1)
        if weight.ndim < 3 or (group > 1 and weight.shape[1] == 1):
            return ()
        return (0, *range(2, weight.ndim), 1)
    if node.op == "MatMul" and weight.ndim == 2:
        return (1, 0)
    if node.op == "Gemm" and weight.ndim == 2:
        return (0, 1) if graph_utils.attr_int(node, "transB", 0) else (1, 0)
    return ()


def _weight_rule(
    node: gs.Node, weight: np.ndarray, rules: dict[str, TensorRule], config: QdqConfig
) -> TensorRule:
    """The weight rule: balanced rounding; a 7-bit range (`on`) or bounded pairs (`auto`)."""
    rule, act = rules["weight"], rules["input"]
    if rule.enabled and config.rounding == "balanced":
        rule = dataclasses.replace(rule, balanced=True)
    if not rule.enabled or rule.bits != 8 or not (rule.signed and rule.symmetric):
        return rule
    if config.reduce_range == "on":
        return dataclasses.replace(rule, reduce_range=True)
    unsigned = act.bits == 8 and (not act.signed or act.dynamic is True)  # dynamic: uint8
    if config.reduce_range == "off" or config.profile != "ort" or not unsigned:
        return rule
    return dataclasses.replace(rule, pairs=kernel_order(node, weight))


def bias_add(graph: gs.Graph, node: gs.Node) -> gs.Node | None:
    """The Add of a constant bias that alone reads a MatMul's 2-D output, else None.

    onnxruntime fuses the two into a Gemm (MatMulAddFusion), so the pair is one layer.
    An input of unknown rank does not count: taking it as 2-D put a Q on the residual
    stream of PP-OCRv6's SVTR blocks (3-D MatMuls, char agreement 0.998 -> 0.191). So
    PP-OCR's classifier head, a Reshape to a computed shape that onnxruntime resolves
    and fuses, keeps its weight dequantized on every run (a 2-class head: no
    measurable cost).
    """
    weight = graph_utils.const_value(node.inputs[1]) if node.op == "MatMul" else None
    shape = node.inputs[0].shape
    if weight is None or weight.ndim != 2 or shape is None or len(shape) != 2:
        return None
    nxt = graph_utils.only_consumer(node.outputs[0], graph)
    if nxt is None or nxt.op != "Add":
        return None
    others = [t for t in nxt.inputs if t is not node.outputs[0]]
    bias = graph_utils.const_value(others[0]) if len(others) == 1 else None
    if bias is None or bias.size != weight.shape[1] or bias.shape[-1] != weight.shape[1]:
        return None
    return nxt


def _fused_out(graph: gs.Graph, node: gs.Node) -> gs.Tensor:
    """The output after a Relu/Clip(min 0) that reads only this node's output.

    For a MatMul with its bias Add, `node` is the Add.
    """
    out = node.outputs[0]
    nxt = graph_utils.only_consumer(out, graph)
    if nxt is None or nxt.op not in FUSED:
        return out
    if nxt.op == "Clip":
        lo: np.ndarray | float | None = (
            graph_utils.const_input(nxt, 1) if len(nxt.inputs) > 1 else None
        )
        lo = graph_utils.attr_float(nxt, "min") if lo is None else lo
        if lo is None or float(np.asarray(lo)) != 0.0:
            return out
    return nxt.outputs[0]


def _weight_axis(node: gs.Node) -> int:
    """The output-channel axis of the weight."""
    if node.op == "ConvTranspose":
        return 1
    if node.op == "Gemm":
        return 0 if graph_utils.attr_int(node, "transB", 0) else 1
    if node.op == "MatMul":
        shape = graph_utils.const_value(node.inputs[1])
        return (shape.ndim - 1) if shape is not None else 1
    return 0


def _add(
    acts: dict[str, Act],
    tensor: gs.Tensor,
    rule: TensorRule,
    owner: str,
    dynamic: bool = False,
    reader: gs.Node | None = None,
) -> None:
    act = acts.get(tensor.name)
    if act is None:
        act = acts[tensor.name] = Act(tensor, rule, owner, dynamic)
    elif (act.dynamic and not dynamic) or (
        act.owner.endswith(" output") and owner.endswith(" input") and not dynamic
    ):
        # a static request wins over a dynamic one; a reader's input rule over the
        # producer's output rule (the input decides the reader's kernel)
        act.rule, act.owner, act.dynamic = rule, owner, False
    if reader is not None and reader not in act.readers:
        act.readers.append(reader)


def _request(
    graph: gs.Graph, layer: Layer, acts: dict[str, Act], config: QdqConfig, transformer: bool
) -> None:
    node, rules = layer.node, layer.rules
    in_rule = rules["input"]
    auto = transformer and config.profile == "ort"  # TensorRT has no dynamic quantization
    dynamic = (
        in_rule.dynamic
        if in_rule.dynamic is not None
        else node.op == "MatMul" and (config.dynamic == "on" or (config.dynamic == "auto" and auto))
    )
    if in_rule.enabled:
        for i in layer.acts:
            _add(acts, node.inputs[i], in_rule, f"{node.name} input", dynamic, node)
            if transformer and not dynamic and node.op in ("MatMul", "Gemm"):
                acts[node.inputs[i].name].guard = True
    out_rule = rules["output"]
    if config.profile == "trt" or not out_rule.enabled or dynamic or not in_rule.enabled:
        return
    gemm = layer.bias_add is not None and not transformer
    if node.op in ("MatMul", "Gemm", "ConvTranspose") and not gemm:
        return  # float output kernels exist; a quantized reader requests its own input
    _add(acts, layer.out, out_rule, f"{node.name} output")


def _propagate_shapes(graph: gs.Graph, acts: dict[str, Act], config: QdqConfig) -> None:
    """A quantized output of a shape op or clamp makes its data input quantized, same scale."""
    pending = list(acts.values())
    for _ in range(MAX_PROPAGATION):
        if not pending:
            return
        act = pending.pop()
        node = graph_utils.producer(act.tensor)
        if node is None or act.dynamic or not node.inputs:
            continue
        if node.op not in SHAPE and not (config.profile == "ort" and graph_utils.is_clamp(node)):
            continue
        src = node.inputs[0]
        if graph_utils.const_value(src) is not None or src.name in acts:
            if src.name in acts:
                _join(acts, src.name, act.tensor.name, hard=True)
                _add(acts, src, acts[src.name].rule, acts[src.name].owner, reader=node)
            continue
        _add(acts, src, act.rule, f"{act.owner} (through {node.name})", reader=node)
        _join(acts, src.name, act.tensor.name, hard=True)
        pending.append(acts[src.name])


def _join(acts: dict[str, Act], a: str, b: str, hard: bool) -> None:
    """Put tensors a and b (and their groups) into one scale group."""
    ga, gb = acts[a].group, acts[b].group
    ha, hb = acts[a].hard_group, acts[b].hard_group
    for act in acts.values():
        if act.group in (ga, gb):
            act.group = ga
        if hard and act.hard_group in (ha, hb):
            act.hard_group = ha


def _set_readers(
    graph: gs.Graph, acts: dict[str, Act], layers: list[Layer], config: QdqConfig
) -> None:
    """ort: every reader of a static tensor reads its DQ; Concat inputs share a group."""
    float_readers = {
        (layer.node.name, layer.node.inputs[i].name)
        for layer in layers
        for i in layer.acts
        if not layer.rules["input"].enabled
    }
    for act in acts.values():
        if act.dynamic or config.profile != "ort":
            continue
        for reader in act.tensor.outputs:
            if (reader.name, act.tensor.name) not in float_readers and reader not in act.readers:
                act.readers.append(reader)
    for layer in layers:
        if layer.kind != "concat":
            continue
        names = [t.name for t in layer.node.inputs if t.name in acts]
        names += [layer.out.name] if layer.out.name in acts else []
        for other in names[1:]:
            _join(acts, names[0], other, hard=False)
