"""The svd pass's configuration: what to split and how to choose each rank."""

from __future__ import annotations

import dataclasses
import fnmatch

from graphcomp.core.errors import ConfigError
from graphcomp.measure import fields, inputs

TARGETS = ("energy", "rank_ratio", "macs", "params")
DEFAULT_ENERGY = 0.99
SHRINK = 0.3  # chosen on MiniLM's tuning split (docs/svd.md): 0.1-0.6 all within 0.005
# synthetic samples for the whitening statistics; MiniLM tuning split (docs/svd.md):
# 64 -> 256 lifts svd(macs=0.8) 0.915 -> 0.923 at 1.5x the compile time (batched runs)
SAMPLES = 256


@dataclasses.dataclass(frozen=True)
class SvdConfig:
    """Options of the svd pass; give at most one of energy/rank_ratio/macs/params."""

    energy: float | None = None  # per layer: share of squared singular values kept
    rank_ratio: float | None = None  # per layer: rank = ratio x full rank
    macs: float | None = None  # whole model: MACs become this fraction of the original
    params: float | None = None  # whole model: parameters become this fraction
    mode: str = "auto"  # convs: channel | spatial | auto (the one with fewer MACs)
    round_to: int = 16  # ranks are multiples of this (MLAS NCHWc conv blocks are 16 wide)
    min_saving: float = 0.2  # split only when it saves this share of the layer's MACs
    min_params: int = 1024  # leave smaller weights alone
    allocate: str = "sensitivity"  # budget loss proxy: sensitivity | energy
    whiten: str = "always"  # always (data, else synthetic inputs) | auto (data only) | never
    correct_mean: bool = True  # with statistics: add the mean output shift to the bias
    shrink: float = SHRINK  # whitening: share of the covariance moved to its diagonal
    energy_of: str = "weights"  # with statistics, energy counts: weights | outputs (whitened)
    samples: int = SAMPLES  # inputs used for statistics (calibration or synthetic)
    prior: str = inputs.DEFAULT_PRIOR  # synthetic inputs: smooth (1/f^2) | normal
    probe_samples: int = 16  # inputs per sensitivity run
    overrides: tuple[str, ...] = ()  # "glob:skip", "glob:rank=32", "glob:energy=0.9", ...
    seed: int = 0

    def __post_init__(self) -> None:
        given = [k for k in TARGETS if getattr(self, k) is not None]
        if len(given) > 1:
            raise ConfigError(f"svd takes one of {', '.join(TARGETS)}; got {', '.join(given)}")
        for key in TARGETS:
            value = getattr(self, key)
            if value is not None and not 0.0 < value <= 1.0:
                raise ConfigError(f"svd {key} must be in (0, 1], got {value}")
        _check_choice("mode", self.mode, ("auto", "channel", "spatial"))
        _check_choice("allocate", self.allocate, ("sensitivity", "energy"))
        _check_choice("whiten", self.whiten, ("auto", "always", "never"))
        _check_choice("energy_of", self.energy_of, ("weights", "outputs"))
        if not 0.0 <= self.shrink <= 1.0:
            raise ConfigError(f"svd shrink must be in [0, 1], got {self.shrink}")
        if self.round_to < 1:
            raise ConfigError("svd round_to must be >= 1")
        fields.check(self)
        if not 0.0 <= self.min_saving < 1.0:
            raise ConfigError(f"svd min_saving must be in [0, 1), got {self.min_saving}")
        for item in self.overrides:
            parse_override(item)

    @property
    def target(self) -> tuple[str, float]:
        """(kind, value) of the rank rule in force."""
        for key in TARGETS:
            if getattr(self, key) is not None:
                return key, float(getattr(self, key))
        return "energy", DEFAULT_ENERGY


def _check_choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"svd {key} must be one of {', '.join(allowed)}, got {value!r}")


def parse_override(item: str) -> tuple[str, str, float]:
    """'glob:skip' | 'glob:rank=N' | 'glob:energy=x' | 'glob:rank_ratio=x' -> parts."""
    pattern, _, rule = str(item).rpartition(":")
    key, _, raw = rule.partition("=")
    if (
        not pattern
        or key not in ("skip", "rank", "energy", "rank_ratio")
        or ((key == "skip") != (raw == ""))
    ):
        raise ConfigError(
            f"bad svd override {item!r}: expected 'glob:skip', 'glob:rank=N', "
            "'glob:energy=x' or 'glob:rank_ratio=x'"
        )
    try:
        value = float(raw) if raw else 0.0
    except ValueError:
        raise ConfigError(f"bad svd override {item!r}: {raw!r} is not a number") from None
    if (key == "rank" and value < 1) or (key in ("energy", "rank_ratio") and not 0 < value <= 1):
        raise ConfigError(f"bad svd override {item!r}: value out of range")
    return pattern, key, value


def matching_override(name: str, overrides: tuple[str, ...]) -> tuple[str, float] | None:
    """The last override whose glob matches node `name`, as (rule, value)."""
    found = None
    for item in overrides:
        pattern, key, value = parse_override(item)
        if fnmatch.fnmatchcase(name, pattern):
            found = (key, value)
    return found
