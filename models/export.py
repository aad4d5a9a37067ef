"""ONNX export of trained zoo models, BN folded or kept, with self-checks.

- folded: legacy TorchScript exporter (`dynamo=False`, eval mode, constant folding),
  which fuses each Conv -> BatchNormalization pair into the Conv.
- BN kept: the dynamo exporter (`dynamo=True`), which lowers eval-mode BatchNorm2d to
  an ONNX BatchNormalization node (opset 18).
Both get input `input` [batch, 1, 32, 32] and output `logits` [batch, classes] with
a symbolic batch dim.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import onnx
import stats
import torch
from onnxscript import optimizer, rewriter
from torch import nn

log = logging.getLogger(__name__)

BN_KEPT_OPSET = 18
TOLERANCE = 1e-4  # max abs logit difference vs torch and between twins
_INPUT_SHAPE = (1, 1, 32, 32)


def export_legacy(model: nn.Module, path: Path, opset: int) -> None:
    """TorchScript exporter in eval mode; folds BatchNormalization into Conv."""
    model.eval()
    torch.onnx.export(
        model,
        (torch.zeros(_INPUT_SHAPE),),
        str(path),
        dynamo=False,
        export_params=True,
        do_constant_folding=True,
        opset_version=opset,
        training=torch.onnx.TrainingMode.EVAL,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )


def export_dynamo(model: nn.Module, path: Path) -> None:
    """torch.export based exporter; keeps eval-mode BatchNormalization nodes.

    The exporter's built-in optimizer (`optimize=True`) applies onnxscript's default
    rewrite rules, which include BatchNormalization fusion. So export unoptimised and
    run constant folding plus every default rule except the BN fusion ones.
    """
    model.eval()
    batch = torch.export.Dim("batch", min=1, max=4096)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            (torch.zeros((2, *_INPUT_SHAPE[1:])),),
            dynamo=True,
            opset_version=BN_KEPT_OPSET,
            input_names=["input"],
            output_names=["logits"],
            dynamic_shapes={"x": {0: batch}},
            optimize=False,
            verify=False,
        )
    optimizer.fold_constants(program.model)
    program.model = rewriter.rewrite(program.model, pattern_rewrite_rules=_rules_keeping_bn())
    optimizer.fold_constants(program.model)
    optimizer.remove_unused_nodes(program.model)
    program.save(str(path), external_data=False)
    _tidy(path)


def _rules_keeping_bn() -> list:
    """onnxscript's default rewrite rules minus BatchNormalization fusion (private API)."""
    from onnxscript.rewriter import _fuse_batchnorm

    bn_rules = set(_fuse_batchnorm.rules)
    return [r for r in rewriter._DEFAULT_REWRITE_RULES if r not in bn_rules]


def _tidy(path: Path) -> None:
    """Drop per-node metadata (stack traces with local paths) and name the batch dim."""
    model = onnx.load(str(path))
    for node in model.graph.node:
        del node.metadata_props[:]
    for value in [*model.graph.input, *model.graph.output]:
        dim = value.type.tensor_type.shape.dim[0]
        if dim.dim_param:
            dim.dim_param = "batch"
    onnx.save(model, str(path))


def check_file(path: Path, model: nn.Module, images: np.ndarray) -> np.ndarray:
    """Full checker, batch 1 and 7 in onnxruntime, logits vs torch; returns ORT logits."""
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer):
        raise RuntimeError(f"{path.name}: external data")
    dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    if not dim.dim_param or dim.dim_value:
        raise RuntimeError(f"{path.name}: batch dim is not symbolic")
    sess = stats.session(path)
    for n in (1, 7):
        out = sess.run(None, {"input": images[:n]})[0]
        if out.shape[0] != n:
            raise RuntimeError(f"{path.name}: batch {n} gave shape {out.shape}")
    got = stats.predict(path, images)
    with torch.no_grad():
        ref = model(torch.from_numpy(images)).numpy()
    diff = float(np.abs(got - ref).max())
    log.info("%s: max |onnx - torch| = %.2e", path.name, diff)
    if diff > TOLERANCE:
        raise RuntimeError(f"{path.name}: logits differ from torch by {diff:.2e}")
    return got


def export_pair(
    model: nn.Module, out_dir: Path, name: str, opset: int, images: np.ndarray
) -> list[Path]:
    """Export `name`.onnx (BN folded) and, for CNNs, `name`_bn.onnx (BN kept); verify."""
    folded = out_dir / f"{name}.onnx"
    export_legacy(model, folded, opset)
    folded_logits = check_file(folded, model, images)
    if stats.count_ops(onnx.load(str(folded)), "BatchNormalization"):
        raise RuntimeError(f"{folded.name}: BatchNormalization left after folding")
    if not any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        return [folded]
    kept = out_dir / f"{name}_bn.onnx"
    export_dynamo(model, kept)
    kept_logits = check_file(kept, model, images)
    n_bn = stats.count_ops(onnx.load(str(kept)), "BatchNormalization")
    n_torch = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    if n_bn != n_torch:
        raise RuntimeError(f"{kept.name}: {n_bn} BatchNormalization, torch has {n_torch}")
    twin_diff = float(np.abs(folded_logits - kept_logits).max())
    log.info("%s vs %s: max |diff| = %.2e", folded.name, kept.name, twin_diff)
    if twin_diff > TOLERANCE:
        raise RuntimeError(f"{name}: folded and BN-kept twins differ by {twin_diff:.2e}")
    return [folded, kept]
