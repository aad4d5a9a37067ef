"""svd rank allocation: budget spent where the whole model loses least; helpers."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest

from graphcomp.core.pass_base import PassContext
from graphcomp.passes.svd.factor import DAMPING, factorize, whitener
from graphcomp.passes.svd.rank import Choice, allocate, round_rank
from graphcomp.passes.svd.svd import SvdConfig, SvdPass
from tests import graphs

# Pre-LN encoder-like stack: two residual MLP branches; the first branch's output is
# damped by a LayerScale-like constant, so its truncation barely reaches the output.
ENCODER = """
g (float[N, 16, 64] x, float[64] w_g1, float[64] b_n1, float[64, 192] w_a1, float[192] b_a1,
   float[192, 64] w_a2, float[64] b_a2, float[64] w_g2, float[64] b_n2, float[64, 192] w_b1,
   float[192] b_b1, float[192, 64] w_b2, float[64] b_b2, float[1] damp)
  => (float[N, 16, 64] y) {
    n1 = LayerNormalization <axis = -1> (x, w_g1, b_n1)
    h1 = MatMul (n1, w_a1)
    h1b = Add (h1, b_a1)
    g1 = Relu (h1b)
    o1 = MatMul (g1, w_a2)
    o1b = Add (o1, b_a2)
    o1s = Mul (o1b, damp)
    r1 = Add (x, o1s)
    n2 = LayerNormalization <axis = -1> (r1, w_g2, b_n2)
    h2 = MatMul (n2, w_b1)
    h2b = Add (h2, b_b1)
    g2 = Relu (h2b)
    o2 = MatMul (g2, w_b2)
    o2b = Add (o2, b_b2)
    y = Add (r1, o2b)
}
"""


def _encoder(seed: int) -> onnx.ModelProto:
    return graphs.build(ENCODER, seed=seed, damp=np.array([0.02], np.float32))


def _rel_mse(model: onnx.ModelProto, out: onnx.ModelProto) -> float:
    feeds = graphs.feeds_for(model, seed=9, batch=8)
    ref, got = graphs.run(model, feeds)[0], graphs.run(out, feeds)[0]
    return float(np.sum((ref - got) ** 2) / np.sum(ref**2))


@pytest.mark.parametrize("seed", [0, 1])
def test_sensitivity_allocation_spends_budget_on_the_damped_branch(seed: int) -> None:
    model = _encoder(seed)
    plain = SvdConfig(min_params=0, macs=0.7, whiten="never")  # the allocation alone
    sense, run = graphs.apply(model, SvdPass(plain))
    flat, _ = graphs.apply(model, SvdPass(dataclasses.replace(plain, allocate="energy")))
    changed = {c.node for c in run.records[0].result.changes}
    assert changed == {"MatMul_1", "MatMul_4"}  # the damped branch only
    assert run.records[0].macs[1] <= 0.7 * run.records[0].macs[0]
    assert _rel_mse(model, sense) < 0.1 * _rel_mse(model, flat)


def test_synthetic_probe_feeds_index_embedding_tables() -> None:
    text = """
    g (int64[N, 12] ids, int64[N, 12] mask, float[50, 16] w_emb, float[16, 24] w_p)
      => (float[N, 12, 24] y) {
        e = Gather (w_emb, ids)
        y = MatMul (e, w_p)
    }
    """
    from graphcomp.passes.svd import probe as svd_probe

    model = graphs.build(text)
    src = svd_probe.source(PassContext(), 40, seed=0)
    feeds = list(src.batches(model, 16))
    ids = np.concatenate([f["ids"] for f in feeds])
    assert src.label == "synthetic" and ids.shape[0] == 40
    assert ids.min() >= 0 and ids.max() < 50 and len(np.unique(ids)) > 30
    assert all(np.all(f["mask"] == 1) for f in feeds)


def test_allocate_picks_least_loss_within_budget() -> None:
    menus = [
        [Choice(None, 0, 100, 100, 0.0), Choice("linear", 8, 40, 40, 0.5)],
        [
            Choice(None, 0, 100, 100, 0.0),
            Choice("linear", 8, 40, 40, 0.1),
            Choice("linear", 4, 20, 20, 0.3),
        ],
    ]
    picked, met = allocate(menus, 150, lambda c: c.macs)
    assert met and [c.loss for c in picked] == [0.0, 0.1]
    picked, met = allocate(menus, 60, lambda c: c.macs)
    assert met and [c.macs for c in picked] == [40, 20]
    _, met = allocate(menus, 10, lambda c: c.macs)
    assert not met


def test_round_rank_rounds_up_within_full_rank() -> None:
    assert [round_rank(r, 8, 20) for r in (1, 8, 9, 17, 30)] == [8, 8, 16, 20, 20]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_whitened_factors_exact_at_full_rank_and_tail_is_output_error(seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((500, 24)) * np.exp(rng.normal(0, 1, 24))
    m = rng.standard_normal((24, 40))
    cov = x.T @ x / len(x)
    fact = factorize(m, whitener(cov))
    p, q = fact.factors(24)
    assert np.allclose(p @ q, m, atol=1e-8)
    p, q = fact.factors(10)
    delta = m - p @ q
    err = np.mean(np.sum((x @ delta) ** 2, axis=1))
    # The whitened tail is the output error under the damped covariance C + d I:
    # tail = E||x^T dW||^2 + d ||dW||_F^2, with d = DAMPING * mean(diag C).
    ridge = DAMPING * np.mean(np.diag(cov)) * np.sum(delta**2)
    assert err + ridge == pytest.approx(fact.tail(10), rel=1e-6)


@pytest.mark.parametrize("shrink", [0.0, 0.3, 1.0])
def test_shrunk_whitener_squares_to_the_shrunk_covariance(shrink: float) -> None:
    # (1 - a) C + a diag(C): a = 1 keeps only each channel's scale; exact at full rank.
    rng = np.random.default_rng(3)
    x = rng.standard_normal((200, 12)) @ rng.standard_normal((12, 12))
    cov = x.T @ x / len(x)
    white = whitener(cov, shrink=shrink)
    shrunk = (1 - shrink) * cov + shrink * np.diag(np.diag(cov))
    damped = shrunk + DAMPING * np.mean(np.diag(cov)) * np.eye(12)
    assert np.allclose(white.root @ white.root, damped, atol=1e-9)
    m = rng.standard_normal((12, 30))
    p, q = factorize(m, white).factors(12)
    assert np.allclose(p @ q, m, atol=1e-8)


def test_data_free_budget_whitens_by_synthetic_statistics() -> None:
    # The default whitens without data too (synthetic inputs); whiten="auto" only with data.
    model = _encoder(0)
    _, run = graphs.apply(model, SvdPass(SvdConfig(min_params=0, macs=0.7)))
    result = run.records[0].result
    assert result.notes["statistics"].startswith("synthetic")
    assert all("whitened fit" in c.detail for c in result.changes)
    _, run = graphs.apply(model, SvdPass(SvdConfig(min_params=0, macs=0.7, whiten="auto")))
    assert "statistics" not in run.records[0].result.notes
    assert not any("whitened" in c.detail for c in run.records[0].result.changes)


def test_params_budget_and_overrides_from_a_spec_string() -> None:
    from graphcomp import api

    model = _encoder(0)
    (svd,) = api.resolve_passes(
        'svd(params=0.8, min_params=0, overrides=["MatMul_1:skip", "MatMul_9:rank=8"])', None
    )
    out, run = graphs.apply(model, svd)
    record = run.records[0]
    changes = {c.node: c.detail for c in record.result.changes}
    assert "MatMul_1" not in changes
    assert "rank 8/64" in changes["MatMul_9"]
    assert any(s.node == "MatMul_1" and "override" in s.reason for s in record.result.skipped)
    assert record.params[1] <= 0.8 * record.params[0]
    assert record.result.notes["budget_met"] is True


def test_energy_override_per_layer() -> None:
    model = _encoder(1)
    _, run = graphs.apply(
        model,
        SvdPass(
            SvdConfig(
                min_params=0, energy=0.999, min_saving=0.0, overrides=("MatMul_4:energy=0.5",)
            )
        ),
    )
    changes = {c.node: c.detail for c in run.records[0].result.changes}
    assert list(changes) == ["MatMul_4"]
    kept = float(changes["MatMul_4"].split("energy kept ")[1].split()[0].rstrip("),"))
    assert kept >= 0.5


def test_probe_failure_falls_back_to_relative_energy() -> None:
    # An integer shape input that synthetic feeds cannot fill sensibly: onnxruntime fails,
    # the pass keeps going on shape inference and the per-layer energy proxy.
    text = """
    g (float[N, 96] x, int64[2] shape, float[96, 256] w_a, float[256, 96] w_b)
      => (float[?, ?] y) {
        h = MatMul (x, w_a)
        r = Relu (h)
        o = MatMul (r, w_b)
        y = Reshape (o, shape)
    }
    """
    model = graphs.build(text)
    _, run = graphs.apply(model, SvdPass(SvdConfig(min_params=0, macs=0.7)))
    notes = run.records[0].result.notes
    assert "probe failed" in notes["allocation"] and "probe run failed" in notes["shapes"]
    assert notes["statistics"].startswith("none, plain SVD")  # no synthetic whitening either
    assert "fell back" in notes["probe_warning"]  # a warning in the summary, not a silent note
    assert run.records[0].result.changes


def test_sensitivity_probe_keeps_quiet_when_it_measured() -> None:
    model = graphs.build(
        """
        g (float[N, 96] x, float[96, 256] w_a, float[256, 96] w_b) => (float[N, 96] y) {
            h = MatMul (x, w_a)
            r = Relu (h)
            y = MatMul (r, w_b)
        }
        """
    )
    _, run = graphs.apply(model, SvdPass(SvdConfig(min_params=0, macs=0.7)))
    notes = run.records[0].result.notes
    assert notes["allocation"].startswith("measured sensitivity")
    assert "probe_warning" not in notes


BATCH_ONE_INSIDE = """
g (float[N, 16, 64] x, float[64, 64] w_a, float[64, 64] w_b) => (float[1, 16, 64] y) {
    shape = Constant <value = int64[3] {1, 16, 64}> ()
    r = Reshape (x, shape)
    h = MatMul (r, w_a)
    a = Relu (h)
    y = MatMul (a, w_b)
}
"""


def test_model_that_runs_only_at_the_user_batch_is_still_measured() -> None:
    # A free batch dim in the proto but batch 1 inside: joined synthetic batches fail, and
    # the statistics and the probe run one user batch at a time instead.
    model = graphs.build(BATCH_ONE_INSIDE)
    ctx = PassContext(input_shapes={"x": [1, 16, 64]})
    _, run = graphs.apply(model, SvdPass(SvdConfig(min_params=0, macs=0.7)), ctx=ctx)
    notes = run.records[0].result.notes
    assert notes["statistics"].startswith("synthetic")
    assert notes["allocation"].startswith("measured sensitivity")
    assert all("whitened fit" in c.detail for c in run.records[0].result.changes)
