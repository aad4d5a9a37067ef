"""Every registered pass on every model in models/ does only what it declares.

Op types it removes or edits are in `matches`, op types it adds are in `creates`.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from graphcomp import pipeline
from graphcomp.passes import REGISTRY

MODELS = sorted((Path(__file__).resolve().parents[1] / "models").glob("*.onnx"))
# Constant nodes hold weights: a pass that replaces a weight may drop or rewrite them.
DATA_OPS = {"Constant"}


def _weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _edited_ops(before: onnx.ModelProto, after: onnx.ModelProto) -> set[str]:
    """Op types of same-named nodes whose inputs, constant inputs or attributes changed."""
    w0, w1 = _weights(before), _weights(after)
    old = {n.name: n for n in before.graph.node}
    edited = set()
    for node in after.graph.node:
        prev = old.get(node.name)
        if prev is None or prev.op_type != node.op_type:
            continue
        if list(prev.attribute) != list(node.attribute) or any(
            a in w0
            and (b not in w1 or w0[a].shape != w1[b].shape or not np.array_equal(w0[a], w1[b]))
            for a, b in zip(prev.input, node.input, strict=False)
        ):
            edited.add(node.op_type)
    return edited


@pytest.mark.skipif(not MODELS, reason="models/ has no zoo yet")
@pytest.mark.parametrize("model_path", MODELS, ids=lambda p: p.stem)
@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_pass_respects_its_declared_contract(name, model_path):
    model = onnx.load(model_path)
    cls = REGISTRY[name]
    result = pipeline.run(model, [cls()])
    out = result.model
    before = Counter(n.op_type for n in model.graph.node if n.op_type not in DATA_OPS)
    after = Counter(n.op_type for n in out.graph.node if n.op_type not in DATA_OPS)
    removed = {op for op in before if after[op] < before[op]}
    added = {op for op in after if after[op] > before[op]}
    assert removed <= cls.matches, f"{name} removed {removed - cls.matches} undeclared"
    assert added <= cls.creates, f"{name} added {added - cls.creates} undeclared"
    edited = _edited_ops(model, out) - DATA_OPS
    undeclared = edited - (cls.matches | cls.creates)
    assert not undeclared, f"{name} edited {undeclared} undeclared"
    onnx.checker.check_model(out)
