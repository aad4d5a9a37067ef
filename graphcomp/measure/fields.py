"""The measurement fields every pass config shares, validated in one place.

`stats` (where per-channel statistics come from, graphcomp.measure.stats), `samples`
(synthetic inputs measured), `prior` (their distribution, graphcomp.measure.inputs;
"white" is stored as "normal") and `seed`. A config's `__post_init__` calls
`check(self)`; the CLI spellings (`dfq(samples=32,prior=normal)`) are the field names.
"""

from __future__ import annotations

from typing import Any

from graphcomp.core.errors import ConfigError
from graphcomp.measure import inputs

METHODS = ("auto", "data-free", "bn", "analytic", "synthetic", "calibration")
SYNTHETIC_SAMPLES = 64
SAMPLE_FIELDS = ("samples", "probe_samples")


def check(config: Any) -> None:
    """Validate the measurement fields `config` has; store the canonical prior name.

    Raises ConfigError naming the field. Works on frozen dataclasses.
    """
    if hasattr(config, "stats") and config.stats not in METHODS:
        raise ConfigError(f"stats must be one of {METHODS}, got '{config.stats}'")
    for key in SAMPLE_FIELDS:
        value = getattr(config, key, 1)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{key} must be an integer >= 1, got {value!r}")
    if hasattr(config, "seed") and (not isinstance(config.seed, int) or config.seed < 0):
        raise ConfigError(f"seed must be an integer >= 0, got {config.seed!r}")
    if hasattr(config, "prior"):
        try:
            prior = inputs.canonical_prior(config.prior)
        except ConfigError:
            raise ConfigError(
                f"prior must be one of {inputs.PRIORS}, got '{config.prior}'"
            ) from None
        object.__setattr__(config, "prior", prior)


SHARED = ("stats", "samples", "prior", "seed")


def forward(config: Any) -> dict[str, Any]:
    """The shared measurement fields `config` has, to hand to a step's config as keywords."""
    return {key: getattr(config, key) for key in SHARED if hasattr(config, key)}
