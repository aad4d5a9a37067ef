"""The measurement layer: one input source, one collection loop, shared field checks."""

import dataclasses

import numpy as np
import pytest

from graphcomp.core.errors import ConfigError
from graphcomp.measure import fields, inputs, observe
from graphcomp.passes.prune.prune import PruneConfig
from graphcomp.passes.qdq.config import QdqConfig
from graphcomp.passes.svd.config import SvdConfig
from tests import graphs

IMAGE_NET = """
g (float[N, 3, 16, 16] x, float[4, 3, 3, 3] w_a) => (float[N, 4, 14, 14] y) {
    y = Conv (x, w_a)
}
"""


def test_smooth_field_is_standardized_low_pass_and_channel_correlated():
    smooth = inputs.smooth_field(np.random.default_rng(0), (4, 3, 32, 32))
    assert abs(smooth.mean()) < 1e-6 and 0.9 < smooth.std() < 1.1
    assert np.mean(smooth[..., 1:] * smooth[..., :-1]) > 0.8  # neighbours correlate
    assert np.mean(smooth[:, 0] * smooth[:, 1]) > 0.8  # so do the channels


@pytest.mark.parametrize("prior", inputs.PRIORS)
def test_synthetic_samples_do_not_depend_on_the_batch_size(prior):
    model = graphs.build(IMAGE_NET)
    src = inputs.Source(prior=prior, samples=40, seed=3)
    whole = np.concatenate([b["x"] for b in src.batches(model, 40)])
    parts = [b["x"] for b in src.batches(model, 7)]
    assert [len(p) for p in parts] == [7] * 5 + [5]
    np.testing.assert_array_equal(np.concatenate(parts), whole)
    assert src.count(model) == 40 and src.label == "synthetic"


@pytest.mark.parametrize(
    ("side", "asked", "runs"),
    [(16, 64, 64), (112, 64, 64), (224, 64, 16), (317, 64, 8), (736, 64, 8), (224, 4, 1)],
)
def test_synthetic_counts_scale_with_pixels_down_to_an_eighth(side, asked, runs):
    one = {"x": np.zeros((1, 3, side, side), np.float32)}
    assert inputs.plan_synthetic(one, asked)[0] == runs


def test_normal_prior_is_what_verification_feeds():
    model = graphs.build(IMAGE_NET)
    batch = next(inputs.Source(prior="normal", samples=8, seed=5).batches(model, 8))
    args = inputs.input_args(model)
    np.testing.assert_array_equal(batch["x"], inputs.make_inputs(args, None, 5, 8)["x"])


def test_calibration_source_takes_the_first_limit_samples():
    model = graphs.build(IMAGE_NET)
    data = {"x": np.arange(10 * 3 * 16 * 16, dtype=np.float32).reshape(10, 3, 16, 16)}
    src = inputs.Source(data, limit=7)
    got = np.concatenate([b["x"] for b in src.batches(model, 4)])
    np.testing.assert_array_equal(got, data["x"][:7])
    assert src.label == "calibration" and src.count(model) == 7
    with pytest.raises(ConfigError, match="no array"):
        list(inputs.Source({"other": data["x"]}).batches(model))


def test_integer_ids_follow_the_embedding_table():
    text = """
    g (int64[N, 5] ids, int64[N, 5] mask, float[11, 4] w_table)
       => (float[N, 5, 4] y, int64[N, 5] m) {
        y = Gather (w_table, ids)
        m = Identity (mask)
    }
    """
    model = graphs.build(text)
    batch = next(inputs.Source(samples=64).batches(model))
    assert batch["ids"].min() >= 0 and batch["ids"].max() == 10
    assert np.all(batch["mask"] == 1)


def test_collect_reduces_per_batch_like_the_whole():
    model = graphs.build(IMAGE_NET, seed=1)
    src = inputs.Source(prior="smooth", samples=24, seed=2)
    moments, cov, values = (
        observe.Moments(1),
        observe.Covariance(1),
        observe.Values(np.random.default_rng(0)),
    )
    observe.collect(model, {"y": [moments, cov, values]}, src, batch=5)
    whole = np.concatenate(
        [observe.intermediates(model, ["y"], b)["y"] for b in src.batches(model, 24)]
    )
    result = moments.result()
    assert result is not None
    # row sums are float32 (relative error ~1e-7 of the values' scale), totals float64
    np.testing.assert_allclose(result[0], whole.astype(np.float64).mean(axis=(0, 2, 3)), atol=1e-6)
    np.testing.assert_allclose(result[1], whole.astype(np.float64).std(axis=(0, 2, 3)), rtol=1e-6)
    second = cov.result()
    assert second is not None
    flat = np.moveaxis(whole.astype(np.float64), 1, -1).reshape(-1, 4)
    np.testing.assert_allclose(second[0], flat.T @ flat / len(flat), rtol=1e-6)
    assert values.lo == pytest.approx(float(whole.min())) and values.hi == float(whole.max())


