"""svd refit: splits refitted in graph order on the inputs the split model gives them."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from graphcomp.core.pass_base import PassContext
from graphcomp.passes.svd.svd import SvdConfig, SvdPass
from tests import graphs

CHAIN = """
g (float[N, 16, 64] x, float[64, 96] w_1, float[96] b_1, float[96, 96] w_2, float[96] b_2,
   float[96, 64] w_3) => (float[N, 16, 64] y) {
    h1 = MatMul (x, w_1)
    h1b = Add (h1, b_1)
    g1 = Relu (h1b)
    h2 = MatMul (g1, w_2)
    h2b = Add (h2, b_2)
    g2 = Relu (h2b)
    y = MatMul (g2, w_3)
}
"""


def _calibration(seed: int, batch: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    scales = np.exp(rng.normal(0, 1.0, 64)).astype(np.float32)
    return {"x": (rng.standard_normal((batch, 16, 64)) * scales + 0.5).astype(np.float32)}


def _error(model: onnx.ModelProto, out: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> float:
    ref, got = graphs.run(model, feeds)[0], graphs.run(out, feeds)[0]
    return float(np.sum((ref - got) ** 2) / np.sum(ref**2))


def _compress(model: onnx.ModelProto, refit: bool, rank: int) -> tuple[onnx.ModelProto, object]:
    config = SvdConfig(min_params=0, overrides=(f"*:rank={rank}",), refit=refit, samples=64)
    ctx = PassContext(calibration=_calibration(1, 64))
    return graphs.apply(model, SvdPass(config), ctx=ctx)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_refit_lowers_the_compounded_error(seed: int) -> None:
    model = graphs.build(CHAIN, seed=seed)
    plain, _ = _compress(model, refit=False, rank=24)
    fitted, run = _compress(model, refit=True, rank=24)
    onnx.checker.check_model(fitted)
    changes = run.records[0].result.changes
    assert len(changes) == 3 and all("refitted in order" in c.detail for c in changes)
    assert run.records[0].result.notes["refit"].startswith("3 splits refitted")
    held_out = _calibration(7, 16)
    assert _error(model, fitted, held_out) < _error(model, plain, held_out)


def test_refit_is_exact_at_full_rank() -> None:
    model = graphs.build(CHAIN, seed=3)
    fitted, _ = _compress(model, refit=True, rank=96)
    assert _error(model, fitted, _calibration(7, 16)) < 1e-8