@pytest.mark.parametrize("config_class", [PruneConfig, SvdConfig, QdqConfig])
def test_every_config_shares_the_measurement_checks(config_class):
    assert config_class(prior="white").prior == "normal"  # the documented alias
    with pytest.raises(ConfigError, match="prior must be one of"):
        config_class(prior="pink")
    with pytest.raises(ConfigError, match="samples must be"):
        config_class(samples=0)
    assert dataclasses.replace(config_class(), seed=3).seed == 3


def test_unknown_stats_method_is_rejected():
    @dataclasses.dataclass(frozen=True)
    class Cfg:
        stats: str = "auto"

        def __post_init__(self) -> None:
            fields.check(self)

    with pytest.raises(ConfigError, match="stats must be one of"):
        Cfg(stats="guess")


def test_synthetic_inputs_are_made_once_and_kept_read_only():
    model = graphs.build(IMAGE_NET)
    first = next(inputs.Source(prior="smooth", samples=16, seed=4).batches(model, 16))["x"]
    again = next(inputs.Source(prior="smooth", samples=16, seed=4).batches(model, 16))["x"]
    assert np.shares_memory(again, first) and not first.flags.writeable
    other = next(inputs.Source(prior="smooth", samples=16, seed=5).batches(model, 16))["x"]
    assert not np.array_equal(other, first)


def test_graph_inputs_alone_are_read_from_the_feeds_without_a_session(monkeypatch):
    model = graphs.build(IMAGE_NET)

    def no_session(*_args, **_kwargs):
        raise AssertionError("a session was built")

    monkeypatch.setattr(inputs, "session", no_session)
    values = observe.Values(np.random.default_rng(0))
    src = inputs.Source(prior="normal", samples=8, seed=1)
    observe.collect(model, {"x": values}, src, batch=4)
    whole = np.concatenate([b["x"] for b in src.batches(model, 8)])
    assert values.lo == float(whole.min()) and values.hi == float(whole.max())


def test_user_batch_of_one_is_joined_on_a_free_batch_dim_when_asked():
    model = graphs.build(IMAGE_NET)
    shapes = {"x": [1, 3, 16, 16]}
    src = inputs.Source(samples=10, seed=2, shapes=shapes, join=True)
    joined = list(src.batches(model, 4))
    assert [len(b["x"]) for b in joined] == [4, 4, 2]
    ones = [b["x"] for b in inputs.Source(samples=10, seed=2, shapes=shapes).batches(model, 4)]
    assert len(ones) == 10
    np.testing.assert_array_equal(np.concatenate([b["x"] for b in joined]), np.concatenate(ones))


def test_a_batch_fixed_in_the_model_stays_whole():
    model = graphs.build(IMAGE_NET.replace("float[N, 3", "float[1, 3"))
    batches = list(inputs.Source(samples=3, seed=2).batches(model, 4))
    assert [len(b["x"]) for b in batches] == [1, 1, 1]


def test_smooth_field_of_a_channels_last_image_is_smooth_over_height_and_width():
    nhwc = inputs.smooth_field(np.random.default_rng(0), (4, 32, 32, 3))
    assert nhwc.shape == (4, 32, 32, 3)
    assert np.mean(nhwc[:, :, 1:] * nhwc[:, :, :-1]) > 0.8  # along W
    assert np.mean(nhwc[:, 1:] * nhwc[:, :-1]) > 0.8  # along H
    assert np.mean(nhwc[..., 0] * nhwc[..., 1]) > 0.8  # the colours correlate as channels
    same = inputs.smooth_field(np.random.default_rng(0), (4, 3, 32, 32))
    np.testing.assert_allclose(nhwc, same.transpose(0, 2, 3, 1))
